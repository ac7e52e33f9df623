"""`slas jobs ... --backend kubernetes` against a fake API server on loopback (slas.testing.fake_kube): a real HTTP
server answering the calls the backend makes, reached through a real kubeconfig. The created manifests are
the chart's (rendered in the release, validated strictly), and the job store row tracks the run as it would a
local one; the trainer's own store writes are played by the test."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from slas.config import config_from_dict
from slas.platform.chart import KUBE_VERSION
from slas.platform.db import open_store
from slas.testing.cli import error_text as err
from slas.testing.cli import run_cli as slas
from slas.testing.fake_kube import fake_kube_server

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "flux_dev_hps_clip.yaml"
NS, RELEASE = "ml", "exp"
JOB = "exp-slas-job-1"  # the chart's name for job 1 in release exp


def release_values(**training) -> dict:
    """The values file the release was installed with (`helm install exp helm/slas -f values.yaml`)."""
    return {
        "image": {"repository": "registry.example.org/slas", "tag": "0.1.0"},
        "training": {"enabled": False, "nodes": 2, "gpusPerNode": 8, "priorityClassName": "research", **training},
        "store": {"databaseUrlSecret": {"name": "slas-db"}},
        "mlflow": {"backendStoreSecret": {"name": "mlflow-db"}},
        "ui": {"authSecret": {"name": "slas-ui"}},
    }


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The fake cluster, a kubeconfig pointing at it, the release's values file and a job store."""
    monkeypatch.chdir(tmp_path)
    with fake_kube_server() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(release_values()))
        monkeypatch.setenv("SLAS_KUBE_VALUES", str(values))
        monkeypatch.setenv("SLAS_KUBE_NAMESPACE", NS)
        monkeypatch.setenv("SLAS_KUBE_RELEASE", RELEASE)
        monkeypatch.setenv("SLAS_DATABASE_URL", f"sqlite:///{tmp_path / 'slas.db'}")
        monkeypatch.delenv("SLAS_KUBE_CONTEXT", raising=False)
        yield fake


def submit(*extra: str) -> int:
    r = slas("jobs", "submit", str(CONFIG), "--backend", "kubernetes", *extra)
    assert r.exit_code == 0, err(r) + r.stdout
    return int(re.search(r"submitted job (\d+)", r.stdout).group(1))


def test_submit_creates_the_charts_training_objects(kube) -> None:
    job_id = submit("--set", "model.finetune=lora")
    assert job_id == 1
    # every call authenticated with the kubeconfig's token: the real client configuration path was used
    assert kube.requests and {r.authorization for r in kube.requests} == {"Bearer fake-token"}
    (job,) = kube.created("Job")
    (cm,) = kube.created("ConfigMap")
    (svc,) = kube.created("Service")
    for obj in (job, cm, svc):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == NS
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slas"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # created suspended, its ConfigMap and Service owned by it, then released with a merge patch
    assert job["metadata"]["name"] == JOB and job["spec"]["suspend"] is True
    uid = kube.get("jobs", NS, JOB)["metadata"]["uid"]
    for obj in (cm, svc):
        assert obj["metadata"]["ownerReferences"][0] == {
            "apiVersion": "batch/v1", "kind": "Job", "name": JOB, "uid": uid, "controller": False,
            "blockOwnerDeletion": False}
    (patch,) = kube.calls("PATCH", "jobs")
    assert patch.content_type == "application/merge-patch+json" and patch.body == {"spec": {"suspend": False}}
    assert kube.get("jobs", NS, JOB)["spec"]["suspend"] is False
    # the run: 2 x 8 from the release's values, this job's id, rank 0 behind the job's own headless Service
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert job["spec"]["completions"] == 2 and job["spec"]["completionMode"] == "Indexed"
    assert {"--num_machines=2", "--num_processes=16", "--machine_rank=$(JOB_COMPLETION_INDEX)",
            f"--main_process_ip={JOB}-0.{JOB}", "--job-id=1"} <= set(args)
    assert "--resume" not in args
    assert svc["metadata"]["name"] == pod["subdomain"] == JOB and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": JOB}
    assert pod["containers"][0]["image"] == "registry.example.org/slas:0.1.0"
    assert pod["priorityClassName"] == "research"
    assert job["metadata"]["labels"]["slas.dev/job-id"] == "1"
    # the config travels in the ConfigMap, resolved and pinned to the cluster's run dir
    cfg = config_from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.model.finetune == "lora" and cfg.run.name == "flux_dev_hps_clip"
    assert cfg.run.output_dir == "/data/slas/runs"
    # only the training objects: the release's MLflow, volumes and UI are helm's, not re-created per job
    assert {r.path.rsplit("/", 1)[-1] for r in kube.calls("POST", "")} == {"jobs", "configmaps", "services"}
    # the store row tracks it like a local job
    with open_store() as store:
        row = store.get_job(job_id)
    assert (row.backend, row.status, row.workdir) == ("kubernetes", "queued", "kubernetes:ml/exp")
    assert row.run_dir == "/data/slas/runs/flux_dev_hps_clip" and row.log_path is None and row.pid is None
    assert not Path("/data/slas/runs/flux_dev_hps_clip").exists()  # nothing written on this machine
    # a second submit of the same config gets its own run dir and its own Job
    assert submit() == 2
    assert kube.get("jobs", NS, "exp-slas-job-2") is not None
    with open_store() as store:
        assert store.get_job(2).run_dir == "/data/slas/runs/flux_dev_hps_clip-2"


