"""``slas jobs``: submit, list, show, logs, cancel and resume training jobs (the job store's command line).

What a job recorded (its error, its attempts' errors) may quote a store or tracking URL: it is shown with
any password masked (:func:`slas.credentials.redact_text`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slas.cli.common import SetOpt, SlasTyper
from slas.credentials import redact_text

if TYPE_CHECKING:
    from slas.platform.jobs import JobManager

app = SlasTyper(
    help="Training jobs: submit, list, show, logs, cancel, resume. Store: $SLAS_DATABASE_URL or $SLAS_HOME/slas.db.",
)

JobId = Annotated[int, typer.Argument(metavar="JOB_ID", help="job id (see `slas jobs list`)")]


@contextlib.contextmanager
def _manager() -> Iterator[JobManager]:
    """A job manager on the default store, closed afterwards (its errors are slas errors: one line each)."""
    from slas.platform.db import open_store
    from slas.platform.jobs import JobManager

    store = open_store()
    try:
        yield JobManager(store)
    finally:
        store.close()


def _masked(text: str | None) -> str | None:
    """A recorded message as it may be shown: credentials masked."""
    return redact_text(text) if text is not None else None


def _when(ts: datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def _elapsed(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = int(((end or datetime.now(timezone.utc)) - start).total_seconds())
    h, rest = divmod(max(seconds, 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


@app.command("submit")
def submit(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML run config (see configs/)")],
    set_: SetOpt = None,
    backend: Annotated[str, typer.Option("--backend", help="where to run it: local (a detached process) or kubernetes "
                                                       "(the helm/slas release named by $SLAS_KUBE_VALUES, "
                                                       "$SLAS_KUBE_RELEASE, $SLAS_KUBE_NAMESPACE)")] = "local",
) -> None:
    """Validate a config and start it as a background job; prints the job id."""
    with _manager() as jm:
        job = jm.submit(config, set_ or [], backend=backend)
        if job.pid is not None:
            typer.echo(f"submitted job {job.id} ({job.name}) on {job.backend}, pid {job.pid}")
        else:
            typer.echo(f"submitted job {job.id} ({job.name}) on {job.backend}: {job.workdir}")
        typer.echo(f"  run dir: {job.run_dir}")
        typer.echo(f"  log:     {job.log_path or 'rank 0'}   (slas jobs logs {job.id} -f)")


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option("--status", help="only jobs with this status")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="newest N jobs")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per job")] = False,
) -> None:
    """Every recorded run, newest first: submitted jobs and direct `slas train` runs."""
    with _manager() as jm:
        jobs = jm.list(status=status, limit=limit)
        latest = jm.store.latest_checkpoints(j.id for j in jobs)
        if as_json:
            for j in jobs:
                typer.echo(json.dumps({
                    "id": j.id, "name": j.name, "status": j.status, "backend": j.backend,
                    "created_at": j.created_at.isoformat(), "started_at": j.started_at and j.started_at.isoformat(),
                    "finished_at": j.finished_at and j.finished_at.isoformat(), "checkpoint": latest.get(j.id),
                    "run_dir": j.run_dir, "error": _masked(j.error), "mlflow_run_id": j.mlflow_run_id,
                }))
            return
        if not jobs:
            typer.echo("no jobs yet: `slas jobs submit CONFIG` or `slas train CONFIG` records one")
            return
        rows = [("ID", "STATUS", "BACKEND", "NAME", "CREATED", "ELAPSED", "CKPT", "ITERS")]
        for j in jobs:
            iters = j.config.get("run", {}).get("iterations", "-")
            rows.append((str(j.id), j.status, j.backend, j.name, _when(j.created_at),
                         _elapsed(j.started_at, j.finished_at), str(latest.get(j.id, "-")), str(iters)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@app.command("show")
def show(job_id: JobId) -> None:
    """A job's details: status, paths, attempts and checkpoints."""
    with _manager() as jm:
        j = jm.get(job_id)
        for key, value in [
            ("id", j.id), ("name", j.name), ("status", j.status), ("backend", j.backend),
            ("message", _masked(j.error) or "-"), ("created", _when(j.created_at)), ("started", _when(j.started_at)),
            ("finished", _when(j.finished_at)), ("elapsed", _elapsed(j.started_at, j.finished_at)),
            ("host", j.host or "-"), ("pid", j.pid if j.pid is not None else "-"), ("workdir", j.workdir),
            ("run dir", j.run_dir), ("log", j.log_path or "-"), ("mlflow run", j.mlflow_run_id or "-"),
        ]:
            typer.echo(f"{key + ':':<12}{value}")
        attempts = jm.store.list_attempts(j.id)
        typer.echo(f"attempts:   {len(attempts)}")
        for a in attempts:
            start = f" from {Path(a.resumed_from).name}" if a.resumed_from else ""
            end = f" exit {a.exit_code}" if a.exit_code is not None else ""
            err = f" ({_masked(a.error)})" if a.error else ""
            typer.echo(f"  #{a.number} {a.status:<9} pid {a.pid} on {a.host}, {_when(a.started_at)}"
                       f" .. {_when(a.finished_at)}{start}{end}{err}")
        ckpts = jm.store.list_checkpoints(j.id)
        typer.echo(f"checkpoints: {len(ckpts)}")
        for c in ckpts[-5:]:
            typer.echo(f"  iter {c.iteration:>6}  {_when(c.created_at)}  {c.path}")


@app.command("logs")
def logs(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
) -> None:
    """Print a job's log file (stdout and stderr of all its attempts)."""
    with _manager() as jm:
        for chunk in jm.follow_log(job_id, follow=follow):
            typer.echo(chunk, nl=False)


@app.command("cancel")
def cancel(
    job_id: JobId,
    wait: Annotated[bool, typer.Option("--wait", help="wait until the job has stopped")] = False,
) -> None:
    """Stop a job gracefully: SIGTERM, the current iteration finishes, a checkpoint is written."""
    with _manager() as jm:
        job = jm.cancel(job_id)
        if job.status == "cancelled":
            typer.echo(f"job {job.id} cancelled before it started")
            return
        if job.backend == "local":
            typer.echo(f"sent SIGTERM to job {job.id} (pid {job.pid}): it stops after this iteration with a checkpoint")
        else:
            typer.echo(f"suspended job {job.id}'s {job.backend} Job: its pods get SIGTERM and it stops after this "
                       "iteration with a checkpoint")
        if wait:
            job = jm.wait(job_id)
            typer.echo(f"job {job.id} {job.status}")


@app.command("resume")
def resume(job_id: JobId, set_: SetOpt = None) -> None:
    """Restart a stopped job from its newest complete checkpoint, as a new attempt of the same job."""
    with _manager() as jm:
        job = jm.resume(job_id, set_ or [])
        where = f"pid {job.pid}; log: {job.log_path}" if job.pid is not None else f"{job.workdir}; log: rank 0"
        typer.echo(f"resumed job {job.id} ({job.name}) on {job.backend}, {where}")
