"""Container smoke test: build the image with podman and run it against the emulator.

1. Base image: ``$SMOKE_BASE_IMAGE`` if it names a local image (e.g. the real
   python:3.11-slim-bookworm), else a stand-in built by ``build-standin-base.sh`` (debootstrap,
   cached) and imported under a local name. The same Dockerfile builds on either.
2. Wheelhouse: the runtime dependencies (pinned by constraints.txt) and the build backend,
   downloaded by the host's pip; the image is then built with ``--network none``.
3. Image checks: non-root user, SIGTERM stop signal, exec-form health check, exposed metrics
   port, entrypoint and command, OCI labels, no compilers, no pip in the application's venv.
4. The emulator and the daemon run from the image, read-only, no capabilities, in one network
   namespace with nothing but loopback. Probes (``probe.py``) and one example run (the host's
   ``flowcraft-puller start --wait``) reach them through ``nsenter --net``.
5. ``/livez`` and ``/readyz`` answer, the image's HEALTHCHECK passes, the run completes and the
   daemon's metrics count it, then ``podman stop`` (SIGTERM) ends the daemon with exit status 0
   before the stop timeout.

Needs root (rootful podman, vfs storage, runc), nsenter and, for the stand-in, debootstrap.
State lives in ``$SMOKE_CACHE_DIR`` (default /var/cache/flowcraft-puller-smoke): podman's
storage, the stand-in's tarball and the wheelhouse, so repeated runs are fast.

Exit status: 0 passed, 1 a check failed, 3 podman (or what it needs) is unusable here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from flowcraft_puller.observability.logging import configure_logging

REPO: Final = Path(__file__).resolve().parents[2]
HERE: Final = Path(__file__).resolve().parent
EXIT_FAILED: Final = 1
EXIT_UNUSABLE: Final = 3
IMAGE: Final = "localhost/flowcraft-puller:smoke"
STANDIN: Final = "localhost/flowcraft-puller-smoke/python"
TOKEN: Final = "smoke-api-token"
SECRET: Final = "smoke-coordinator-secret"
QUEUE: Final = "flowcraft-jobs"
EMULATOR_PORT: Final = 8787
METRICS_PORT: Final = 9464
STOP_TIMEOUT_S: Final = 30
BUILD_TOOLS: Final = ("gcc", "cc", "c++", "make", "ld")
CONTEXT_FILES: Final = ("pyproject.toml", "README.md", "constraints.txt")
INPUTS_LABEL: Final = "org.flowcraft-puller.smoke.inputs"

log = structlog.get_logger("smoke")


class SmokeFailure(Exception):
    """A check failed; the message says which and what was seen."""


class PodmanUnusable(Exception):
    """This machine cannot run the smoke test (no root, no podman, a runtime that fails)."""


@dataclass(frozen=True)
class Podman:
    """Rootful podman with vfs storage and runc, keeping its storage under ``cache``."""

    cache: Path

    def command(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.cache / "storage"),
            "--runroot",
            str(self.cache / "run"),
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def ok(self, *args: str, timeout: float = 600) -> str:
        """Run and return stdout; a non-zero exit is a :class:`SmokeFailure`."""
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            raise SmokeFailure(
                f"podman {' '.join(args[:2])} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result.stdout.strip()


def ulimits() -> list[str]:
    """Explicit limits within this process's own: podman's rootful defaults (nofile 1048576,
    nproc 4194304) fail in runtimes without CAP_SYS_RESOURCE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", f"nproc={processes}:{processes}"]


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def preflight(podman: Podman) -> None:
    if os.geteuid() != 0:
        raise PodmanUnusable("the smoke test needs root (rootful podman)")
    for tool in ("podman", "runc", "nsenter"):
        if shutil.which(tool) is None:
            raise PodmanUnusable(f"{tool} is not installed (apt-get install podman runc)")
    result = podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60)
    if result.returncode != 0:
        raise PodmanUnusable(f"podman info failed: {result.stderr.strip()}")


