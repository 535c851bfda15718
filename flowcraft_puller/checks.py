"""`check --online`: can this daemon reach its queues and its Worker with its credentials?"""

from __future__ import annotations

import httpx

from flowcraft_puller.config import Config


async def check_online(config: Config) -> list[str]:
    """Problems found by listing the account's queues and calling the Worker's health route.

    Listing queues proves the token, the account and each queue id without leasing a message
    (a pull would count a delivery attempt against a real job).
    """
    settings = config.settings
    problems: list[str] = []
    base = settings.cloudflare.api_base_url.rstrip("/")
    url = f"{base}/accounts/{settings.cloudflare.account_id}/queues"
    headers = {"Authorization": f"Bearer {config.secrets.api_token or ''}"}
    async with httpx.AsyncClient(timeout=settings.cloudflare.request_timeout) as client:
        try:
            response = await client.get(url, headers=headers)
            envelope = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"Cloudflare API at {base}: {exc}")
        else:
            if response.status_code != 200 or not envelope.get("success"):
                errors = envelope.get("errors") if isinstance(envelope, dict) else None
                problems.append(
                    f"listing queues of account {settings.cloudflare.account_id!r} failed: "
                    f"HTTP {response.status_code} {errors}"
                )
            else:
                known = {q.get("queue_id") for q in envelope.get("result") or []}
                problems += [
                    f"queue {q.name!r}: id {q.id} does not exist in account "
                    f"{settings.cloudflare.account_id!r}"
                    for q in settings.queues
                    if q.id not in known
                ]
        coordinator = settings.coordinator.url.rstrip("/") + "/v1"
        try:
            response = await client.get(
                coordinator + "/health",
                headers={"Authorization": f"Bearer {config.secrets.coordinator_secret or ''}"},
            )
        except httpx.HTTPError as exc:
            problems.append(f"the Worker at {coordinator}: {exc}")
        else:
            if response.status_code != 200:
                problems.append(
                    f"the Worker at {coordinator}/health answered HTTP {response.status_code}"
                )
    return problems
