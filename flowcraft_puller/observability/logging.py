"""Log configuration: structlog for our loggers, the same rendering for stdlib ``logging`` records.

One line per event, JSON (orjson) when the output is not a terminal, ``ConsoleRenderer`` on a
terminal. Context bound with ``structlog.contextvars`` (run id, node id, …) is merged into every
line, including lines from third-party libraries that log through ``logging``. Sensitive keys and
configured secret strings are replaced with ``[redacted]`` before anything is written.

:func:`configure_logging` and :func:`set_level` may be called again at any time (SIGHUP reload,
tests): loggers that were already cached keep working and follow the new settings.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[redacted]"

SENSITIVE_KEYS: Final = frozenset(
    {
        "access_token",
        "api_key",
        "api_token",
        "apikey",
        "authorization",
        "bearer",
        "client_secret",
        "cookie",
        "credentials",
        "passwd",
        "password",
        "private_key",
        "proxy_authorization",
        "refresh_token",
        "secret",
        "set_cookie",
        "token",
    }
)
"""Keys whose values are always redacted (compared lower-cased, ``-`` read as ``_``)."""

SENSITIVE_SUFFIXES: Final = ("_token", "_secret", "_password")
"""Keys ending like this are redacted too (``coordinator_secret``, ``cf_api_token``)."""

LogFormat = Literal["auto", "json", "console"]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_CHATTY_LOGGERS: Final = ("httpx", "httpcore", "uvicorn.error")
"""Libraries that log every request at INFO; they are held at WARNING unless the level is debug."""

_OWN_HANDLER_LOGGERS: Final = ("uvicorn", "uvicorn.error")
"""Loggers that uvicorn's default config gives handlers of their own; they go to the root."""


class InvalidLogLevel(ValueError):
    """A log level name that is not one of debug, info, warning, error, critical."""

    def __init__(self, level: str) -> None:
        super().__init__(
            f"unknown log level {level!r}: use one of debug, info, warning, error, critical"
        )


def parse_level(level: str) -> int:
    """The numeric ``logging`` level for a level name (case-insensitive)."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise InvalidLogLevel(level) from None


class Redactor:
    """Processor that hides the values of sensitive keys and every occurrence of the secrets.

    Nested dicts, lists and tuples are copied, never modified in place, so a caller's headers
    dict stays intact. :meth:`redact_text` is also applied to each rendered line, which catches
    secrets inside objects that only become strings at rendering time (reprs, tracebacks).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        distinct = {secret for secret in secrets if secret and secret.strip()}
        self.secrets: tuple[str, ...] = tuple(sorted(distinct, key=len, reverse=True))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            event_dict[key] = self._value(key, value)
        return event_dict

    def redact_text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _value(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and _is_sensitive(key):
            return REDACTED
        if isinstance(value, str):
            return self.redact_text(value) if self.secrets else value
        if isinstance(value, Mapping):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(None, item) for item in value]
        return value


def _is_sensitive(key: str) -> bool:
    normal = key.lower().replace("-", "_")
    return normal in SENSITIVE_KEYS or normal.endswith(SENSITIVE_SUFFIXES)


class _Output:
    """The stream all log lines go to; swapped on reconfiguration, shared by cached loggers."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stdout
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        """Write one line; a closed or broken stream drops it rather than failing the caller."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(line + "\n")
            self.stream.flush()


_OUTPUT: Final = _Output()


class _LineLogger:
    """The wrapped logger behind every structlog logger: writes the rendered line."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _OUTPUT.write_line(message)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


def _line_logger_factory(*args: Any) -> _LineLogger:
    return _LineLogger(str(args[0]) if args else "")


class _OutputHandler(logging.Handler):
    """Writes stdlib records, formatted by ``ProcessorFormatter``, to the shared output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _OUTPUT.write_line(self.format(record))
        except Exception:
            self.handleError(record)


class RuntimeLevelBoundLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, with a level that :func:`set_level` can change later.

    :func:`set_level` copies the methods of ``make_filtering_bound_logger(level)`` onto this
    class, so a filtered-out call stays a bare ``return None`` and loggers cached before the
    change follow it.
    """


def _install_level(level: int) -> None:
    template = structlog.make_filtering_bound_logger(level)
    for name, member in vars(template).items():
        if not name.startswith("__"):
            setattr(RuntimeLevelBoundLogger, name, member)


_install_level(logging.INFO)

_CHAIN: Final[list[Processor]] = []
"""The processor list every cached logger holds; reconfiguration replaces its contents."""


def _json_dumps(value: Any, **kwargs: Any) -> str:
    return orjson.dumps(
        value, default=kwargs.get("default"), option=orjson.OPT_NON_STR_KEYS
    ).decode()


def _renderer(use_json: bool, stream: TextIO, redactor: Redactor) -> Processor:
    render: Processor
    if use_json:
        render = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        render = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    def render_and_redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return redactor.redact_text(str(render(logger, method_name, event_dict)))

    return render_and_redact


def _use_json(fmt: LogFormat, stream: TextIO) -> bool:
    if fmt == "auto":
        return not stream.isatty()
    return fmt == "json"


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Send structlog and stdlib ``logging`` output, rendered alike, to ``stream`` (stdout).

    ``secrets`` are strings (API token, coordinator secret) that must never appear in a line.
    """
    numeric = parse_level(level)
    target = stream if stream is not None else sys.stdout
    use_json = _use_json(fmt, target)
    redactor = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions: Processor = (
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if use_json
        else structlog.processors.format_exc_info
    )
    tail: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        exceptions,
        redactor,
        _renderer(use_json, target, redactor),
    ]

    _OUTPUT.stream = target
    _CHAIN[:] = [*shared, *tail]
    structlog.configure(
        processors=_CHAIN,
        wrapper_class=RuntimeLevelBoundLogger,
        context_class=dict,
        logger_factory=_line_logger_factory,
        cache_logger_on_first_use=True,
    )

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _OutputHandler)]:
        root.removeHandler(handler)
    handler = _OutputHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root.addHandler(handler)
    for name in _OWN_HANDLER_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.disabled = True
    access.propagate = False
    _apply_level(numeric)


def set_level(level: str) -> None:
    """Change the level of structlog and stdlib loggers at runtime (e.g. on SIGHUP)."""
    _apply_level(parse_level(level))


def _apply_level(level: int) -> None:
    _install_level(level)
    logging.getLogger().setLevel(level)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            level if level <= logging.DEBUG else max(level, logging.WARNING)
        )
