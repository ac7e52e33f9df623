"""`slas jobs` and job-recorded training: real detached processes, real signals, real checkpoints.

A tiny SD model and a tiny CLIP reward keep each training process to seconds on a CPU; most of a
submitted job's time is Python importing torch and diffusers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from slas.config import load_config
from slas.platform.db import open_store
from slas.platform.jobs import pid_alive
from slas.platform.tracking import default_tracking_uri, read_metrics
from slas.rewards import register
from slas.rewards.registry import unregister
from slas.rl.checkpoint import MARKER, latest_checkpoint, list_checkpoints
from slas.run import EXIT_CANCELLED, run_training
from slas.testing.cli import error_text as err
from slas.testing.cli import run_cli as slas
from slas.testing.jobs import kill_after_checkpoint, submitted_id, trainable_weights, until


def log_of(job) -> str:
    return Path(job.log_path).read_text(errors="replace") if job.log_path else ""


# ---------------------------------------------------------------------------------------------- errors


def test_bad_input_gives_one_line_errors(store_url, workdir, monkeypatch):
    monkeypatch.setenv("SLAS_DATABASE_URL", store_url)
    r = slas("jobs", "list")
    assert r.exit_code == 0 and "no jobs yet" in r.stdout
    for args in (("show", "7"), ("cancel", "7"), ("resume", "7"), ("logs", "7")):
        r = slas("jobs", *args)
        assert r.exit_code == 2 and err(r) == "error: no job with id 7", args
    monkeypatch.delenv("SLAS_KUBE_VALUES", raising=False)
    r = slas("jobs", "submit", "tiny.yaml", "--backend", "kubernetes")  # no release named: one line, nothing queued
    assert r.exit_code == 2 and err(r).startswith("error: the kubernetes backend needs the release's values file: set "
                                                  "SLAS_KUBE_VALUES")
    assert len(err(r).splitlines()) == 1
    r = slas("jobs", "submit", "tiny.yaml", "--backend", "slurm")
    assert r.exit_code == 2 and err(r) == "error: unknown backend 'slurm'; choose one of: local, kubernetes"
    r = slas("jobs", "submit", "missing.yaml")
    assert r.exit_code == 2 and err(r) == "error: config file not found: missing.yaml"
    r = slas("jobs", "submit", "tiny.yaml", "--set", "model.path=/nowhere/model")
    assert r.exit_code == 2 and "model.path" in err(r) and len(err(r).splitlines()) == 1
    r = slas("jobs", "list", "--status", "done")
    assert r.exit_code == 2 and err(r).startswith("error: unknown status 'done'")
    with open_store() as store:
        assert store.list_jobs() == []  # nothing was queued by a rejected submit
    r = slas("jobs", "--help")
    assert r.exit_code == 0 and all(c in r.stdout for c in ("submit", "list", "show", "logs", "cancel", "resume"))


# ---------------------------------------------------------------------------------------------- slas train


def test_slas_train_records_its_run_and_resumes_the_same_job(store_url, workdir, monkeypatch):
    monkeypatch.setenv("SLAS_DATABASE_URL", store_url)
    r = slas("train", "tiny.yaml")
    assert r.exit_code == 0, err(r)
    assert "job 1: done: 2 iterations" in r.stdout
    r = slas("jobs", "list")
    assert r.exit_code == 0
    row = r.stdout.splitlines()[1].split()
    assert row[:4] == ["1", "completed", "local", "tiny"] and row[-2:] == ["2", "2"]

    r = slas("train", "tiny.yaml", "--resume", "--set", "run.iterations=3")
    assert r.exit_code == 0, err(r)
    assert "job 1: done: 3 iterations" in r.stdout
    with open_store() as store:
        assert [j.id for j in store.list_jobs()] == [1]  # the same job, a second attempt
        job = store.get_job(1)
        assert job.status == "completed" and job.config["run"]["iterations"] == 3
        assert job.run_dir == str(workdir / "runs" / "tiny") and job.workdir == str(workdir)
        attempts = store.list_attempts(1)
        assert [(a.number, a.status, a.pid) for a in attempts] == [(1, "completed", os.getpid()), (2, "completed", os.getpid())]
        assert attempts[1].resumed_from == str(workdir / "runs" / "tiny" / "checkpoints" / "iter_000002")
        assert [(c.iteration, Path(c.path).name) for c in store.list_checkpoints(1)] == [
            (1, "iter_000001"), (2, "iter_000002"), (3, "iter_000003")]
    r = slas("jobs", "show", "1")
    assert r.exit_code == 0 and "status:     completed" in r.stdout and "#2 completed" in r.stdout
    assert "from iter_000002" in r.stdout
    r = slas("jobs", "logs", "1")
    assert r.exit_code == 2 and "started in the foreground (by `slas train` or `slas demo`)" in err(r)
    assert str(workdir / "runs" / "tiny" / "metrics.jsonl") in err(r) and len(err(r).splitlines()) == 1
    r = slas("jobs", "resume", "1")
    assert r.exit_code == 2 and "has done all 3 iterations" in err(r)
    # a second fresh run of the same config is a new job
    assert slas("train", "tiny.yaml", "--set", "run.name=again").exit_code == 0
    assert slas("jobs", "list", "--status", "completed").stdout.count("completed") == 2


@pytest.fixture
def signalling_reward():
    """A clip-free reward that SIGTERMs its own process on its second call (a `jobs cancel` mid-run)."""
    calls = []

    @register("test_sigterm_on_second_call")
    def factory():
        def reward(images, prompts, **_):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return {"brightness": images.mean(dim=(1, 2, 3))}

        return reward

    @register("test_broken")
    def broken():
        raise RuntimeError("reward weights are corrupt\nsecond line")

    yield calls
    unregister("test_sigterm_on_second_call")
    unregister("test_broken")


def test_sigterm_finishes_the_iteration_checkpoints_and_cancels(workdir, signalling_reward):
    cfg = load_config("tiny.yaml", ["run.iterations=50", "run.checkpoint_every=100",
                                    'reward.components=[{"name": "test_sigterm_on_second_call"}]'])
    previous = signal.getsignal(signal.SIGTERM)
    outcome = run_training(cfg)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is only set while training
    assert outcome.status == "cancelled" and outcome.trainer.iteration == 2 and outcome.trainer.stopped
    ckpt = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert ckpt.name == "iter_000002"  # not on the checkpoint_every schedule: written because of the stop
    assert [r["step"] for r in read_metrics(cfg.run_dir / "metrics.jsonl")] == [1, 2]
    with open_store() as store:
        job = store.get_job(outcome.job_id)
        assert job.status == "cancelled" and job.error == "cancelled at iteration 2 (checkpoint written)"
        assert [(a.status, a.exit_code) for a in store.list_attempts(job.id)] == [("cancelled", EXIT_CANCELLED)]
        assert [c.iteration for c in store.list_checkpoints(job.id)] == [2]

    # a run that breaks is recorded as failed, with the error's first line, and the error still raises
    bad = load_config("tiny.yaml", ["run.name=broken", 'reward.components=[{"name": "test_broken"}]'])
    with pytest.raises(RuntimeError, match="corrupt"):
        run_training(bad)
    with open_store() as store:
        job = store.find_jobs_by_run_dir(bad.run_dir.resolve())[0]
        assert job.status == "failed" and job.error == "RuntimeError: reward weights are corrupt"


# ---------------------------------------------------------------------------------------------- submitted jobs


@pytest.mark.slow
def test_submit_logs_and_cancel_a_detached_job(store_url, workdir, monkeypatch):
    monkeypatch.setenv("SLAS_DATABASE_URL", store_url)
    jid = submitted_id(slas("jobs", "submit", "tiny.yaml", "--set", "run.iterations=500", "--set", "run.checkpoint_every=1000"))
    store = open_store()
    try:
        job = store.get_job(jid)
        run_dir = Path(job.run_dir)
        assert job.status == "queued" and job.pid and pid_alive(job.pid) and job.log_path == str(run_dir / "job.log")
        until(lambda: (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir / "metrics.jsonl"),
              what="the first iteration")
        assert store.get_job(jid).status == "running"
        # the job tracks to the MLflow store the submitter resolved, wherever the job runs
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{job.pid}/environ").read_text().split("\0") if "=" in kv)
        assert environ["MLFLOW_TRACKING_URI"] == default_tracking_uri()
        r = slas("jobs", "list")
        assert re.search(rf"^{jid}\s+running\s+local\s+tiny\s", r.stdout, re.M), r.stdout
        r = slas("jobs", "cancel", str(jid), "--wait")
        assert r.exit_code == 0, err(r)
        assert f"sent SIGTERM to job {jid}" in r.stdout and f"job {jid} cancelled" in r.stdout
        job = store.get_job(jid)
        stopped_at = int(re.search(r"cancelled at iteration (\d+)", job.error).group(1))
        assert 1 <= stopped_at < 500
        assert latest_checkpoint(run_dir / "checkpoints").name == f"iter_{stopped_at:06d}"
        assert [c.iteration for c in store.list_checkpoints(jid)] == [stopped_at]
        assert [(a.status, a.exit_code) for a in store.list_attempts(jid)] == [("cancelled", EXIT_CANCELLED)]
        run = MlflowClient(default_tracking_uri()).get_run(job.mlflow_run_id)
        assert run.info.status == "KILLED" and run.data.params["run.name"] == "tiny"
        r = slas("jobs", "logs", str(jid), "-f")  # follows until the end, which has already come
        assert r.exit_code == 0 and "SIGTERM: stopping after this iteration" in r.stdout
        assert f"job {jid}: cancelled at iteration {stopped_at}" in r.stdout
        assert slas("jobs", "cancel", str(jid)).exit_code == 2

        # the same config again gets a run dir of its own; cancelled while still starting, it never trains
        jid2 = submitted_id(slas("jobs", "submit", "tiny.yaml"))
        job2 = store.get_job(jid2)
        assert job2.name == "tiny-2" and job2.run_dir == str(workdir / "runs" / "tiny-2")
        r = slas("jobs", "cancel", str(jid2))
        assert r.exit_code == 0 and "cancelled before it started" in r.stdout
        until(lambda: not pid_alive(job2.pid), what="the cancelled process to exit")
        job2 = store.get_job(jid2)
        assert job2.status == "cancelled" and store.list_attempts(jid2) == []
        assert not (Path(job2.run_dir) / "checkpoints").exists()
    finally:
        for j in store.list_jobs():
            if j.pid and pid_alive(j.pid):
                os.killpg(j.pid, signal.SIGKILL)
        store.close()


@pytest.mark.slow
def test_sigkilled_job_resumes_to_the_same_weights_as_an_uninterrupted_run(workdir):
    """Kill -9 after a checkpoint, resume: the final trainable weights equal those of a run left alone."""
    n = 8
    sets = ["--set", f"run.iterations={n}", "--set", "run.checkpoint_every=1"]
    ref = submitted_id(slas("jobs", "submit", "tiny.yaml", *sets, "--set", "run.name=left_alone"))
    victim = submitted_id(slas("jobs", "submit", "tiny.yaml", *sets, "--set", "run.name=killed"))
    store = open_store()
    try:
        killed_at = kill_after_checkpoint(store, victim, 3)
        ckpts = killed_at.parent
        assert 3 <= int(killed_at.name[5:]) < n, "the job finished before it could be killed"

        # `list` notices the process is gone without an end state
        r = slas("jobs", "list")
        assert re.search(rf"^{victim}\s+failed\s", r.stdout, re.M), r.stdout
        assert "exited without recording an end state" in store.get_job(victim).error

        # a checkpoint being written when the process died is never taken as the latest
        torn = ckpts / "iter_000099"
        shutil.copytree(killed_at, torn)
        (torn / MARKER).unlink()
        (ckpts / ".tmp-iter_000100-x").mkdir()
        assert latest_checkpoint(ckpts) == killed_at

        r = slas("jobs", "resume", str(victim))
        assert r.exit_code == 0, err(r)
        vjob = until(lambda: (j := store.get_job(victim)).status in ("completed", "failed") and j, poll=0.5, what="the resumed job")
        assert vjob.status == "completed", log_of(vjob)[-3000:]
        rjob = until(lambda: (j := store.get_job(ref)).status in ("completed", "failed") and j, poll=0.5, what="the reference job")
        assert rjob.status == "completed", log_of(rjob)[-3000:]
    finally:
        for j in store.list_jobs():
            if j.pid and pid_alive(j.pid):
                os.killpg(j.pid, signal.SIGKILL)
        store.close()

    with open_store() as store:
        attempts = store.list_attempts(victim)
        assert [a.status for a in attempts] == ["failed", "completed"]
        assert attempts[1].resumed_from == str(killed_at)
        assert [c.iteration for c in store.list_checkpoints(victim)] == list(range(1, n + 1))

    final_ref = Path(rjob.run_dir) / "checkpoints" / f"iter_{n:06d}"
    final_vic = Path(vjob.run_dir) / "checkpoints" / f"iter_{n:06d}"
    a, b = trainable_weights(final_ref), trainable_weights(final_vic)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    assert not all(torch.equal(x, y) for x, y in zip(a.values(), trainable_weights(Path(rjob.run_dir) / "checkpoints"
                                                                                    / "iter_000001").values(), strict=True))
    # the metrics continue with no duplicated or missing step, and match the uninterrupted run's
    rec_ref = read_metrics(Path(rjob.run_dir) / "metrics.jsonl")
    rec_vic = read_metrics(Path(vjob.run_dir) / "metrics.jsonl")
    assert [r["step"] for r in rec_vic] == list(range(1, n + 1)) == [r["step"] for r in rec_ref]
    for x, y in zip(rec_ref, rec_vic, strict=True):
        assert y["reward/total/mean"] == pytest.approx(x["reward/total/mean"], abs=1e-6)


_TORN_WRITER = """
import sys, time
from pathlib import Path
from slas.rl.checkpoint import save_checkpoint
root = Path(sys.argv[1])
save_checkpoint(root, 1, lambda d: (d / "weights.bin").write_bytes(b"1" * 1000))
def slow(d):
    (d / "weights.bin").write_bytes(b"2" * 10)
    print("writing", flush=True)
    time.sleep(60)
save_checkpoint(root, 2, slow)
"""


def test_checkpoint_killed_while_being_written_is_never_latest(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _TORN_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert any(name.startswith(".tmp-iter_000002") for name in leftovers)  # the torn write is still on disk
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001"]
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_000001"
    assert (latest_checkpoint(tmp_path) / "weights.bin").read_bytes() == b"1" * 1000
