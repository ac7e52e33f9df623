"""The kubernetes job backend: ``slas jobs submit --backend kubernetes`` runs the job as the Helm chart's training
Job, in the release that ``helm install`` deployed.

The chart is the one source of truth: the backend renders ``helm/slas`` (:mod:`slas.platform.chart`) with the
release's own values file (``$SLAS_KUBE_VALUES``, the file given to ``helm install -f``) plus the job's config,
id and resume flag, under the release's name, so every reference (MLflow's Service, the volumes, PostgreSQL,
the store's Secret) resolves exactly as in the installed release. From that render it takes only the training
objects (the Indexed Job ``<release>-job-<id>``, its headless Service and its config ConfigMap) and creates them
with the ``kubernetes`` client: the Job suspended first, the other two owned by it (garbage-collected with it),
then the Job released.

The job store row is written by the trainer itself, in the pods (``slas train --job-id``, the store URL from the
release's Secret), as for a local job. This module maps the other commands onto the Job and its pods: ``cancel``
suspends the Job (its pods get SIGTERM: the run checkpoints and records itself cancelled), ``logs`` reads rank
0's pod, ``resume`` replaces the Job's objects with a new attempt that starts with ``--resume``, and a Job that
ended, vanished or was emptied without the trainer recording an end state marks the row failed.

Where a job runs is recorded in the row's ``workdir`` as ``kubernetes:<namespace>/<release>``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from slas.errors import one_line
from slas.platform.chart import ChartError, load_values_file, render_objects

if TYPE_CHECKING:
    from slas.config import SLASConfig
    from slas.platform.db import Job

VALUES_ENV = "SLAS_KUBE_VALUES"
NAMESPACE_ENV = "SLAS_KUBE_NAMESPACE"
RELEASE_ENV = "SLAS_KUBE_RELEASE"
CONTEXT_ENV = "SLAS_KUBE_CONTEXT"
WORKDIR_PREFIX = "kubernetes:"
#: the chart's default mount of the checkpoints volume (persistence.checkpoints.mountPath)
DEFAULT_STATE_MOUNT = "/data/slas"
#: the training objects of one job, in the order they are created
TRAIN_KINDS = ("Job", "ConfigMap", "Service")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_ID_LABEL = "slas.dev/job-id"
MERGE_PATCH = "application/merge-patch+json"


def _job_error(message: str) -> Exception:
    """A :class:`slas.platform.jobs.JobError` (imported here: jobs imports this module lazily)."""
    from slas.platform.jobs import JobError

    return JobError(message)


# ---------------------------------------------------------------------------------------------- the target


@dataclass(frozen=True)
class Target:
    """The installed release a job joins: namespace, release name and the values it was installed with."""

    namespace: str
    release: str
    values: Mapping[str, Any]

    @property
    def workdir(self) -> str:
        return f"{WORKDIR_PREFIX}{self.namespace}/{self.release}"

    @property
    def runs_root(self) -> PurePosixPath:
        """``$SLAS_HOME/runs`` inside the pods: the checkpoints volume's mount (the chart's SLAS_HOME)."""
        mount = self.values.get("persistence", {}).get("checkpoints", {}).get("mountPath", DEFAULT_STATE_MOUNT)
        return PurePosixPath(mount) / "runs"


def target_from_env() -> Target:
    """The release named by ``$SLAS_KUBE_RELEASE`` (default ``slas``) in ``$SLAS_KUBE_NAMESPACE`` (default
    ``default``), installed with the values file ``$SLAS_KUBE_VALUES``."""
    path = os.environ.get(VALUES_ENV)
    if not path:
        raise _job_error(f"the kubernetes backend needs the release's values file: set {VALUES_ENV} to the file "
                         "given to `helm install -f` (and SLAS_KUBE_RELEASE, SLAS_KUBE_NAMESPACE; docs/cluster.md)")
    try:
        values = load_values_file(path)
    except ChartError as exc:
        raise _job_error(f"{VALUES_ENV}: {exc}") from None
    return Target(namespace=os.environ.get(NAMESPACE_ENV) or "default",
                  release=os.environ.get(RELEASE_ENV) or "slas", values=values)


def target_of(job: Job) -> Target:
    """The release a submitted job runs in, from its row (the values file is read again: resume re-renders)."""
    where = job.workdir.removeprefix(WORKDIR_PREFIX)
    namespace, _, release = where.partition("/")
    if not job.workdir.startswith(WORKDIR_PREFIX) or not namespace or not release:
        raise _job_error(f"job {job.id}: workdir {job.workdir!r} does not name a cluster (kubernetes:<ns>/<release>)")
    env = target_from_env() if os.environ.get(VALUES_ENV) else Target(namespace, release, {})
    return Target(namespace=namespace, release=release, values=env.values)


# ---------------------------------------------------------------------------------------------- rendering


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, mappings key by key (as Helm coalesces values files)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def job_values(target: Target, job_id: int, config: Mapping[str, Any], *, resume: bool) -> dict[str, Any]:
    """The release's values with this job's run: its resolved config (as YAML text), id and resume flag."""
    run = {"config": yaml.safe_dump(dict(config), sort_keys=False), "jobId": job_id, "resume": resume, "overrides": []}
    return _merge(target.values, {"run": run, "training": {"enabled": True}})


def training_objects(target: Target, job_id: int, config: Mapping[str, Any], *, resume: bool,
                     chart: Path | None = None) -> list[dict[str, Any]]:
    """The chart's training objects for this job (Job, ConfigMap, headless Service), rendered in the release."""
    values = job_values(target, job_id, config, resume=resume)
    try:
        objects = render_objects(values, release=target.release, namespace=target.namespace, chart=chart)
    except ChartError as exc:
        raise _job_error(f"{VALUES_ENV}: {exc}") from None
    train = [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "train"]
    if sorted(o["kind"] for o in train) != sorted(TRAIN_KINDS):
        raise _job_error(f"chart rendered {[o['kind'] for o in train]} for the training run, expected {TRAIN_KINDS}")
    for obj in train:  # created by slas, not by a Helm release: helm must not claim them
        obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "slas"
        obj["metadata"]["namespace"] = target.namespace
    return sorted(train, key=lambda o: TRAIN_KINDS.index(o["kind"]))