def base_image(podman: Podman) -> str:
    """The image the Dockerfile builds FROM: ``$SMOKE_BASE_IMAGE`` or the stand-in."""
    chosen = os.environ.get("SMOKE_BASE_IMAGE")
    if chosen:
        if podman.run("image", "exists", chosen).returncode != 0:
            raise PodmanUnusable(f"SMOKE_BASE_IMAGE={chosen} is not in podman's local storage")
        log.info("base image", image=chosen)
        return chosen
    script = HERE / "build-standin-base.sh"
    tag = f"3.11-slim-bookworm-{_digest(script)}"
    name = f"{STANDIN}:{tag}"
    if podman.run("image", "exists", name).returncode == 0:
        log.info("base image: stand-in already imported", image=name)
        return name
    tarball = podman.cache / f"standin-{tag}.tar"
    _forget_old_standins(podman, keep=tarball)
    started = time.monotonic()
    built = subprocess.run([str(script), str(tarball)], check=False)
    if built.returncode == EXIT_UNUSABLE:
        raise PodmanUnusable("cannot build the stand-in base image (see above)")
    if built.returncode != 0:
        raise SmokeFailure(f"build-standin-base.sh exited {built.returncode}")
    podman.ok(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["python3"]',
        str(tarball),
        name,
    )
    log.info("base image: stand-in imported", image=name, seconds=round(time.monotonic() - started))
    return name


def _forget_old_standins(podman: Podman, keep: Path) -> None:
    """Stand-ins built by earlier versions of build-standin-base.sh, and their tarballs."""
    old = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", STANDIN).stdout.split()
    if old:
        podman.run("rmi", "--force", *old)
    for tarball in podman.cache.glob("standin-*.tar"):
        if tarball != keep:
            tarball.unlink()


def check_runtime(podman: Podman, image: str) -> None:
    """A trivial container must run, or podman is unusable on this machine."""
    result = podman.run("run", "--rm", "--network", "none", *ulimits(), image, "true", timeout=120)
    if result.returncode != 0:
        raise PodmanUnusable(f"podman cannot run a container here: {result.stderr.strip()}")


def wheelhouse(cache: Path) -> Path:
    """Every wheel the image build needs, for a build without network; downloaded once per
    version of pyproject.toml and constraints.txt."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    directory = cache / f"wheelhouse-{_digest(REPO / 'pyproject.toml', REPO / 'constraints.txt')}"
    complete = directory / ".complete"
    if complete.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(directory)]
    pip += ["--only-binary=:all:", "--python-version", "3.11"]
    for requirements in (
        ["--constraint", str(REPO / "constraints.txt"), *project["project"]["dependencies"]],
        project["build-system"]["requires"],
    ):
        result = subprocess.run(
            [*pip, *requirements], capture_output=True, text=True, check=False, timeout=600
        )
        if result.returncode != 0:
            raise SmokeFailure(f"pip download failed:\n{result.stderr[-3000:]}")
    complete.touch()
    return directory


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _build_inputs(base: str, build_args: Sequence[str]) -> str:
    """A digest of everything the image is built from: the Dockerfile, the files of the build
    context that .dockerignore lets in, the base image and the build arguments."""
    sha = hashlib.sha256("\0".join([base, *build_args]).encode())
    sources = [REPO / name for name in ("Dockerfile", ".dockerignore", *CONTEXT_FILES)]
    sources += sorted(p for p in (REPO / "flowcraft_puller").rglob("*") if _in_context(p))
    for path in sources:
        sha.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def _in_context(path: Path) -> bool:
    return (
        path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    )


def build(podman: Podman, base: str, wheels: Path, version: str) -> float | None:
    """Build the image unless one from the same inputs exists (even a fully cached build takes
    a minute on vfs); the build's duration, or None when it was skipped."""
    build_args = [
        f"PYTHON_IMAGE={base}",
        "WHEELHOUSE=/wheelhouse",
        f"VERSION={version}",
        f"REVISION={_git('rev-parse', 'HEAD')}",
        f"SOURCE_URL={_git('remote', 'get-url', 'origin')}",
    ]
    inputs = _build_inputs(base, build_args)
    existing = podman.run(
        "image", "inspect", "--format", f'{{{{index .Labels "{INPUTS_LABEL}"}}}}', IMAGE
    )
    if existing.returncode == 0 and existing.stdout.strip() == inputs:
        return None
    started = time.monotonic()
    # vfs keeps every cached layer as a full copy: drop what no build used for a day.
    podman.run("image", "prune", "--force", "--filter", "until=24h")
    podman.ok(
        "build",
        "--pull=never",
        "--network",
        "none",
        "--format",
        "docker",
        *ulimits(),
        "--volume",
        f"{wheels}:/wheelhouse:ro",
        *(flag for arg in build_args for flag in ("--build-arg", arg)),
        "--label",
        f"{INPUTS_LABEL}={inputs}",
        "--tag",
        IMAGE,
        "--file",
        str(REPO / "Dockerfile"),
        str(REPO),
        timeout=1800,
    )
    return time.monotonic() - started


