"""Waiting on detached ``slas jobs`` in tests: polling, the submitted id, a checkpoint's trained weights."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from slas.testing.cli import error_text


def until(predicate, timeout: float = 180.0, poll: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def submitted_id(result) -> int:
    """The job id ``slas jobs submit`` printed (the submission must have succeeded)."""
    assert result.exit_code == 0, error_text(result) + result.stdout
    return int(re.search(r"submitted job (\d+)", result.stdout).group(1))


def trainable_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor under ``<checkpoint>/trainable`` keyed by file and name (full or LoRA weights)."""
    out = {}
    for f in sorted((ckpt / "trainable").rglob("*.safetensors")):
        out.update({f"{f.relative_to(ckpt)}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no weights under {ckpt}"
    return out


def kill_after_checkpoint(store, job_id: int, iteration: int) -> Path:
    """SIGKILL job ``job_id``'s process group as soon as its checkpoint ``iteration`` is complete, wait until the
    process is gone, and return the newest complete checkpoint it left."""
    from slas.platform.jobs import pid_alive
    from slas.rl.checkpoint import MARKER, latest_checkpoint

    job = store.get_job(job_id)
    ckpts = Path(job.run_dir) / "checkpoints"
    until(lambda: (ckpts / f"iter_{iteration:06d}" / MARKER).is_file(), what=f"job {job_id}'s checkpoint {iteration}")
    os.killpg(job.pid, signal.SIGKILL)
    until(lambda: not pid_alive(job.pid), what="the killed process to go")
    return latest_checkpoint(ckpts)


def wait_finished(store, job_id: int):
    """The job's row once it is ``completed`` or ``failed``."""
    return until(lambda: (j := store.get_job(job_id)).status in ("completed", "failed") and j, poll=0.5,
                 what=f"job {job_id} to finish")