def job_selector(target: Target, job_id: int) -> str:
    """The labels that find a job's Job among the release's (the chart sets them; names are the chart's business)."""
    return f"{JOB_ID_LABEL}={job_id},app.kubernetes.io/instance={target.release},app.kubernetes.io/component=train"


# ---------------------------------------------------------------------------------------------- the API


def api_client(context: str | None = None) -> Any:
    """A client for the cluster: the kubeconfig (``$KUBECONFIG``, context ``$SLAS_KUBE_CONTEXT``), else the
    pod's service account when running inside the cluster."""
    try:
        from kubernetes import config as kconfig
    except ImportError:
        raise _job_error("the kubernetes backend needs the kubernetes client: pip install 'slas[cluster]'") from None
    try:
        # the client reads $KUBECONFIG once, at import: read it now, so a changed environment is honoured
        return kconfig.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None,
                                              context=context or os.environ.get(CONTEXT_ENV) or None)
    except Exception as exc:  # kubeconfig missing or broken: try in-cluster before giving up
        try:
            kconfig.load_incluster_config()
            from kubernetes import client

            return client.ApiClient()
        except Exception:
            raise _job_error(f"no Kubernetes cluster configured (kubeconfig: {one_line(exc)}); "
                             "set KUBECONFIG or run inside the cluster") from None


