"""Every route of the emulator and of the Worker protocol, read from the live route table and
from ``docs/protocol.md`` (so that a route added to either is checked too)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.routing import Mount, Route

ROOT: Final = Path(__file__).resolve().parents[2]
PROTOCOL_DOC: Final = ROOT / "docs" / "protocol.md"
_HEADING: Final = re.compile(r"^### 4\.\d+ `(GET|POST) (/[^`?]*)")

ACCOUNT: Final = "0123456789abcdef0123456789abcdef"
RUN_ID: Final = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    template: str

    def path(self, queue_id: str, run_id: str = RUN_ID) -> str:
        """The template with every parameter filled in."""
        return (
            self.template.replace("{account_id}", ACCOUNT)
            .replace("{queue_id}", queue_id)
            .replace("{runId}", run_id)
            .replace("{nodeId}", "A")
            .replace("{token}", "t" * 32)
            .replace("{ref}", queue_id)
        )


def protocol_routes() -> list[Endpoint]:
    """The Worker protocol's routes as ``docs/protocol.md`` §4 documents them (under ``/v1``)."""
    found = []
    for line in PROTOCOL_DOC.read_text().splitlines():
        match = _HEADING.match(line)
        if match:
            found.append(Endpoint(match.group(1), "/v1" + match.group(2)))
    if not found:
        raise LookupError(f"no route headings in {PROTOCOL_DOC}")
    return found


def emulator_routes(app: Starlette) -> list[Endpoint]:
    """The routes of the emulator's own route table (the ``/v1`` mount is documented ones)."""
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            found += [Endpoint(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
        elif isinstance(route, Mount) and route.path == "/v1":
            found += protocol_routes()
        else:
            raise TypeError(f"a route of a kind this test does not know: {route!r}")
    return found


def is_webhook(endpoint: Endpoint) -> bool:
    """Webhook deliveries carry their credential in the path: the token."""
    return endpoint.template.startswith("/v1/hooks/")


def is_admin(endpoint: Endpoint) -> bool:
    """The emulator's test and operator routes (``/_emulator``): no credentials by design."""
    return endpoint.template.startswith("/_emulator/")
