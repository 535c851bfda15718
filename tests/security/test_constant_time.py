"""Secrets and tokens are compared in constant time, whatever prefix of them a caller guessed:
every decision goes through one ``hmac.compare_digest`` of the whole presented credential (the
emulator), or through SHA-256 digests compared with ``timingSafeEqual`` (the Worker)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from flowcraft_puller.emulator.server import EmulatorServer
from tests.security.routes import ACCOUNT, ROOT

pytestmark = pytest.mark.anyio

JOB_QUEUE = "flowcraft-jobs"


def guesses(secret: str) -> list[str]:
    """Wrong credentials sharing ever longer prefixes with ``secret``."""
    other = {c: ("B" if c == "A" else "A") for c in secret}
    return [
        "".join(other[c] for c in secret),
        secret[:1] + "".join(other[c] for c in secret[1:]),
        secret[: len(secret) // 2] + "".join(other[c] for c in secret[len(secret) // 2 :]),
        secret[:-1] + other[secret[-1]],
        secret[:-1],
        secret + "A",
    ]


class ComparisonSpy:
    """Wraps ``hmac.compare_digest`` and records every comparison made with a given secret."""

    def __init__(self, original: Callable[[Any, Any], bool]) -> None:
        self.original = original
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, left: Any, right: Any) -> bool:
        as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in (left, right)]
        self.calls.append((as_bytes[0], as_bytes[1]))
        return self.original(left, right)

    def with_secret(self, secret: str) -> list[bytes]:
        """The other side of every comparison that involved ``secret``."""
        mine = secret.encode()
        return [b if a == mine else a for a, b in self.calls if mine in (a, b)]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> ComparisonSpy:
    recorder = ComparisonSpy(hmac.compare_digest)
    monkeypatch.setattr(hmac, "compare_digest", recorder)
    return recorder


async def test_the_coordinator_secret_is_compared_whole_whatever_prefix_matches(
    emulator: EmulatorServer, spy: ComparisonSpy
) -> None:
    secret = emulator.config.secret or ""
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        for guess in guesses(secret):
            response = await client.get("/v1/health", headers={"Authorization": f"Bearer {guess}"})
            assert response.status_code == 401
    assert spy.with_secret(secret) == [g.encode() for g in guesses(secret)]


async def test_the_queue_api_token_is_compared_whole_whatever_prefix_matches(
    emulator: EmulatorServer, spy: ComparisonSpy
) -> None:
    token = emulator.config.token or ""
    path = f"/client/v4/accounts/{ACCOUNT}/queues/{emulator.queue_id(JOB_QUEUE)}/messages/pull"
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        for guess in guesses(token):
            response = await client.post(
                path, content=b"{}", headers={"Authorization": f"Bearer {guess}"}
            )
            assert response.status_code == 403
    assert spy.with_secret(token) == [g.encode() for g in guesses(token)]


async def test_a_webhook_token_is_compared_whole_whatever_prefix_matches(
    emulator_with_hook: tuple[str, str], spy: ComparisonSpy
) -> None:
    url, token = emulator_with_hook
    base = url.rsplit("/", 1)[0]
    async with httpx.AsyncClient() as anonymous:
        for guess in guesses(token):
            response = await anonymous.post(f"{base}/{guess}", content=b"{}")
            assert response.status_code == 404
    assert spy.with_secret(token) == [g.encode() for g in guesses(token)]


def _source(relative: str) -> str:
    return (ROOT / "worker" / "src" / relative).read_text()


def _function(source: str, signature: str, indent: str = "") -> str:
    """The text of the function that starts with ``signature`` (up to its closing brace)."""
    body = source[source.index(signature) :]
    return body[: body.index(f"\n{indent}}}\n")]


def test_the_worker_compares_secrets_as_digests_with_timing_safe_equal() -> None:
    secrets_module = _source("secrets.ts")
    same_digest = _function(secrets_module, "export function sameDigest")
    assert "crypto.subtle.timingSafeEqual(hexBytes(left), hexBytes(right))" in same_digest
    same_secret = _function(secrets_module, "export async function sameSecret")
    assert "sha256Hex(candidate), sha256Hex(secret)" in same_secret
    assert "return sameDigest(left, right);" in same_secret


def test_the_worker_checks_the_bearer_and_webhook_tokens_with_those_comparisons() -> None:
    assert "await sameSecret(" in _source("worker.ts")
    assert "const tokenHash = await sha256Hex(token);" in _source("worker.ts")
    hook = _function(_source("run/machine.ts"), "  hook(node: string, tokenHash: string", "  ")
    assert "sameDigest(known, tokenHash)" in hook
