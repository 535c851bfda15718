"""Assembling and running a daemon from its settings: clients, engine, adapter, supervisor,
metrics and health endpoints, systemd notifications and reloads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import structlog
from anyio.abc import TaskStatus

from flowcraft_puller.adapter import Adapter, AdapterSettings
from flowcraft_puller.config import Config, ConfigError, Secrets, Settings, load_config
from flowcraft_puller.engine.executor import ExecutionEnv, InvokeHook
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.observability.health import (
    EventLoopMonitor,
    HealthServer,
    HealthState,
    create_health_app,
)
from flowcraft_puller.observability.logging import Redactor, set_level
from flowcraft_puller.observability.metrics import Metrics
from flowcraft_puller.observability.reporter import Reporter
from flowcraft_puller.observability.systemd import SystemdNotifier
from flowcraft_puller.queue.cloudflare import CloudflareQueue
from flowcraft_puller.runstore.batching import BatchingRunStore
from flowcraft_puller.runstore.http import HttpRunStore
from flowcraft_puller.supervisor import QueueBinding, Supervisor, SupervisorSettings
from flowcraft_puller.workflows import Workflows, load_workflows

log = structlog.get_logger("flowcraft_puller.daemon")

EXIT_OK = 0
EXIT_CONFIG = 2


def workflows_from(config: Config) -> Workflows:
    """Load the blueprints, node registries and dependencies the configuration names."""
    section = config.settings.workflows
    return load_workflows(
        section.blueprints, section.nodes, config.base_dir, dependencies=section.dependencies
    )


def check_limits(settings: Settings, workflows: Workflows) -> list[str]:
    """Problems between the settings and the blueprints, each naming the key and the node.

    A queue's visibility timeout must exceed the worst time a node can take in one delivery:
    its ``timeout`` × ``maxRetries`` plus the retry delays waited in process.
    """
    problems = []
    inline_limit_ms = settings.daemon.inline_retry_limit * 1000
    worst_ms, worst_node = 0.0, ""
    for blueprint in workflows.blueprints.values():
        for node in blueprint.nodes:
            timeout = node.config.timeout_ms
            if timeout is None:
                continue
            attempts = max(1, node.config.max_retries)
            delay = node.config.retry_delay_ms or 0.0
            waited = delay if delay <= inline_limit_ms else 0.0
            total = timeout * attempts + waited * (attempts - 1)
            if total > worst_ms:
                worst_ms, worst_node = total, f"{blueprint.id}/{node.id}"
    for index, queue in enumerate(settings.queues):
        if worst_ms and queue.visibility_timeout * 1000 <= worst_ms:
            problems.append(
                f"queues[{index}].visibility_timeout ({queue.visibility_timeout:g}s) must exceed "
                f"the slowest node, {worst_node}: up to {worst_ms / 1000:g}s per delivery "
                "(timeout × maxRetries + in-process retry delays)"
            )
    return problems


def require_production_settings(config: Config) -> list[str]:
    """What `run` needs that the defaults cannot give: queues, an account, the secrets."""
    settings, missing = config.settings, []
    if not settings.queues:
        missing.append("queues: configure at least one [[queues]] table (name and id)")
    if not settings.cloudflare.account_id:
        missing.append("cloudflare.account_id: set your Cloudflare account id")
    if config.secrets.api_token is None:
        missing.append(
            "the Cloudflare API token: set FLOWCRAFT_API_TOKEN, cloudflare.api_token_file, or a "
            "systemd credential named api-token"
        )
    if config.secrets.coordinator_secret is None:
        missing.append(
            "the coordinator secret: set FLOWCRAFT_COORDINATOR_SECRET, coordinator.secret_file, "
            "or a systemd credential named coordinator-secret"
        )
    if not config.settings.workflows.blueprints:
        missing.append("workflows.blueprints: name at least one blueprint file or module")
    return missing


@dataclass(frozen=True, slots=True)
class Running:
    """The parts of a running daemon, handed out once it is wired (``task_group.start``)."""

    adapter: Adapter
    supervisor: Supervisor
    store: BatchingRunStore
    health_url: str | None


class Daemon:
    """One daemon: consumes the configured queues until stopped, then drains."""

    def __init__(
        self,
        settings: Settings,
        secrets: Secrets,
        workflows: Workflows,
        *,
        config_path: Path | None = None,
        serve_health: bool = True,
        handle_signals: bool = False,
        on_invoke: InvokeHook | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.workflows = workflows
        self.config_path = config_path
        self.serve_health = serve_health
        self.handle_signals = handle_signals
        self.on_invoke = on_invoke
        self.notifier = notifier or SystemdNotifier()
        self.metrics = Metrics(
            queues=[q.name for q in settings.queues], blueprints=list(workflows.blueprints)
        )
        observability = settings.observability
        self.health = HealthState(
            readiness_window=observability.readiness_window,
            lag_threshold=observability.loop_lag_threshold,
        )
        self.reporter = Reporter(self.metrics, self.health, self.notifier)
        self._supervisor: Supervisor | None = None
        self._engine: Engine | None = None

    def stop(self, *, hurry: bool = False) -> None:
        if self._supervisor is not None:
            self._supervisor.stop(hurry=hurry)

    def _engine_for(self, workflows: Workflows) -> Engine:
        settings = self.settings
        env = ExecutionEnv(
            registry=workflows.registry,
            dependencies=workflows.dependencies,
            on_invoke=self.on_invoke,
            inline_retry_limit_ms=settings.daemon.inline_retry_limit * 1000,
        )
        return Engine(
            blueprints=workflows.blueprints,
            env=env,
            evaluator=settings.daemon.evaluator,
            hooks_base_url=(settings.coordinator.public_url or settings.coordinator.url),
            max_loop_iterations=settings.daemon.max_loop_iterations,
            redact=Redactor(self.secrets.values()).redact_text,
        )

    async def reload(self) -> None:
        """SIGHUP: re-read the config file's log level and the blueprints; keep running work."""
        self.notifier.reloading()
        try:
            if self.config_path is None:
                raise ConfigError("no configuration file to reload")
            config = load_config(self.config_path)
            workflows = workflows_from(config)
        except Exception as exc:
            log.error("reload failed; keeping the running configuration", error=str(exc))
            self.metrics.reloaded(False)
            self.notifier.ready_after_reload()
            return
        set_level(config.settings.observability.log_level)
        assert self._engine is not None
        self._engine.blueprints = workflows.blueprints
        self.metrics.declare_blueprints(workflows.blueprints)
        self.metrics.reloaded(True)
        self.notifier.ready_after_reload()
        log.info("reloaded", blueprints=sorted(workflows.blueprints))

    def _on_ready(self) -> None:
        self.health.mark_started()
        self.notifier.ready()
        log.info("consuming", queues=[q.name for q in self.settings.queues])

    async def _status_loop(self, supervisor: Supervisor) -> None:
        """Beat the liveness heartbeat and publish a ``STATUS=`` line for systemd."""
        jobs_before, then = 0.0, time.monotonic()
        while True:
            await anyio.sleep(1.0)
            self.health.beat()
            now = time.monotonic()
            done = self.reporter.jobs
            rate = (done - jobs_before) / (now - then)
            jobs_before, then = done, now
            state = "draining" if supervisor.stopping else "consuming"
            self.notifier.status(f"{state}: {supervisor.in_flight} in flight, {rate:.0f} jobs/s")

    async def run(self, *, task_status: TaskStatus[Running] = anyio.TASK_STATUS_IGNORED) -> int:
        """Run until stopped (or SIGTERM/SIGINT when ``handle_signals``); the exit code."""
        settings = self.settings
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = settings.daemon.worker_threads
        self.metrics.set_max_in_flight(settings.daemon.concurrency)
        cloudflare = settings.cloudflare
        coordinator = settings.coordinator
        queue_timeout = httpx.Timeout(cloudflare.request_timeout, connect=5.0)
        store_timeout = httpx.Timeout(coordinator.request_timeout, connect=5.0)
        async with (
            httpx.AsyncClient(timeout=queue_timeout) as queue_client,
            HttpRunStore(
                coordinator.url.rstrip("/") + "/v1",
                self.secrets.coordinator_secret,
                timeout=store_timeout,
                observer=self.metrics.api_request,
            ) as http_store,
            BatchingRunStore(
                http_store,
                linger_ms=coordinator.batch_linger * 1000,
                max_entries=coordinator.batch_max_entries,
            ) as store,
        ):
            bindings = [
                QueueBinding(
                    name=queue.name,
                    queue=CloudflareQueue(
                        account_id=cloudflare.account_id,
                        queue_id=queue.id,
                        api_token=self.secrets.api_token or "",
                        base_url=cloudflare.api_base_url,
                        client=queue_client,
                        observer=self.metrics.api_request,
                    ),
                    pull_loops=queue.pull_loops,
                    batch_size=queue.batch_size,
                    visibility_timeout_s=queue.visibility_timeout,
                )
                for queue in settings.queues
            ]
            self._engine = self._engine_for(self.workflows)
            adapter = Adapter(
                self._engine,
                store,
                AdapterSettings(
                    lease_ms=int(min(q.visibility_timeout for q in settings.queues) * 1000),
                    max_deliveries=min(q.max_deliveries for q in settings.queues),
                ),
                observer=self.reporter,
            )
            daemon = settings.daemon
            supervisor = self._supervisor = Supervisor(
                adapter,
                bindings,
                SupervisorSettings(
                    concurrency=daemon.concurrency,
                    drain_timeout_s=daemon.drain_timeout,
                    idle_backoff_min_s=daemon.idle_backoff_min,
                    idle_backoff_max_s=daemon.idle_backoff_max,
                    ack_linger_s=daemon.ack_linger,
                ),
                events=self.reporter,
                on_ready=self._on_ready,
                on_reload=self.reload,
            )
            async with anyio.create_task_group() as services:
                health_url = None
                if self.serve_health:
                    host, _, port = settings.observability.listen.rpartition(":")
                    server = HealthServer(
                        create_health_app(self.health, self.metrics), host=host, port=int(port)
                    )
                    health_url = await services.start(server.run)
                services.start_soon(EventLoopMonitor(self.health, self.metrics).run)
                services.start_soon(self.notifier.run_watchdog, self.health)
                services.start_soon(self._status_loop, supervisor)
                task_status.started(Running(adapter, supervisor, store, health_url))
                await supervisor.run(handle_signals=self.handle_signals)
                services.cancel_scope.cancel()
        self.metrics.shut_down("forced" if supervisor.handed_back else "graceful")
        if supervisor.fatal is not None:
            log.error("stopped: a queue is misconfigured", error=supervisor.fatal.message)
            return EXIT_CONFIG
        return EXIT_OK