def test_list_show_logs_cancel_resume_map_to_the_job_and_its_pods(kube) -> None:
    job_id = submit()
    with open_store() as store:  # the trainer in rank 0's pod starts its attempt
        store.begin_attempt(job_id, pid=41, host=f"{JOB}-0")
    r = slas("jobs", "list")
    assert r.exit_code == 0 and re.search(r"^1\s+running\s+kubernetes\s+flux_dev_hps_clip", r.stdout, re.M), r.stdout

    # logs: rank 0's newest pod, followed
    r = slas("jobs", "logs", str(job_id))
    assert r.exit_code == 2 and "no started pod" in err(r) and len(err(r).splitlines()) == 1
    labels = {"batch.kubernetes.io/job-name": JOB, "batch.kubernetes.io/job-completion-index": "0"}
    kube.add_pod(NS, f"{JOB}-0-abcde", labels, log="iteration 1 reward 0.31\niteration 2 reward 0.35\n")
    kube.add_pod(NS, f"{JOB}-1-fghij", {**labels, "batch.kubernetes.io/job-completion-index": "1"}, log="rank 8\n")
    r = slas("jobs", "logs", str(job_id), "-f")
    assert r.exit_code == 0 and r.stdout == "iteration 1 reward 0.31\niteration 2 reward 0.35\n"
    (log_call,) = kube.calls("GET", "pods/")
    assert log_call.path == f"/api/v1/namespaces/{NS}/pods/{JOB}-0-abcde/log"
    # the client spells it True; the API server's strconv.ParseBool takes that
    assert log_call.query["follow"] == ["True"] and log_call.query["container"] == ["train"]

    # cancel: the Job is suspended (its pods get SIGTERM), the run records itself cancelled
    r = slas("jobs", "cancel", str(job_id))
    assert r.exit_code == 0 and "suspended job 1's kubernetes Job" in r.stdout
    assert kube.get("jobs", NS, JOB)["spec"]["suspend"] is True
    with open_store() as store:
        store.add_checkpoint(job_id, 25, "/data/slas/runs/flux_dev_hps_clip/checkpoints/iter_25")
        store.finish_job(job_id, "cancelled", error="cancelled (SIGTERM)")
    r = slas("jobs", "show", str(job_id))
    assert r.exit_code == 0 and re.search(r"^status:\s+cancelled", r.stdout, re.M)
    assert "workdir:    kubernetes:ml/exp" in r.stdout

    # resume: the previous attempt's objects are replaced by a new Job that starts with --resume
    first_uid = kube.get("jobs", NS, JOB)["metadata"]["uid"]
    r = slas("jobs", "resume", str(job_id))
    assert r.exit_code == 0, err(r)
    assert "resumed job 1 (flux_dev_hps_clip) on kubernetes, kubernetes:ml/exp" in r.stdout
    deleted = {r.path.rsplit("/", 2)[-2] for r in kube.requests if r.method == "DELETE"}
    assert deleted == {"jobs", "configmaps", "services"}
    jobs = kube.created("Job")
    assert len(jobs) == 2 and "--resume" in jobs[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    new_uid = kube.get("jobs", NS, JOB)["metadata"]["uid"]
    assert new_uid != first_uid
    assert kube.get("configmaps", NS, f"{JOB}-config")["metadata"]["ownerReferences"][0]["uid"] == new_uid
    with open_store() as store:
        assert store.get_job(job_id).status == "queued"


def test_a_job_that_ends_without_recording_is_marked_failed(kube) -> None:
    job_id = submit()
    with open_store() as store:
        store.begin_attempt(job_id, pid=41, host=f"{JOB}-0")
    # pods still waiting for GPUs / running: nothing to mark
    kube.set_job_status(NS, JOB, active=2)
    assert re.search(r"^status:\s+running", slas("jobs", "show", str(job_id)).stdout, re.M)
    # a rank was OOM-killed and the Job failed; the run never recorded an end
    kube.set_job_status(NS, JOB, failed=1, conditions=[
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])
    r = slas("jobs", "show", str(job_id))
    assert re.search(r"^status:\s+failed", r.stdout, re.M)
    assert f"Job {NS}/{JOB} failed: BackoffLimitExceeded (Job has reached the specified backoff limit)" in r.stdout
    # cancelled: suspended, its pod still terminating (checkpointing in its grace period) is not lost...
    job3 = submit()
    with open_store() as store:
        store.begin_attempt(job3, pid=9, host="y")
    assert slas("jobs", "cancel", str(job3)).exit_code == 0
    name3 = f"exp-slas-job-{job3}"
    kube.add_pod(NS, f"{name3}-0-zzzzz", {"batch.kubernetes.io/job-name": name3,
                                          "batch.kubernetes.io/job-completion-index": "0"})
    kube.set_job_status(NS, name3, active=0, terminating=1)
    assert re.search(r"^status:\s+running", slas("jobs", "show", str(job3)).stdout, re.M)
    # ...but once its pods are gone without a record, it is
    del kube.objects[("pods", NS, f"{name3}-0-zzzzz")]
    r = slas("jobs", "show", str(job3))
    assert re.search(r"^status:\s+failed", r.stdout, re.M) and "was suspended and its pods are gone" in r.stdout
    # a Job deleted behind the store's back
    job2 = submit()
    with open_store() as store:
        store.begin_attempt(job2, pid=7, host="x")
    del kube.objects[("jobs", NS, f"exp-slas-job-{job2}")]
    r = slas("jobs", "list", "--json")
    newest = r.stdout.splitlines()[0]
    assert f'"id": {job2}' in newest and '"status": "failed"' in newest and "no longer exists" in newest


def test_refusals_are_one_line_and_queue_nothing(kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = release_values()
    bad["store"] = {"databaseUrlSecret": {"name": ""}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setenv("SLAS_KUBE_VALUES", str(tmp_path / "bad.yaml"))
    r = slas("jobs", "submit", str(CONFIG), "--backend", "kubernetes")
    assert r.exit_code == 2 and len(err(r).splitlines()) == 1
    assert "store.databaseUrlSecret.name is required" in err(r)
    monkeypatch.setenv("SLAS_KUBE_VALUES", str(tmp_path / "missing.yaml"))
    r = slas("jobs", "submit", str(CONFIG), "--backend", "kubernetes")
    assert r.exit_code == 2 and "missing.yaml" in err(r) and len(err(r).splitlines()) == 1
    with open_store() as store:
        assert store.list_jobs() == []
    assert kube.requests == []  # refused before the cluster was asked anything
    # the API refuses: the job is recorded as failed at launch, with the API's reason
    monkeypatch.setenv("SLAS_KUBE_VALUES", str(tmp_path / "values.yaml"))
    kube.fail[("POST", "jobs")] = (403, 'jobs.batch is forbidden: User "tester" cannot create resource "jobs"')
    r = slas("jobs", "submit", str(CONFIG), "--backend", "kubernetes")
    assert r.exit_code == 2 and len(err(r).splitlines()) == 1
    assert "launch failed: kubernetes: creating Job ml/exp-slas-job-1 failed (403)" in err(r) and "forbidden" in err(r)
    with open_store() as store:
        (row,) = store.list_jobs()
    assert row.status == "failed" and "forbidden" in row.error
