"""What the systemd units promise about the daemon: notify readiness, a watchdog, stop timeouts
that fit the drain, credentials the daemon actually reads, and hardening that keeps metrics."""

from __future__ import annotations

import tomllib

import pytest

from flowcraft_puller.config import (
    SECRET_CREDENTIALS,
    CloudflareConfig,
    DaemonConfig,
    parse_duration,
)
from tests.deploy.unit_files import (
    REPO,
    SYSTEMD_DIR,
    UNITS,
    UnitFile,
    credentials,
    environment,
    parse_unit,
    seconds,
)

# Keys whose values may differ between the single unit and the template (they name paths).
_PER_INSTANCE_KEYS = {"ExecStart", "LoadCredential", "ConfigurationDirectory"}


@pytest.fixture(params=UNITS)
def unit(request: pytest.FixtureRequest) -> UnitFile:
    return parse_unit(SYSTEMD_DIR / request.param)


def _example_drain_timeout() -> float:
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    return parse_duration(example["daemon"]["drain_timeout"])


def test_unit_is_type_notify_with_main_access_and_a_watchdog(unit: UnitFile) -> None:
    assert unit.service("Type") == "notify"
    assert unit.service("NotifyAccess") == "main"
    assert seconds(unit.service("WatchdogSec")) > 0
    assert unit.service("Restart") == "on-failure"


def test_stop_timeout_exceeds_the_drain_timeout(unit: UnitFile) -> None:
    drain = DaemonConfig().drain_timeout
    assert drain == _example_drain_timeout()
    # After the drain come the hand-back retries and the last ack flush: one more request.
    final_flush = CloudflareConfig().request_timeout
    assert seconds(unit.service("TimeoutStopSec")) > drain + final_flush


def test_stop_signal_is_the_one_the_daemon_drains_on(unit: UnitFile) -> None:
    assert unit.service("KillSignal") == "SIGTERM"
    assert unit.service("KillMode") == "mixed"


def test_credential_names_are_the_ones_the_daemon_reads(unit: UnitFile) -> None:
    assert set(credentials(unit)) == set(SECRET_CREDENTIALS.values())


def test_configuration_errors_are_not_restarted(unit: UnitFile) -> None:
    assert unit.service("RestartPreventExitStatus") == "2"


def test_hardening_keeps_the_process_metrics(unit: UnitFile) -> None:
    assert unit.values("Service", "ProcSubset") in ([], ["all"])
    assert unit.service("DynamicUser") == "yes"
    assert unit.service("ProtectSystem") == "strict"
    assert unit.service("NoNewPrivileges") == "yes"
    assert unit.values("Service", "CapabilityBoundingSet") == []
    families = set(unit.service("RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit.values("Service", "SystemCallFilter")


def test_python_output_is_unbuffered_for_the_journal(unit: UnitFile) -> None:
    assert environment(unit).get("PYTHONUNBUFFERED") == "1"


def test_template_differs_from_the_single_unit_only_in_per_instance_paths() -> None:
    single, template = (parse_unit(SYSTEMD_DIR / name) for name in UNITS)
    for section in ("Service", "Install"):
        keys = (set(single.sections[section]) | set(template.sections[section])) - (
            _PER_INSTANCE_KEYS
        )
        for key in sorted(keys):
            assert single.values(section, key) == template.values(section, key), key
    for key in _PER_INSTANCE_KEYS:
        assert all("%i" in value for value in template.values("Service", key)), key
