"""Two writers in one run dir, and run names that point outside the output dir: refused before any harm."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from slas.platform.db import open_store
from slas.platform.rundir import OWNER_NAME, RunDirBusy, hold_run_dir, release_run_dir
from slas.testing.cli import error_text, run_cli


def _holder(run_dir, job_id: int) -> subprocess.Popen:
    """Another process holding ``run_dir`` as job ``job_id`` (a live job, as far as the lock can tell)."""
    code = textwrap.dedent(f"""
        import sys, time
        from slas.platform.rundir import hold_run_dir
        hold_run_dir({str(run_dir)!r}, job_id={job_id})
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "runs" / "live"
    proc = _holder(run_dir, job_id=7)
    try:
        with pytest.raises(RunDirBusy) as err:
            hold_run_dir(run_dir)
        message = str(err.value)
        assert "job 7" in message and f"pid {proc.pid}" in message and "slas jobs cancel 7" in message
    finally:
        proc.kill()
        proc.wait()
    hold_run_dir(run_dir, job_id=8)  # the holder died: the lock went with it
    try:
        assert '"job": 8' in (run_dir / OWNER_NAME).read_text()
        hold_run_dir(run_dir)  # this process may take it again
    finally:
        release_run_dir(run_dir)
    assert not (run_dir / OWNER_NAME).exists()


def test_slas_train_on_a_live_jobs_run_dir_moves_nothing_and_records_nothing(tmp_path, tiny_sd_dir, brightness_reward):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "live", "output_dir": str(tmp_path / "runs"), "iterations": 1, "progress": False},
        "model": {"family": "sd", "path": str(tiny_sd_dir)},
        "data": {"prompts": str(prompts)},
        "sample": {"resolution": 32, "num_steps": 3, "group_size": 2, "prompts_per_iter": 1},
        "reward": {"components": [{"name": brightness_reward}]},
    }))
    run_dir = tmp_path / "runs" / "live"
    ckpt = run_dir / "checkpoints" / "iter_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("4")  # the live job's newest checkpoint
    proc = _holder(run_dir, job_id=3)
    try:
        result = run_cli("train", config)
    finally:
        proc.kill()
        proc.wait()
    lines = error_text(result).splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "in use by job 3" in lines[0], error_text(result)
    assert ckpt.is_dir() and not (run_dir / "previous").exists()
    with open_store() as store:
        assert store.list_jobs() == []
