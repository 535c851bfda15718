"""HTTP probes the container smoke test runs inside the containers' network namespace (through
``nsenter --net``): the emulator's queue id, the daemon's probes, one metric's value.

    probe.py queue-id --api URL --account ID --token TOKEN --queue NAME
    probe.py ready --url http://127.0.0.1:9464
    probe.py metric --url http://127.0.0.1:9464 --name NAME [--label key=value ...]

Each prints its answer on stdout; exit 0 on success, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


class ProbeFailed(Exception):
    """The probe's target did not answer as expected within the time allowed."""


def _client() -> httpx.Client:
    # trust_env=False: proxies from the environment must not capture loopback requests.
    return httpx.Client(timeout=5.0, trust_env=False)


def _poll(what: str, attempt: Callable[[], T | None], timeout: float) -> T:
    """Call ``attempt`` until it returns a value; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            result = attempt()
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None:
                return result
            last = "not yet"
        time.sleep(0.25)
    raise ProbeFailed(f"{what}: gave up after {timeout:g}s ({last})")


def queue_id(api: str, account: str, token: str, queue: str, timeout: float) -> str:
    """The id of ``queue`` from the queue-list API (``GET /accounts/{account}/queues``)."""
    with _client() as client:

        def attempt() -> str | None:
            response = client.get(
                f"{api}/accounts/{account}/queues", headers={"Authorization": f"Bearer {token}"}
            )
            response.raise_for_status()
            for entry in response.json()["result"]:
                if entry.get("queue_name") == queue:
                    return str(entry["queue_id"])
            raise ProbeFailed(f"queue {queue!r} is not in the queue list: {response.text}")

        return _poll("queue list", attempt, timeout)


def ready(url: str, timeout: float) -> str:
    """Wait until both ``/livez`` and ``/readyz`` answer 200."""
    with _client() as client:

        def attempt() -> str | None:
            statuses = [client.get(f"{url}/{probe}").status_code for probe in ("livez", "readyz")]
            return "ready" if statuses == [200, 200] else None

        return _poll(f"{url}/livez and /readyz", attempt, timeout)


def metric(url: str, name: str, labels: dict[str, str]) -> float:
    """The value of the sample ``name{labels}`` in ``/metrics``."""
    with _client() as client:
        response = client.get(f"{url}/metrics")
        response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise ProbeFailed(f"no sample {name}{labels} in {url}/metrics")


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="probe.py")
    commands = parser.add_subparsers(dest="command", required=True)
    queue = commands.add_parser("queue-id")
    queue.add_argument("--api", required=True)
    queue.add_argument("--account", required=True)
    queue.add_argument("--token", required=True)
    queue.add_argument("--queue", required=True)
    queue.add_argument("--timeout", type=float, default=60.0)
    probes = commands.add_parser("ready")
    probes.add_argument("--url", required=True)
    probes.add_argument("--timeout", type=float, default=60.0)
    sample = commands.add_parser("metric")
    sample.add_argument("--url", required=True)
    sample.add_argument("--name", required=True)
    sample.add_argument("--label", action="append", default=[])
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    try:
        if args.command == "queue-id":
            answer: object = queue_id(args.api, args.account, args.token, args.queue, args.timeout)
        elif args.command == "ready":
            answer = ready(args.url, args.timeout)
        else:
            labels = dict(item.split("=", 1) for item in args.label)
            answer = metric(args.url, args.name, labels)
    except (ProbeFailed, httpx.HTTPError) as exc:
        sys.stderr.write(f"probe {args.command}: {exc}\n")
        return 1
    sys.stdout.write(f"{answer}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
