"""The standard test nodes of the conformance corpus (``shared/conformance/README.md``)."""

from __future__ import annotations

from typing import Any

import anyio

from flowcraft_puller.engine.errors import FatalNodeError
from flowcraft_puller.engine.nodes import NodeContext, NodeImplementation, NodeResult


def _number(value: Any) -> Any:
    return 0 if value is None else value


async def const(ctx: NodeContext) -> Any:
    return NodeResult(output=ctx.params.get("value"))


async def inc(ctx: NodeContext) -> Any:
    return NodeResult(output=_number(ctx.input) + (ctx.params.get("by") or 1))


async def times10(ctx: NodeContext) -> Any:
    return NodeResult(output=_number(ctx.input) * 10)


async def double(ctx: NodeContext) -> Any:
    return NodeResult(output=_number(ctx.input) * 2)


async def sum_(ctx: NodeContext) -> Any:
    return NodeResult(output=sum(ctx.input or []))


async def echo(ctx: NodeContext) -> Any:
    return NodeResult(output=ctx.input)


async def ok_obj(ctx: NodeContext) -> Any:
    return NodeResult(output={"ok": True, "n": 7})


async def arr(ctx: NodeContext) -> Any:
    return NodeResult(output=ctx.params.get("items"))


async def act(ctx: NodeContext) -> Any:
    return NodeResult(output=ctx.params.get("output"), action=ctx.params.get("action"))


async def flaky(ctx: NodeContext) -> Any:
    if ctx.attempt <= int(ctx.params.get("failures", 0)):
        raise RuntimeError(f"flaky failure {ctx.attempt}")
    return NodeResult(output=f"ok-after-{ctx.attempt}")


async def fail(ctx: NodeContext) -> Any:
    raise RuntimeError(ctx.params.get("message", "boom"))


async def fatal(ctx: NodeContext) -> Any:
    raise FatalNodeError(ctx.params.get("message", "fatal failure"))


async def slow(ctx: NodeContext) -> Any:
    await anyio.sleep(float(ctx.params.get("ms", 0)) / 1000)
    return NodeResult(output=ctx.input)


async def set_ctx(ctx: NodeContext) -> Any:
    await ctx.context.set(ctx.params["key"], ctx.params.get("value"))
    return NodeResult(output=ctx.params.get("value"))


async def read_ctx(ctx: NodeContext) -> Any:
    return NodeResult(output=await ctx.context.get(ctx.params["key"]))


async def count(ctx: NodeContext) -> Any:
    key = ctx.params.get("key", "count")
    value = _number(await ctx.context.get(key)) + 1
    await ctx.context.set(key, value)
    return NodeResult(output=value)


async def loop_body(ctx: NodeContext) -> Any:
    value = _number(await ctx.context.get("count")) + 1
    await ctx.context.set("count", value)
    await ctx.context.set("keepGoing", value < ctx.params["limit"])
    return NodeResult(output=value)


async def fb(ctx: NodeContext) -> Any:
    caught = await ctx.context.get("_catch_error")
    return NodeResult(output={"fallback": True, "caught": (caught or {}).get("message")})


STANDARD_NODES: dict[str, NodeImplementation] = {
    "const": const,
    "inc": inc,
    "times10": times10,
    "double": double,
    "sum": sum_,
    "echo": echo,
    "okObj": ok_obj,
    "arr": arr,
    "act": act,
    "flaky": flaky,
    "fail": fail,
    "fatal": fatal,
    "slow": slow,
    "setCtx": set_ctx,
    "readCtx": read_ctx,
    "count": count,
    "loopBody": loop_body,
    "fb": fb,
}