def _expect(what: str, seen: object, wanted: object) -> None:
    if seen != wanted:
        raise SmokeFailure(f"{what}: expected {wanted!r}, got {seen!r}")


def check_image(podman: Podman, version: str) -> int:
    """The image's configuration; returns its size in bytes."""
    details: dict[str, Any] = json.loads(podman.ok("image", "inspect", IMAGE))[0]
    config = details["Config"]
    _expect("user", config.get("User"), "10001:10001")
    _expect("stop signal", config.get("StopSignal"), "SIGTERM")
    _expect("entrypoint", config.get("Entrypoint"), ["flowcraft-puller"])
    _expect("command", config.get("Cmd"), ["run", "--config", "/etc/flowcraft-puller/config.toml"])
    _expect("exposed ports", sorted(config.get("ExposedPorts", {})), [f"{METRICS_PORT}/tcp"])
    # podman reports the health check next to Config, docker inside it.
    healthcheck = details.get("Healthcheck") or config.get("Healthcheck") or {}
    _expect("health check form", healthcheck.get("Test", [""])[0], "CMD")
    _expect("PYTHONUNBUFFERED", "PYTHONUNBUFFERED=1" in config.get("Env", []), True)
    labels = config.get("Labels") or {}
    _expect("version label", labels.get("org.opencontainers.image.version"), version)
    _expect("licence label", labels.get("org.opencontainers.image.licenses"), "MIT")
    found = podman.ok(
        "run",
        "--rm",
        "--network",
        "none",
        *ulimits(),
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        f"for t in {' '.join(BUILD_TOOLS)}; do command -v $t; done; "
        "ls /opt/flowcraft-puller/bin/pip* 2>/dev/null; true",
    )
    _expect("build tools and pip in the final image", found.split(), [])
    return int(details["Size"])


