"""Jobs: submit a training config to a backend, follow it, cancel it, resume it from its last checkpoint.

The store (``slas.platform.db``) is the single source of truth. A job is launched by a backend; the
training process itself (``slas train CONFIG --job-id ID``, see ``slas.run.run_training``) records that
it started (a new attempt), every checkpoint it publishes and how it ended. A process that vanished
without recording an end state (SIGKILL, OOM killer, power loss) is noticed by ``list``/``show`` and
marked failed, so ``resume`` can pick it up from its newest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Protocol

import yaml

from slas.config import SLASConfig, config_from_dict, load_config
from slas.credentials import redact_text
from slas.errors import SlasError
from slas.platform.db import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobNotFound, Store, StoreError, hostname
from slas.platform.tracking import default_tracking_uri
from slas.rl.checkpoint import latest_checkpoint

JOB_CONFIG = "job.yaml"
JOB_LOG = "job.log"


class JobError(SlasError, RuntimeError):
    """A job command cannot be carried out (unknown id, wrong state, bad backend); one line says why."""


# ---------------------------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (an exited, unreaped child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _process_lost(job: Job) -> bool:
    """An active local job whose process is gone from this host (only this host's pids can be checked)."""
    return (
        job.status in ACTIVE_STATUSES
        and job.backend == "local"
        and job.pid is not None
        and job.host == hostname()
        and not pid_alive(job.pid)
    )


# ---------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Where a job's training process runs. ``launch`` starts ``slas train`` for the job and returns its pid
    (``None`` when no local process runs it). ``writes_run_dir``: whether the run dir is on this machine
    (the job's config file is written there before launch); otherwise the backend carries the config."""

    name: str
    writes_run_dir: bool

    def place(self, cfg: SLASConfig, workdir: Path) -> tuple[str, PurePath]:
        """The job row's workdir and the folder its run dir goes in."""
        ...

    def lost(self, job: Job) -> str | None:
        """Why an active job can no longer record its own end state (its process is gone), else ``None``."""
        ...

    def check(self, config: SLASConfig) -> None:
        """Raise :class:`JobError` (or a preflight error) when this backend cannot run ``config``."""
        ...

    def launch(self, job: Job, config_path: Path | None, *, resume: bool, store_url: str) -> int | None: ...

    def cancel(self, job: Job) -> None:
        """Ask the job's process to stop gracefully (checkpoint, then end as cancelled)."""
        ...


class LocalBackend:
    """A detached ``python -m slas train`` process on this machine, its output in the job's log file."""

    name = "local"
    writes_run_dir = True

    def place(self, cfg: SLASConfig, workdir: Path) -> tuple[str, PurePath]:
        return str(workdir), (workdir / cfg.run_dir.parent).resolve()

    def lost(self, job: Job) -> str | None:
        if _process_lost(job):
            return f"process {job.pid} on {job.host} exited without recording an end state (killed?)"
        return None

    def check(self, config: SLASConfig) -> None:
        from slas.preflight import preflight

        preflight(config)  # fail at submit, not minutes later in a log file

    def launch(self, job: Job, config_path: Path, *, resume: bool, store_url: str) -> int:
        cmd = [sys.executable, "-m", "slas", "train", str(config_path), "--job-id", str(job.id)]
        if resume:
            cmd.append("--resume")
        # the tracking store is resolved here, so a job started from another folder logs to the same one;
        # the environment carries the stores' credentials to the child and is never written to the log
        env = {**os.environ, "SLAS_DATABASE_URL": store_url, "MLFLOW_TRACKING_URI": default_tracking_uri(),
               "PYTHONUNBUFFERED": "1"}
        log_path = Path(job.log_path or Path(job.run_dir) / JOB_LOG)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(redact_text(f"=== {stamp} {'resume' if resume else 'start'}: {' '.join(cmd)}\n").encode())
            log.flush()
            # a new session: the job survives the terminal (and its Ctrl-C) that submitted it
            proc = subprocess.Popen(
                cmd, cwd=job.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc.pid

    def cancel(self, job: Job) -> None:
        if job.pid is None:
            return
        if job.host != hostname():
            raise JobError(f"job {job.id} runs on host {job.host}; cancel it from there")
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGTERM)


def _kubernetes_backend() -> Backend:
    """The cluster backend (``slas.platform.kube``), imported when asked for: it loads the Helm SDK and the
    kubernetes client, which local jobs never need."""
    from slas.platform.kube import KubernetesBackend

    return KubernetesBackend()


BACKENDS: dict[str, Callable[[], Backend]] = {"local": LocalBackend, "kubernetes": _kubernetes_backend}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise JobError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None


# ---------------------------------------------------------------------------------------------- the manager


def _unused_run_dir(store: Store, cfg: SLASConfig, root: PurePath) -> tuple[str, PurePath]:
    """The config's run name, or ``name-2``, ``name-3``... when another job or earlier run already wrote there
    (under ``root``, the folder the backend puts run dirs in)."""
    base = cfg.run.name
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}-{n}"
        run_dir = root / name
        if not store.find_jobs_by_run_dir(run_dir) and not Path(run_dir, "checkpoints").exists():
            return name, run_dir
    raise JobError(f"no free run name for {base!r} under {root}")


class JobManager:
    """Job commands over a store; each reads the store fresh, so several CLIs and trainers can share it."""

    def __init__(self, store: Store, backends: Mapping[str, Backend] | None = None) -> None:
        self.store = store
        self._backends: dict[str, Backend] = dict(backends or {})

    def backend(self, name: str) -> Backend:
        """The named backend, made once per manager (a cluster backend keeps its API connection)."""
        if name not in self._backends:
            self._backends[name] = get_backend(name)
        return self._backends[name]

    # ------------------------------------------------------------------ reading
    def refresh(self, job: Job) -> Job:
        """Mark an active job whose process is gone as failed (it died without recording an end state).

        A cluster that cannot be asked now (no kubeconfig here, API down) leaves the row as it is."""
        if job.status not in ACTIVE_STATUSES:
            return job
        if job.backend == "local":
            reason = LocalBackend().lost(job)
        else:
            try:
                reason = self.backend(job.backend).lost(job)
            except JobError:
                return job
        if reason:
            return self.store.fail_lost_job(job.id, pid=job.pid, error=reason)
        return job

    def get(self, job_id: int) -> Job:
        try:
            return self.refresh(self.store.get_job(job_id))
        except JobNotFound as exc:
            raise JobError(str(exc)) from None

    def list(self, *, status: str | None = None, limit: int | None = None) -> list[Job]:
        if status is not None and status not in (*ACTIVE_STATUSES, *FINAL_STATUSES):
            raise JobError(f"unknown status {status!r}; one of: {', '.join((*ACTIVE_STATUSES, *FINAL_STATUSES))}")
        jobs = [self.refresh(j) for j in self.store.list_jobs(limit=limit)]
        return [j for j in jobs if status is None or j.status == status]

    # ------------------------------------------------------------------ starting
    def _launch(self, job: Job, cfg: SLASConfig, backend: Backend, *, resume: bool) -> Job:
        config_path = None
        if backend.writes_run_dir:
            config_path = Path(job.run_dir) / JOB_CONFIG
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        try:
            pid = backend.launch(job, config_path, resume=resume, store_url=self.store.url)
        except (OSError, JobError) as exc:
            reason = redact_text(str(exc))
            self.store.finish_job(job.id, "failed", error=f"launch failed: {reason}")
            raise JobError(f"job {job.id}: launch failed: {reason}") from None
        return self.store.update_job(job.id, pid=pid, host=hostname() if pid is not None else None)

    def submit(
        self, config: str | Path, overrides: Sequence[str] = (), *, backend: str = "local", workdir: str | Path | None = None
    ) -> Job:
        """Validate a config (and what it names) and launch it as a new job; returns the queued job."""
        be = self.backend(backend)
        cfg = load_config(config, list(overrides))
        be.check(cfg)
        wd, root = be.place(cfg, Path(workdir or Path.cwd()).resolve())
        name, run_dir = _unused_run_dir(self.store, cfg, root)
        cfg.run.name = name
        cfg.run.output_dir = str(run_dir.parent)  # pinned: the job writes where its row says, whatever its env
        job = self.store.create_job(
            name=name, config=cfg.model_dump(mode="json"), run_dir=run_dir, backend=be.name, workdir=wd,
            log_path=run_dir / JOB_LOG if be.writes_run_dir else None,
        )
        return self._launch(job, cfg, be, resume=False)

    def resume(self, job_id: int, overrides: Sequence[str] = ()) -> Job:
        """Start a new attempt of a stopped job from its newest complete checkpoint."""
        job = self.get(job_id)
        if job.status in ACTIVE_STATUSES:
            raise JobError(f"job {job.id} is {job.status} (pid {job.pid}); cancel it or wait for it to end")
        cfg = config_from_dict(job.config, list(overrides))
        be = self.backend(job.backend)
        if be.writes_run_dir:
            run_dir = (Path(job.workdir) / cfg.run_dir).resolve()
            if run_dir != Path(job.run_dir):
                raise JobError(f"job {job.id}: --set may not move the run dir ({job.run_dir})")
            ckpt = latest_checkpoint(run_dir / "checkpoints")
            done = int(ckpt.name.removeprefix("iter_")) if ckpt is not None else None
        else:  # the run dir is on the cluster: the checkpoints its run recorded in the store
            if str(PurePosixPath(cfg.run_dir)) != job.run_dir:
                raise JobError(f"job {job.id}: --set may not move the run dir ({job.run_dir})")
            recorded = self.store.list_checkpoints(job.id)
            done = max(c.iteration for c in recorded) if recorded else None
        if done is None:
            raise JobError(
                f"job {job.id} has no complete checkpoint under {Path(job.run_dir) / 'checkpoints'}; submit its config again"
            )
        if done >= cfg.run.iterations:
            raise JobError(
                f"job {job.id} has done all {cfg.run.iterations} iterations; "
                f"resume it with --set run.iterations=N (N > {done}) to train further"
            )
        be.check(cfg)
        job = self.store.requeue_job(job.id, config=cfg.model_dump(mode="json"))
        return self._launch(job, cfg, be, resume=True)

    # ------------------------------------------------------------------ stopping
    def cancel(self, job_id: int) -> Job:
        """SIGTERM the job's process: it finishes the iteration, checkpoints and ends as cancelled."""
        job = self.get(job_id)
        if job.status in FINAL_STATUSES:
            raise JobError(f"job {job.id} is already {job.status}")
        backend = self.backend(job.backend)
        if job.status == "queued":
            # not training yet (its process may still be importing): end it here, so it never starts
            job = self.store.finish_job(job.id, "cancelled", error="cancelled before it started")
        backend.cancel(job)
        return job

    def wait(self, job_id: int, *, timeout: float | None = None, poll: float = 0.5) -> Job:
        """Block until the job reaches an end state (or ``timeout`` seconds pass); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status in FINAL_STATUSES or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(poll)

    # ------------------------------------------------------------------ logs
    def log_path(self, job_id: int) -> Path:
        job = self.get(job_id)
        if job.log_path is None:
            raise JobError(
                f"job {job.id} has no log file: it was started in the foreground (by `slas train` or `slas demo`) "
                f"and its output went to that terminal; its metrics are in {Path(job.run_dir) / 'metrics.jsonl'}"
            )
        return Path(job.log_path)

    def follow_log(self, job_id: int, *, follow: bool = False, poll: float = 0.5) -> Iterator[str]:
        """The job's log text in chunks; with ``follow``, keep reading until the job ends. A job without a
        local log file whose backend reads logs itself (a cluster: rank 0's pod) is read there."""
        job = self.get(job_id)
        backend = self.backend(job.backend) if job.log_path is None and job.backend != "local" else None
        if backend is not None and hasattr(backend, "follow_log"):
            yield from backend.follow_log(job, follow=follow,
                                          ended=lambda: self.get(job_id).status in FINAL_STATUSES)
            return
        path = self.log_path(job_id)
        if not path.is_file() and not follow:
            raise JobError(f"job {job_id}: log file {path} does not exist (yet)")
        pos = 0
        while True:
            chunk = ""
            if path.is_file():
                with path.open("rb") as fh:
                    fh.seek(pos)
                    data = fh.read()
                pos += len(data)
                chunk = data.decode("utf-8", errors="replace")
            if chunk:
                yield chunk
            if not follow:
                return
            if not chunk and self.get(job_id).status in FINAL_STATUSES:
                # the process writes its last lines before it records its end state: one final read
                if path.is_file() and path.stat().st_size > pos:
                    continue
                return
            if not chunk:
                time.sleep(poll)


__all__ = [
    "BACKENDS",
    "Backend",
    "JobError",
    "JobManager",
    "LocalBackend",
    "StoreError",
    "get_backend",
    "pid_alive",
]
