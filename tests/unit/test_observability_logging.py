"""Log output as operators see it: JSON lines (or console lines on a TTY), context, redaction."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import structlog
import uvicorn.config

from flowcraft_puller.observability.logging import (
    REDACTED,
    InvalidLogLevel,
    configure_logging,
    set_level,
)

TOKEN = "cfut_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
WORKER_SECRET = "ws-4a4b4c4d4e4f50515253"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog's configuration and the stdlib loggers we touch back as they were."""
    config = structlog.get_config()
    names = ("", "httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
        for name in names
        for lg in [logging.getLogger(name)]
    }
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.configure(**config)
        for name, (handlers, level, propagate, disabled) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_logger_timestamp_and_context_vars() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", out)
    log = structlog.get_logger("flowcraft_puller.test")

    structlog.contextvars.bind_contextvars(run_id="run-1", node_id="charge", message_id="m-9")
    log.info("job finished", outcome="completed", seconds=0.25)

    [line] = lines(out)
    assert line["event"] == "job finished"
    assert line["level"] == "info"
    assert line["logger"] == "flowcraft_puller.test"
    assert (line["run_id"], line["node_id"], line["message_id"]) == ("run-1", "charge", "m-9")
    assert (line["outcome"], line["seconds"]) == ("completed", 0.25)
    assert line["timestamp"].endswith("Z")
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None


def test_secrets_never_reach_the_output() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out, secrets=[TOKEN, WORKER_SECRET, ""])
    log = structlog.get_logger("flowcraft_puller.test")

    class Client:
        def __repr__(self) -> str:
            return f"Client(token={TOKEN})"

    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    log.info(f"calling with {TOKEN}", headers=headers, client=Client())
    log.warning("nested", request={"body": {"note": f"secret is {WORKER_SECRET}"}})
    log.info("listed", attempts=[f"a {TOKEN}", 2])
    logging.getLogger("httpx").warning("HTTP Request: POST https://x/?t=%s", TOKEN)
    try:
        raise RuntimeError(f"refused {WORKER_SECRET}")
    except RuntimeError:
        log.exception("call failed")

    output = out.getvalue()
    assert TOKEN not in output
    assert WORKER_SECRET not in output
    assert output.count(REDACTED) >= 7
    assert headers["Authorization"] == f"Bearer {TOKEN}"


def test_sensitive_keys_are_redacted_at_any_depth_and_case() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = structlog.get_logger("t")

    log.info(
        "config",
        token="t-1",
        PASSWORD="p-1",
        coordinator_secret="s-1",
        options={"API-Token": "t-2", "retries": 3, "inner": [{"authorization": "x"}]},
        token_count=4,
    )

    [line] = lines(out)
    assert line["token"] == line["PASSWORD"] == line["coordinator_secret"] == REDACTED
    assert line["options"] == {
        "API-Token": REDACTED,
        "retries": 3,
        "inner": [{"authorization": REDACTED}],
    }
    assert line["token_count"] == 4


def test_stdlib_records_render_as_the_same_json() -> None:
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.contextvars.bind_contextvars(run_id="run-2")

    logging.getLogger("asyncio").warning("Task was destroyed but it is pending: %s", "t-1")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")

    warning, error = lines(out)
    assert warning["event"] == "Task was destroyed but it is pending: t-1"
    assert (warning["level"], warning["logger"], warning["run_id"]) == (
        "warning",
        "asyncio",
        "run-2",
    )
    assert warning["timestamp"].endswith("Z")
    assert (error["level"], error["logger"]) == ("error", "uvicorn.error")
    assert error["exception"][0]["exc_type"] == "ZeroDivisionError"


def test_exceptions_are_structured_without_local_variables() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = structlog.get_logger("t")

    def fail(password: str) -> None:
        raise ValueError("bad input")

    try:
        fail("hunter2")
    except ValueError:
        log.exception("node crashed")

    [line] = lines(out)
    [exception] = line["exception"]
    assert (exception["exc_type"], exception["exc_value"]) == ("ValueError", "bad input")
    assert exception["frames"][-1]["name"] == "fail"
    assert all("locals" not in frame for frame in exception["frames"])
    assert "hunter2" not in out.getvalue()


def test_a_terminal_gets_console_lines() -> None:
    out = FakeTTY()
    configure_logging("info", "auto", out)
    structlog.contextvars.bind_contextvars(run_id="run-3")

    structlog.get_logger("flowcraft_puller.test").info("pulled", count=5)
    logging.getLogger("httpx").warning("slow response")

    first, second = out.getvalue().splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert "pulled" in first
    assert "run-3" in first
    assert "\x1b[" in first
    assert "slow response" in second


def test_json_can_be_forced_on_a_terminal() -> None:
    out = FakeTTY()
    configure_logging("info", "json", out)
    structlog.get_logger("t").info("hello")
    assert lines(out)[0]["event"] == "hello"


def test_set_level_changes_structlog_and_stdlib_filtering_at_runtime() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    log = structlog.get_logger("flowcraft_puller.test")
    library = logging.getLogger("some.library")
    log.info("cached now")

    log.debug("hidden 1")
    library.debug("hidden 2")
    set_level("debug")
    log.debug("shown 1")
    library.debug("shown 2")
    set_level("ERROR")
    log.warning("hidden 3")
    library.warning("hidden 4")
    log.error("shown 3")

    assert [line["event"] for line in lines(out)] == ["cached now", "shown 1", "shown 2", "shown 3"]


def test_chatty_http_loggers_stay_quiet_unless_debugging() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("httpx").info("HTTP Request: POST /v1/batch 200")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /metrics" 200')
    assert out.getvalue() == ""

    set_level("debug")
    logging.getLogger("httpx").info("HTTP Request: POST /v1/batch 200")
    assert [line["event"] for line in lines(out)] == ["HTTP Request: POST /v1/batch 200"]


def test_reconfiguring_redirects_loggers_that_were_already_used() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    log = structlog.get_logger("t")
    log.info("one")

    configure_logging("info", "json", second, secrets=["s3cr3t-value"])
    log.info("two s3cr3t-value")
    logging.getLogger("lib").warning("three")

    assert [line["event"] for line in lines(first)] == ["one"]
    assert [line["event"] for line in lines(second)] == [f"two {REDACTED}", "three"]


def test_an_unknown_level_is_refused_with_the_valid_choices() -> None:
    with pytest.raises(InvalidLogLevel, match="debug, info, warning, error, critical"):
        configure_logging("verbose")
    with pytest.raises(InvalidLogLevel):
        set_level("loud")


def test_a_closed_output_drops_lines_instead_of_failing_the_caller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    out.close()
    structlog.get_logger("t").info("nobody is listening")
    logging.getLogger("lib").warning("nor here")
    assert capsys.readouterr().err == ""
