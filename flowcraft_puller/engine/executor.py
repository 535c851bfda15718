"""Running user node code: attempts, retry delays, timeouts, fatal errors (SEMANTICS 2-6)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_thread

from flowcraft_puller.engine.blueprint import Blueprint, NodeDef
from flowcraft_puller.engine.context import AsyncContext, ContextBuffer
from flowcraft_puller.engine.errors import FatalNodeError, FlowcraftError, NodeTimeoutError
from flowcraft_puller.engine.inputs import effective_inputs, resolve_input
from flowcraft_puller.engine.jsonvalues import check_json
from flowcraft_puller.engine.jsvalues import UNDEFINED
from flowcraft_puller.engine.nodes import (
    BaseNode,
    CancelSignal,
    NodeContext,
    NodeImplementation,
    NodeResult,
    is_class_node,
    to_node_result,
)


class AttemptRecorder(Protocol):
    """Persists how many attempts a node has used, so a redelivery continues the count."""

    async def __call__(self, attempts: int, error: str) -> None: ...


InvokeHook = Callable[[str, str, int], None]
"""Called as ``hook(run_id, node_id, attempt)`` each time node code is invoked."""


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: NodeResult
    buffer: ContextBuffer


@dataclass(frozen=True, slots=True)
class Failed:
    """Every attempt failed (or a fatal error stopped them); ``message`` is the original text."""

    message: str
    fatal: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class Deferred:
    """The next attempt is due later than can be waited for in process: hand it to the queue."""

    attempts: int
    retry_after_ms: float
    message: str


Outcome = Succeeded | Failed | Deferred


@dataclass(slots=True)
class ExecutionEnv:
    """What every node execution of a daemon shares."""

    registry: Mapping[str, NodeImplementation]
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    on_invoke: InvokeHook | None = None
    inline_retry_limit_ms: float = 5_000.0


@dataclass(slots=True)
class Attempts:
    """One node execution request: where it runs and how many attempts were already used."""

    blueprint: Blueprint
    node: NodeDef
    run_id: str
    snapshot: Mapping[str, Any]
    done: int = 0
    last_error: str | None = None
    deadline: float | None = None
    """``time.monotonic()`` value the execution must finish by (the message's lease)."""
    seed_writes: Mapping[str, Any] = field(default_factory=dict)
    """Writes visible to the node before it runs (``_catch_error`` for a fallback)."""


def error_message(error: BaseException) -> str:
    """The message of an error as flowcraft reports it (the original text, not a wrapper)."""
    if isinstance(error, FlowcraftError):
        return error.message
    text = str(error)
    return text if text else type(error).__name__


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Await async callables; run sync ones in a worker thread (abandoned if cancelled)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    value = await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _with_timeout(
    awaitable_factory: Callable[[], Awaitable[Any]], node: NodeDef, cancel: CancelSignal
) -> Any:
    timeout_ms = node.config.timeout_ms
    if timeout_ms is None:
        return await awaitable_factory()
    with anyio.move_on_after(timeout_ms / 1000) as scope:
        return await awaitable_factory()
    if scope.cancelled_caught:
        cancel.set()
        raise NodeTimeoutError(node.id, timeout_ms)
    raise AssertionError("unreachable")  # pragma: no cover


async def execute(
    env: ExecutionEnv,
    request: Attempts,
    implementation: NodeImplementation,
    record: AttemptRecorder,
) -> Outcome:
    """Run a user node (function or class) to success, fatal error or exhaustion."""
    if is_class_node(implementation):
        assert isinstance(implementation, type)
        return await _execute_class(env, request, implementation, record)
    node = request.node

    async def call(buffer: ContextBuffer, attempt: int) -> Any:
        ctx = _node_context(env, request, buffer, attempt)
        return await _with_timeout(lambda: _call(implementation, ctx), node, ctx.cancel)

    outcome, _ = await _attempt_loop(env, request, record, call, request.seed_writes)
    return outcome


async def _execute_class(
    env: ExecutionEnv, request: Attempts, cls: type[BaseNode], record: AttemptRecorder
) -> Outcome:
    """TS §3.1: ``prep`` once, ``exec`` retried, ``fallback`` when exhausted, ``post`` once,
    ``recover`` at the end whenever an error was seen."""
    node = request.node
    prep_buffer = ContextBuffer(request.snapshot)
    prep_buffer.writes.update(request.seed_writes)
    prep_ctx = _node_context(env, request, prep_buffer, request.done + 1)
    instance = cls(prep_ctx.params, node.id)
    last_error: BaseException | None = None
    try:
        try:
            prepared = await _call(instance.prep, prep_ctx)
        except Exception as exc:
            last_error = exc
            return _failure(exc, request.done + 1)

        async def call(buffer: ContextBuffer, attempt: int) -> Any:
            ctx = _node_context(env, request, buffer, attempt)
            return await _with_timeout(
                lambda: _call(instance.exec, prepared, ctx), node, ctx.cancel
            )

        outcome, last_error = await _attempt_loop(env, request, record, call, prep_buffer.writes)
        if isinstance(outcome, Failed) and not outcome.fatal and last_error is not None:
            buffer = ContextBuffer(request.snapshot)
            buffer.writes.update(prep_buffer.writes)
            ctx = _node_context(env, request, buffer, outcome.attempts)
            try:
                value = await _call(instance.fallback, last_error, ctx)
            except Exception as exc:
                return _failure(exc, outcome.attempts)
            outcome = Succeeded(to_node_result(value), buffer)
        if isinstance(outcome, Succeeded):
            ctx = _node_context(env, request, outcome.buffer, request.done + 1)
            try:
                return _checked(
                    node, await _call(instance.post, outcome.result.output, ctx), outcome.buffer
                )
            except Exception as exc:
                last_error = exc
                return _failure(exc, request.done + 1)
        return outcome
    finally:
        if last_error is not None:
            recover_ctx = _node_context(
                env, request, ContextBuffer(request.snapshot), request.done + 1
            )
            with contextlib.suppress(Exception):
                await _call(instance.recover, last_error, recover_ctx)


Call = Callable[[ContextBuffer, int], Awaitable[Any]]


async def _attempt_loop(
    env: ExecutionEnv,
    request: Attempts,
    record: AttemptRecorder,
    call: Call,
    seed: Mapping[str, Any],
) -> tuple[Outcome, BaseException | None]:
    """Attempts ``done+1 .. maxRetries``; each failed one is recorded before the next.

    A crash therefore repeats at most the interrupted attempt. A retry delay longer than
    ``inline_retry_limit_ms`` (or than the time left before ``deadline``) ends in
    :class:`Deferred`, to be retried through the queue.
    """
    node = request.node
    limit = node.config.max_retries
    attempt = request.done
    if attempt >= limit:
        message = request.last_error or f"all {limit} attempt(s) failed before this delivery"
        return Failed(message=message, fatal=False, attempts=attempt), None
    last_error: BaseException | None = None
    while True:
        attempt += 1
        buffer = ContextBuffer(request.snapshot)
        buffer.writes.update(seed)
        if env.on_invoke is not None:
            env.on_invoke(request.run_id, node.id, attempt)
        try:
            value = await call(buffer, attempt)
            return _checked(node, value, buffer), None
        except Exception as exc:
            last_error = exc
            if isinstance(exc, FlowcraftError) and exc.fatal:
                return _failure(exc, attempt), exc
        if attempt >= limit:
            return _failure(last_error, attempt), last_error
        message = error_message(last_error)
        await record(attempt, message)
        delay = node.config.retry_delay_ms or 0.0
        remaining = (
            math.inf if request.deadline is None else (request.deadline - time.monotonic()) * 1000
        )
        if delay > env.inline_retry_limit_ms or delay >= remaining:
            return Deferred(attempts=attempt, retry_after_ms=delay, message=message), last_error
        if delay > 0:
            await anyio.sleep(delay / 1000)


def _checked(node: NodeDef, value: Any, buffer: ContextBuffer) -> Succeeded:
    result = to_node_result(value)
    check_json(result.output, f"the output of node '{node.id}'")
    for key, written in buffer.writes.items():
        check_json(written, f"context key {key!r} written by node '{node.id}'")
    return Succeeded(result=result, buffer=buffer)


def _failure(error: BaseException, attempts: int) -> Failed:
    fatal = isinstance(error, FlowcraftError) and error.fatal
    return Failed(message=error_message(error), fatal=fatal, attempts=attempts)


def _node_context(
    env: ExecutionEnv, request: Attempts, buffer: ContextBuffer, attempt: int
) -> NodeContext:
    node = request.node
    raw_input = resolve_input(node.id, effective_inputs(request.blueprint, node), buffer.view)
    return NodeContext(
        input=None if raw_input is UNDEFINED else raw_input,
        params=copy.deepcopy(dict(node.params)) if node.params else {},
        context=AsyncContext(buffer),
        run_id=request.run_id,
        node_id=node.id,
        blueprint_id=request.blueprint.id,
        attempt=attempt,
        dependencies=env.dependencies,
    )


def implementation_missing(uses: str) -> FatalNodeError:
    """The error of a node whose ``uses`` has no implementation (TS text)."""
    return FatalNodeError(f"Implementation for '{uses}' not found.")
