"""Node implementations of the example order-fulfilment workflow.

They stand in for real side effects (a stock service, a payment gateway, a carrier) so that
``flowcraft-puller dev`` shows every feature on one machine: a fan-out, an 'all' join, a
condition, a retried node and a durable sleep.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flowcraft_puller import NodeContext, NodeResult, Registry

NODES = Registry()


def _order_id(ctx: NodeContext) -> str:
    seed = str(ctx.params.get("orderId") or ctx.run_id)
    return "ord-" + hashlib.sha256(seed.encode()).hexdigest()[:8]


@NODES.node()
async def load_order(ctx: NodeContext) -> dict[str, Any]:
    items = [
        {"sku": "tea-earl-grey", "qty": 2, "price": 6.5},
        {"sku": "mug-blue", "qty": 1, "price": 12.0},
    ]
    total = round(sum(i["qty"] * i["price"] for i in items), 2)
    return {"orderId": _order_id(ctx), "items": items, "total": total}


@NODES.node()
async def reserve_stock(ctx: NodeContext) -> dict[str, Any]:
    return {"reserved": [item["sku"] for item in ctx.input["items"]]}


@NODES.node()
async def charge_card(ctx: NodeContext) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise TimeoutError("payment gateway timed out (simulated on the first attempt)")
    return {
        "chargeId": f"ch-{ctx.input['orderId']}",
        "amount": ctx.input["amount"],
        "attempt": ctx.attempt,
    }


@NODES.node()
def score_fraud(ctx: NodeContext) -> dict[str, Any]:
    total = ctx.input["total"]
    return {"score": 0.9 if total > 1000 else 0.1}


@NODES.node()
async def decide(ctx: NodeContext) -> dict[str, Any]:
    risky = ctx.input["risk"]["score"] > 0.5
    charged = "chargeId" in ctx.input["payment"]
    return {"approved": charged and not risky, "needsReview": risky}


@NODES.node()
async def ship_order(ctx: NodeContext) -> dict[str, Any]:
    return {"carrier": "postal", "trackingId": "trk-" + ctx.input["orderId"][4:]}


@NODES.node()
async def flag_for_review(ctx: NodeContext) -> NodeResult:
    return NodeResult(output={"queued": True, "reason": "fraud score"})


@NODES.node()
async def send_receipt(ctx: NodeContext) -> dict[str, Any]:
    order, shipment = ctx.input["order"], ctx.input["shipment"]
    return {
        "to": "customer@example.com",
        "orderId": order["orderId"],
        "trackingId": shipment["trackingId"],
    }