@dataclass(frozen=True)
class Smoke:
    """The two running containers and how to reach their network namespace."""

    podman: Podman
    emulator: str
    daemon: str
    netns: str

    def inside(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120
    ) -> str:
        """Run a host command in the containers' network namespace; its stdout."""
        result = subprocess.run(
            ["nsenter", f"--net={self.netns}", "--", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise SmokeFailure(
                f"{argv[0]} {argv[1]} failed ({result.returncode}):\n{result.stderr}"
            )
        return result.stdout.strip()

    def probe(self, *args: str) -> str:
        return self.inside([sys.executable, str(HERE / "probe.py"), *args])


def _hardened_run(secrets: Path | None = None) -> list[str]:
    """``podman run`` flags shared by both containers: read-only root, /tmp as tmpfs only."""
    flags = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", *ulimits()]
    flags += ["--cap-drop", "all", "--security-opt", "no-new-privileges"]
    if secrets is not None:
        flags += ["--volume", f"{secrets}:/run/secrets:ro"]
    return flags


@contextlib.contextmanager
def running(podman: Podman, scratch: Path) -> Iterator[Smoke]:
    """Start the emulator, find the queue id, start the daemon; remove both on the way out.

    The daemon's configuration is config.toml plus the queue table (a list, which environment
    overrides cannot set); its secrets are files in ``scratch``, named by *_FILE variables.
    """
    suffix = f"{os.getpid()}-{int(time.time())}"
    emulator_name, daemon_name = f"fp-smoke-emulator-{suffix}", f"fp-smoke-daemon-{suffix}"
    try:
        podman.ok(
            "run",
            "--detach",
            "--name",
            emulator_name,
            "--network",
            "none",
            *_hardened_run(),
            IMAGE,
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(EMULATOR_PORT),
            "--token",
            TOKEN,
            "--secret",
            SECRET,
        )
        pid = podman.ok("inspect", "--format", "{{.State.Pid}}", emulator_name)
        smoke = Smoke(podman, emulator_name, daemon_name, f"/proc/{pid}/ns/net")
        config = tomllib.loads((HERE / "config.toml").read_text())
        queue_id = smoke.probe(
            "queue-id",
            "--api",
            config["cloudflare"]["api_base_url"],
            "--account",
            config["cloudflare"]["account_id"],
            "--token",
            TOKEN,
            "--queue",
            QUEUE,
        )
        log.info("emulator up", queue=QUEUE, queue_id=queue_id)
        config_path = scratch / "config.toml"
        config_path.write_text(
            (HERE / "config.toml").read_text()
            + f'\n[[queues]]\nname = "{QUEUE}"\nid = "{queue_id}"\n'
        )
        config_path.chmod(0o444)
        podman.ok(
            "run",
            "--detach",
            "--name",
            daemon_name,
            "--network",
            f"container:{emulator_name}",
            *_hardened_run(scratch / "secrets"),
            "--volume",
            f"{REPO / 'examples'}:/srv/flowcraft/examples:ro",
            "--volume",
            f"{config_path}:/etc/flowcraft-puller/config.toml:ro",
            "--env",
            "PYTHONPATH=/srv/flowcraft/examples",
            "--env",
            "FLOWCRAFT_API_TOKEN_FILE=/run/secrets/api-token",
            "--env",
            "FLOWCRAFT_COORDINATOR_SECRET_FILE=/run/secrets/coordinator-secret",
            IMAGE,
        )
        yield smoke
    except SmokeFailure:
        for name in (daemon_name, emulator_name):
            logs = podman.run("logs", "--tail", "40", name)
            sys.stderr.write(f"--- podman logs {name}\n{logs.stdout}{logs.stderr}")
        raise
    finally:
        # One at a time: the daemon shares the emulator's network namespace, and podman refuses
        # to remove a container others depend on.
        for name in (daemon_name, emulator_name):
            removed = podman.run("rm", "--force", "--ignore", "--time", "0", name)
            if removed.returncode != 0:
                log.error("cannot remove container", name=name, error=removed.stderr.strip())


def exercise(smoke: Smoke) -> dict[str, float]:
    """Probes, the health check, one example run, then SIGTERM; timings in seconds."""
    started = time.monotonic()
    metrics_url = f"http://127.0.0.1:{METRICS_PORT}"
    smoke.probe("ready", "--url", metrics_url)
    ready_s = time.monotonic() - started
    log.info("daemon ready", seconds=round(ready_s, 1))
    health = smoke.podman.run("healthcheck", "run", smoke.daemon, timeout=60)
    _expect("podman healthcheck run (the image's HEALTHCHECK)", health.returncode, 0)

    run_started = time.monotonic()
    summary = json.loads(
        smoke.inside(
            [
                str(Path(sys.executable).parent / "flowcraft-puller"),
                "start",
                "order-fulfilment",
                "--config",
                str(REPO / "examples" / "dev.toml"),
                "--context",
                '{"orderId": 42}',
                "--wait",
                "--json",
            ],
            env={
                "FLOWCRAFT__COORDINATOR__URL": f"http://127.0.0.1:{EMULATOR_PORT}",
                "FLOWCRAFT_COORDINATOR_SECRET": SECRET,
            },
        )
    )
    run_s = time.monotonic() - run_started
    _expect("example run status", summary.get("status"), "completed")
    log.info("example run completed", run_id=summary.get("runId"), seconds=round(run_s, 1))
    finished = smoke.probe(
        "metric",
        "--url",
        metrics_url,
        "--name",
        "flowcraft_runs_finished_total",
        "--label",
        "blueprint=order-fulfilment",
        "--label",
        "status=completed",
    )
    _expect("runs the containerised daemon saw complete", float(finished), 1.0)

    stop_started = time.monotonic()
    smoke.podman.ok(
        "stop", "--time", str(STOP_TIMEOUT_S), smoke.daemon, timeout=STOP_TIMEOUT_S + 30
    )
    stop_s = time.monotonic() - stop_started
    state = json.loads(smoke.podman.ok("inspect", "--format", "{{json .State}}", smoke.daemon))
    _expect("daemon exit status after SIGTERM", state.get("ExitCode"), 0)
    if stop_s >= STOP_TIMEOUT_S:
        raise SmokeFailure(f"podman stop took {stop_s:.1f}s: SIGTERM did not end the daemon")
    logs = smoke.podman.run("logs", smoke.daemon)
    output = logs.stdout + logs.stderr
    events = [json.loads(line).get("event") for line in output.splitlines() if line.startswith("{")]
    _expect(
        "the drain's log lines",
        [e for e in events if "drain" in e or e == "stopped"],
        [
            "shutdown requested; draining",
            "stopped",
        ],
    )
    _expect("secrets absent from the logs", TOKEN in output or SECRET in output, False)
    return {"ready": ready_s, "run": run_s, "stop": stop_s}


def smoke_test(cache: Path) -> None:
    podman = Podman(cache)
    preflight(podman)
    cache.mkdir(parents=True, exist_ok=True)
    base = base_image(podman)
    check_runtime(podman, base)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    wheels = wheelhouse(cache)
    build_s = build(podman, base, wheels, version)
    size = check_image(podman, version)
    if build_s is None:
        log.info("image unchanged since the last build", image=IMAGE, size_mb=round(size / 1e6))
    else:
        log.info("image built", image=IMAGE, seconds=round(build_s), size_mb=round(size / 1e6))
    with tempfile.TemporaryDirectory(prefix="fp-smoke-") as directory:
        scratch = Path(directory)
        scratch.chmod(0o755)
        (scratch / "secrets").mkdir(mode=0o755)
        for name, value in (("api-token", TOKEN), ("coordinator-secret", SECRET)):
            (scratch / "secrets" / name).write_text(value + "\n")
            (scratch / "secrets" / name).chmod(0o444)
        with running(podman, scratch) as smoke:
            timings = exercise(smoke)
    log.info("container smoke test passed", **{k: round(v, 1) for k, v in timings.items()})


def main() -> int:
    configure_logging("info", "console", sys.stderr)
    cache = Path(os.environ.get("SMOKE_CACHE_DIR", "/var/cache/flowcraft-puller-smoke"))
    try:
        smoke_test(cache)
    except PodmanUnusable as exc:
        log.error("podman is unusable here; the container smoke test did not run", reason=str(exc))
        return EXIT_UNUSABLE
    except (SmokeFailure, subprocess.TimeoutExpired) as exc:
        log.error("container smoke test failed", reason=str(exc))
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