def _api_error(exc: Exception, what: str) -> Exception:
    """An ApiException (or a connection failure) as one line naming what was being done."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or one_line(exc)
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            reason = json.loads(body).get("message") or reason
        except (ValueError, AttributeError):
            pass
    code = f" ({status})" if status else ""
    return _job_error(f"kubernetes: {what} failed{code}: {one_line(Exception(reason))}")


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


class KubernetesBackend:
    """Jobs as the chart's Indexed Job in an installed release (see the module docstring)."""

    name = "kubernetes"
    writes_run_dir = False  # the run dir is on the cluster's volume; the config travels in a ConfigMap

    def __init__(self, client_factory: Callable[[], Any] | None = None, *, delete_timeout: float = 120.0,
                 poll: float = 1.0) -> None:
        self._client_factory = client_factory or api_client
        self._client: Any = None
        self.delete_timeout = delete_timeout
        self.poll = poll

    # ------------------------------------------------------------------ plumbing
    def _apis(self) -> tuple[Any, Any]:
        from kubernetes import client

        if self._client is None:
            self._client = self._client_factory()
        return client.BatchV1Api(self._client), client.CoreV1Api(self._client)

    def place(self, cfg: SLASConfig, workdir: Path) -> tuple[str, PurePosixPath]:
        """The row's workdir (``kubernetes:<ns>/<release>``) and the folder run dirs go in, on the cluster."""
        target = target_from_env()
        root = PurePosixPath(cfg.run.output_dir) if cfg.run.output_dir and Path(cfg.run.output_dir).is_absolute() \
            else target.runs_root
        return target.workdir, root

    # ------------------------------------------------------------------ the Backend protocol
    def check(self, config: SLASConfig) -> None:
        """The values file is read and the chart renders with this config (schema, required Secrets) before
        anything is queued; model paths are not checked here: they are on the cluster's volume."""
        training_objects(target_from_env(), 1, config.model_dump(mode="json"), resume=False)

    def launch(self, job: Job, config_path: Path | None, *, resume: bool, store_url: str) -> int | None:
        """Create the job's objects (replacing a previous attempt's); no local process, so no pid."""
        target = target_of(job)
        objects = training_objects(target, job.id, job.config, resume=resume)
        batch, core = self._apis()
        name = objects[0]["metadata"]["name"]
        self._delete_objects(target.namespace, name, objects)
        job_obj = copy.deepcopy(objects[0])
        job_obj["spec"]["suspend"] = True  # no pod before its ConfigMap and Service exist
        try:
            created = batch.create_namespaced_job(target.namespace, job_obj)
        except Exception as exc:
            raise _api_error(exc, f"creating Job {target.namespace}/{name}") from None
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid,
                 "controller": False, "blockOwnerDeletion": False}
        for obj in objects[1:]:
            obj = copy.deepcopy(obj)
            obj["metadata"]["ownerReferences"] = [owner]
            create = core.create_namespaced_config_map if obj["kind"] == "ConfigMap" else core.create_namespaced_service
            try:
                create(target.namespace, obj)
            except Exception as exc:
                raise _api_error(exc, f"creating {obj['kind']} {target.namespace}/{obj['metadata']['name']}") from None
        self._patch_job(target.namespace, name, {"spec": {"suspend": False}}, "starting")
        return None

    def cancel(self, job: Job) -> None:
        """Suspend the Job: Kubernetes deletes its pods gracefully (SIGTERM, then the grace period), the run
        finishes its iteration, checkpoints and records itself cancelled; the Job stays for ``show``."""
        target = target_of(job)
        k8s_job = self.read_job(job)
        if k8s_job is None:
            raise _job_error(f"job {job.id}: no Job for it in namespace {target.namespace} (release {target.release})")
        self._patch_job(target.namespace, k8s_job.metadata.name, {"spec": {"suspend": True}}, "suspending")

    # ------------------------------------------------------------------ reading
    def read_job(self, job: Job) -> Any | None:
        """The job's Job object (found by its labels), or ``None`` when it does not exist (any more)."""
        target = target_of(job)
        batch, _ = self._apis()
        try:
            found = batch.list_namespaced_job(target.namespace, label_selector=job_selector(target, job.id)).items
        except Exception as exc:
            raise _api_error(exc, f"finding the Job of job {job.id} in namespace {target.namespace}") from None
        return found[0] if found else None

    def lost(self, job: Job) -> str | None:
        """Why an active job's run can no longer record its end (its Job ended, was emptied or deleted), else None.

        Only terminal states count: a Job whose pods wait for GPUs is simply still queued."""
        target = target_of(job)
        k8s_job = self.read_job(job)
        if k8s_job is None:
            return (f"its Job (job-id {job.id}) no longer exists in namespace {target.namespace} (deleted?) and the "
                    "run recorded no end state")
        name = f"Job {target.namespace}/{k8s_job.metadata.name}"
        status = k8s_job.status
        for cond in status.conditions or []:
            if cond.status == "True" and cond.type in ("Failed", "Complete"):
                why = f": {cond.reason}" + (f" ({cond.message})" if cond.message else "") if cond.reason else ""
                ended = "failed" if cond.type == "Failed" else "completed"
                return f"{name} {ended}{why} without the run recording an end state"
        if k8s_job.spec.suspend and not status.active and not self._live_pods(job):
            # a cancelled run's pods may take their grace period to checkpoint: gone means gone
            return f"{name} was suspended and its pods are gone without the run recording an end state"
        return None

    def _live_pods(self, job: Job) -> list[Any]:
        """Pods of the Job still pending or running (terminating ones included: they are still running)."""
        return [p for p in self.pods(job) if p.status is None or p.status.phase in ("Pending", "Running", None)]

    def pods(self, job: Job, *, index: int | None = None) -> list[Any]:
        """The Job's pods (of one completion index), oldest first; none when the Job does not exist."""
        target = target_of(job)
        _, core = self._apis()
        k8s_job = self.read_job(job)
        if k8s_job is None:
            return []
        selector = f"{JOB_NAME_LABEL}={k8s_job.metadata.name}"
        if index is not None:
            selector += f",{INDEX_LABEL}={index}"
        try:
            pods = core.list_namespaced_pod(target.namespace, label_selector=selector).items
        except Exception as exc:
            raise _api_error(exc, f"listing the pods of job {job.id}") from None
        return sorted(pods, key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))

    def follow_log(self, job: Job, *, follow: bool, ended: Callable[[], bool]) -> Iterator[str]:
        """Rank 0's log (the newest pod of completion index 0); with ``follow``, wait for it to start and stream
        it until it exits or the job ends."""
        target = target_of(job)
        _, core = self._apis()
        while True:
            pods = [p for p in self.pods(job, index=0) if p.status and p.status.phase != "Pending"]
            if pods:
                break
            if not follow:
                raise _job_error(f"job {job.id}: no started pod in namespace {target.namespace} yet (waiting for "
                                 "nodes?); `slas jobs logs -f` waits for it")
            if ended():
                return
            time.sleep(self.poll)
        pod = pods[-1].metadata.name
        try:
            response = core.read_namespaced_pod_log(pod, target.namespace, container="train", follow=follow,
                                                    _preload_content=False)
        except Exception as exc:
            raise _api_error(exc, f"reading the log of pod {target.namespace}/{pod}") from None
        try:
            for chunk in response.stream(4096):
                if chunk:
                    yield chunk.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    # ------------------------------------------------------------------ helpers
    def _patch_job(self, namespace: str, name: str, body: dict[str, Any], what: str) -> None:
        batch, _ = self._apis()
        try:
            batch.patch_namespaced_job(name, namespace, body, _content_type=MERGE_PATCH)
        except Exception as exc:
            raise _api_error(exc, f"{what} Job {namespace}/{name}") from None

    def _delete_objects(self, namespace: str, name: str, objects: list[dict[str, Any]]) -> None:
        """Remove a previous attempt's objects (a resume re-creates them) and wait until the Job is gone."""
        from kubernetes import client

        batch, core = self._apis()
        body = client.V1DeleteOptions(propagation_policy="Background")
        deletes = {"Job": batch.delete_namespaced_job, "ConfigMap": core.delete_namespaced_config_map,
                   "Service": core.delete_namespaced_service}
        for obj in objects:
            try:
                deletes[obj["kind"]](obj["metadata"]["name"], namespace, body=body)
            except Exception as exc:
                if not _is_missing(exc):
                    raise _api_error(exc, f"deleting the previous {obj['kind']} {namespace}/{obj['metadata']['name']}") from None
        deadline = time.monotonic() + self.delete_timeout
        while True:
            try:
                batch.read_namespaced_job(name, namespace)
            except Exception as exc:
                if _is_missing(exc):
                    return
                raise _api_error(exc, f"reading Job {namespace}/{name}") from None
            if time.monotonic() >= deadline:
                raise _job_error(f"kubernetes: the previous Job {namespace}/{name} is still being deleted after "
                                 f"{self.delete_timeout:.0f} s; try again")
            time.sleep(self.poll)


__all__ = ["CONTEXT_ENV", "NAMESPACE_ENV", "RELEASE_ENV", "VALUES_ENV", "KubernetesBackend", "Target", "api_client",
           "job_selector", "job_values", "target_from_env", "target_of", "training_objects"]
