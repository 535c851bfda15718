"""Webhook tokens are unguessable (at least 128 bits from the operating system's CSPRNG, never
repeated) and single-use: a delivery resumes the run once; a replay, a near miss or a guess
changes nothing."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from flowcraft_puller.runstore.protocol import RunView
from flowcraft_puller.testing import STANDARD_NODES, MemoryStack
from flowcraft_puller.testing.processes import EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.security.daemons import standard_daemon, wait_for_status

pytestmark = pytest.mark.anyio

RUNS = 20
HOOKED = {
    "id": "security-hook",
    "nodes": [
        {"id": "pay", "uses": "webhook"},
        {"id": "ship", "uses": "echo", "inputs": "pay"},
    ],
    "edges": [{"source": "pay", "target": "ship"}],
}


def _hook_url(view: RunView) -> str:
    return str(view.awaiting["pay"].details["url"])


def _token_bits(token: str) -> int:
    return len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8


async def test_tokens_come_from_the_csprng_with_at_least_128_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[int] = []
    original = secrets.token_urlsafe

    def token_urlsafe(nbytes: int) -> str:
        drawn.append(nbytes)
        return original(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", token_urlsafe)
    async with MemoryStack(blueprints=[HOOKED], registry=STANDARD_NODES) as stack:
        result = await stack.wait(await stack.start("security-hook"))
    assert result.status == "awaiting"
    assert drawn
    assert min(drawn) * 8 >= 128


async def test_a_webhook_resumes_its_run_once_and_nothing_else_does(tmp_path: Path) -> None:
    emulator = EmulatorProcess(tmp_path / "emulator")
    async with (
        emulator,
        standard_daemon(emulator, tmp_path / "daemon", [HOOKED]),
        RunClient(emulator.url, emulator.secret, [HOOKED]) as runs,
    ):
        run_ids = [await runs.start("security-hook") for _ in range(RUNS)]
        waiting = await wait_for_status(runs, run_ids, "awaiting")
        urls = {run_id: _hook_url(view) for run_id, view in waiting.items()}
        tokens = [urlsplit(url).path.rsplit("/", 1)[1] for url in urls.values()]
        async with httpx.AsyncClient() as client:
            answers = await _deliver_twice_and_guess(client, urls)
        done = await runs.wait_terminal(run_ids)
    assert len(set(tokens)) == RUNS
    assert min(_token_bits(t) for t in tokens) >= 128
    assert answers["first"] == {200}
    assert answers["replay"] == {409}
    assert answers["near miss"] == answers["unknown run"] == {404}
    assert len(answers["not found bodies"]) == 1
    assert {v.status for v in done.values()} == {"completed"}
    assert {r: v.context["_outputs.ship"] for r, v in done.items()} == {
        r: {"paid": r} for r in run_ids
    }


async def _deliver_twice_and_guess(
    client: httpx.AsyncClient, urls: dict[str, str]
) -> dict[str, set[Any]]:
    answers: dict[str, set[Any]] = {
        "first": set(),
        "replay": set(),
        "near miss": set(),
        "unknown run": set(),
        "not found bodies": set(),
    }
    for run_id, url in urls.items():
        flipped = url[:-1] + ("A" if url[-1] != "A" else "B")
        near = await client.post(flipped, json={"paid": "forged"})
        answers["near miss"].add(near.status_code)
        answers["not found bodies"].add(near.content)
        other = url.replace(run_id, "f" * 32)
        unknown = await client.post(other, json={"paid": "forged"})
        answers["unknown run"].add(unknown.status_code)
        answers["not found bodies"].add(unknown.content)
        answers["first"].add((await client.post(url, json={"paid": run_id})).status_code)
        answers["replay"].add((await client.post(url, json={"paid": "again"})).status_code)
    return answers


async def test_a_webhook_token_with_non_ascii_characters_is_not_found(
    emulator_with_hook: tuple[str, str],
) -> None:
    url, _ = emulator_with_hook
    async with httpx.AsyncClient() as client:
        guessed = url.rsplit("/", 1)[0] + "/" + quote("é" * 24)
        response = await client.post(guessed, content=b"{}")
    assert response.status_code == 404
