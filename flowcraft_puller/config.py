"""Daemon configuration: a TOML file, environment overrides, secrets from safe places only.

Every error names the key and where its value came from (the file or the environment
variable), e.g. ``config.toml: queues[0].batch_size: must be at most 100``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flowcraft_puller.engine.evaluators import EvaluatorName

ENV_PREFIX: Final = "FLOWCRAFT__"
SECRET_ENV: Final = {
    "api_token": "FLOWCRAFT_API_TOKEN",
    "coordinator_secret": "FLOWCRAFT_COORDINATOR_SECRET",
}
SECRET_CREDENTIALS: Final = {"api_token": "api-token", "coordinator_secret": "coordinator-secret"}
MAX_VISIBILITY_S: Final = 43_200.0
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(Exception):
    """The configuration is unusable; the message says which key, where, and why."""


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30s' or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (use e.g. '250ms', '30s', '5m', '1h')")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudflareConfig(_Section):
    account_id: str = Field(default="", description="Cloudflare account id (32 hex characters)")
    api_base_url: str = "https://api.cloudflare.com/client/v4"
    api_token_file: Path | None = None
    request_timeout: Duration = 10.0


class CoordinatorConfig(_Section):
    url: str = "http://127.0.0.1:8787"
    public_url: str | None = None
    """Base URL webhooks are published under; defaults to ``url``."""
    secret_file: Path | None = None
    request_timeout: Duration = 10.0
    batch_linger: Duration = 0.002
    batch_max_entries: int = Field(default=64, ge=1, le=256)


class QueueConfig(_Section):
    name: str = Field(min_length=1)
    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the queue id (wrangler queues info)")
    pull_loops: int = Field(default=1, ge=1, le=64)
    batch_size: int = Field(default=100, ge=1, le=100)
    visibility_timeout: Duration = 60.0
    max_deliveries: int = Field(default=3, ge=1, le=101)
    """The consumer's ``max_retries`` + 1: after this many deliveries Cloudflare dead-letters."""

    @field_validator("visibility_timeout")
    @classmethod
    def _visibility_limit(cls, value: float) -> float:
        if not 1.0 <= value <= MAX_VISIBILITY_S:
            raise ValueError("must be between 1s and 12h (Cloudflare's limits)")
        return value


class DaemonConfig(_Section):
    concurrency: int = Field(default=256, ge=1, le=10_000)
    drain_timeout: Duration = 25.0
    idle_backoff_min: Duration = 0.05
    idle_backoff_max: Duration = 1.0
    ack_linger: Duration = 0.1
    inline_retry_limit: Duration = 5.0
    max_loop_iterations: int = Field(default=10_000, ge=1)
    evaluator: EvaluatorName = "property"
    worker_threads: int = Field(default=40, ge=1, le=1_000)

    @model_validator(mode="after")
    def _backoff_order(self) -> DaemonConfig:
        if self.idle_backoff_min > self.idle_backoff_max:
            raise ValueError("idle_backoff_min must not exceed idle_backoff_max")
        return self


class WorkflowsConfig(_Section):
    blueprints: list[str] = Field(default_factory=list)
    """JSON files, globs (relative to the config file) or ``module:attribute``."""
    nodes: list[str] = Field(default_factory=list)
    """``module:attribute`` of registries (dicts or registry objects) of node implementations."""
    dependencies: str | None = None
    """``module:attribute`` of a mapping handed to every node as ``ctx.dependencies``."""


class ObservabilityConfig(_Section):
    listen: str = "127.0.0.1:9464"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    readiness_window: Duration = 60.0
    loop_lag_threshold: Duration = 5.0

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
        return value


class Settings(_Section):
    cloudflare: CloudflareConfig = Field(default_factory=CloudflareConfig)
    coordinator: CoordinatorConfig = Field(default_factory=CoordinatorConfig)
    queues: list[QueueConfig] = Field(default_factory=list)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    workflows: WorkflowsConfig = Field(default_factory=WorkflowsConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)


class Secrets(BaseModel):
    """Secrets, read from the environment, a file path, or systemd credentials — never TOML."""

    model_config = ConfigDict(frozen=True)
    api_token: str | None = None
    coordinator_secret: str | None = None

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"

    def values(self) -> list[str]:
        return [s for s in (self.api_token, self.coordinator_secret) if s]


class Config(BaseModel):
    """A loaded configuration: the settings, where they came from, and the secrets."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    settings: Settings
    secrets: Secrets
    source: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()


_SECRET_KEYS: Final = {
    ("cloudflare", "api_token"): "api_token",
    ("coordinator", "secret"): "coordinator_secret",
}


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``FLOWCRAFT__SECTION__KEY=value`` → nested values (TOML-parsed when possible)."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(path) < 2:
            raise ConfigError(f"environment {name}: expected {ENV_PREFIX}SECTION__KEY")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: conflicts with another override")
        node[path[-1]] = value
        origins[".".join(path)] = f"environment {name}"
    return data, origins


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _read_secret_file(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{key}: secret file {path} is empty")
    return value


def _secret(
    name: str, file: Path | None, file_key: str, base_dir: Path, environ: Mapping[str, str]
) -> str | None:
    variable = SECRET_ENV[name]
    if environ.get(variable):
        return environ[variable]
    file_variable = f"{variable}_FILE"
    if environ.get(file_variable):
        return _read_secret_file(Path(environ[file_variable]), file_variable)
    if file is not None:
        path = file if file.is_absolute() else base_dir / file
        return _read_secret_file(path, file_key)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / SECRET_CREDENTIALS[name]
        if path.exists():
            return _read_secret_file(path, f"credential {SECRET_CREDENTIALS[name]}")
    return None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration; raise :class:`ConfigError` naming the bad key."""
    environ = os.environ if environ is None else environ
    label = str(path) if path is not None else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for (section, key), secret in _SECRET_KEYS.items():
        if key in data.get(section, {}):
            raise ConfigError(
                f"{label}: {section}.{key}: secrets must not be written in the config file; set "
                f"{SECRET_ENV[secret]}, point {section}.{key}_file at a file, or use systemd "
                f"LoadCredential={SECRET_CREDENTIALS[secret]}:..."
            )
    overrides, origins = _env_overrides(environ)
    merged = _merge(data, overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = _location(error["loc"])
            origin = next((o for k, o in origins.items() if where.startswith(k)), label)
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"{origin}: {where}: {message}")
        raise ConfigError("\n".join(lines)) from None
    base_dir = path.parent if path is not None else Path.cwd()
    secrets = Secrets(
        api_token=_secret(
            "api_token",
            settings.cloudflare.api_token_file,
            "cloudflare.api_token_file",
            base_dir,
            environ,
        ),
        coordinator_secret=_secret(
            "coordinator_secret",
            settings.coordinator.secret_file,
            "coordinator.secret_file",
            base_dir,
            environ,
        ),
    )
    return Config(settings=settings, secrets=secrets, source=path)
