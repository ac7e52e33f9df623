"""helm/slas without a cluster: Helm's own lint (strict) and renderer (the v4 Go SDK through helm-python-sdk,
no helm binary, no network), every rendered object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors) and the content checked: ranks, env, mounts, GPUs,
security, and that no secret value can reach the chart. The image the chart runs is the repo's Dockerfile."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from slas.config import config_from_dict, load_config
from slas.platform.chart import KUBE_VERSION, ChartError, chart_dir, render_manifests, render_objects

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "slas"
#: the chart's floor (Chart.yaml kubeVersion) and the version the project states it is validated against
KUBE_VERSIONS = ("1.28.0", KUBE_VERSION)
SECRET_ENV = {"SLAS_DATABASE_URL", "MLFLOW_BACKEND_STORE_URI", "SLAS_UI_AUTH", "SLAS_REWARD_TOKEN",
              "POSTGRES_PASSWORD", "SLAS_PG_PASSWORD"}

helm.disable_logging()


def _config() -> str:
    """The run config as text, as `--set-file run.config=configs/flux_dev_hps_clip.yaml` passes it."""
    return (ROOT / "configs" / "flux_dev_hps_clip.yaml").read_text()


def _one_node() -> dict[str, Any]:
    """One node, one GPU, nothing optional: an external MLflow, no UI, the job store in a managed database."""
    return {
        "run": {"config": _config()},
        "training": {"nodes": 1, "gpusPerNode": 1},
        "store": {"databaseUrlSecret": {"name": "slas-db", "key": "url"}},
        "mlflow": {"enabled": False, "externalUri": "http://mlflow.tracking.svc:5000"},
        "ui": {"enabled": False},
    }


def _two_by_eight() -> dict[str, Any]:
    """The paper's FLUX layout, 2 nodes x 8 GPUs, with every optional part on (PostgreSQL in the chart)."""
    return {
        "run": {"config": _config(), "jobId": 17},
        "training": {
            "nodes": 2, "gpusPerNode": 8, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training-high", "shmSize": "128Gi", "accelerateConfig": "configs/accelerate/fsdp.yaml",
        },
        "postgresql": {"enabled": True, "passwordSecret": {"name": "slas-postgres", "key": "password"}},
        "ui": {"authSecret": {"name": "slas-ui", "key": "auth"}},
        "rewardServer": {"enabled": True, "spec": "hpsv21:0.7,clip:1.4", "gpus": 2,
                         "tokenSecret": {"name": "slas-reward", "key": "token"}},
        "mlflow": {"allowedHosts": ["mlflow.example.org"]},
    }


def _lora() -> dict[str, Any]:
    """FLUX LoRA through an override, an accelerate config file, existing volumes and S3 artifacts."""
    return {
        "image": {"repository": "registry.example.org/ml/slas", "tag": "2026.11"},
        "run": {"config": _config(), "overrides": ["model.finetune=lora", "train.lr=3e-4"], "resume": True},
        "training": {"nodes": 1, "gpusPerNode": 4, "accelerateConfig": "configs/accelerate/ddp.yaml"},
        "store": {"databaseUrlSecret": {"name": "slas-db"}},
        "persistence": {"checkpoints": {"existingClaim": "team-checkpoints"},
                        "models": {"existingClaim": "shared-hf-cache"}},
        "mlflow": {"backendStoreSecret": {"name": "mlflow-db"},
                   "artifacts": {"destination": "s3://ml-artifacts/slas", "credentialsSecret": "mlflow-s3",
                                 "s3EndpointUrl": "https://s3.example.org"}},
        "ui": {"authSecret": {"name": "slas-ui"}},
    }


def _services_only() -> dict[str, Any]:
    """The release `slas jobs submit --backend kubernetes` joins: services and volumes, no run of its own."""
    return {
        "training": {"enabled": False},
        "postgresql": {"enabled": True, "passwordSecret": {"name": "slas-postgres"}},
        "ui": {"authSecret": {"name": "slas-ui"}},
    }


VALUE_SETS = {"one_node": _one_node, "two_by_eight": _two_by_eight, "lora": _lora, "services_only": _services_only}
TRAINING_SETS = ("one_node", "two_by_eight", "lora")


def _render(values: dict[str, Any], release: str = "exp") -> list[dict[str, Any]]:
    return render_objects(values, release=release, namespace="ml", chart=CHART)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [o for o in _by_kind(objects, kind)
             if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{kind}/{component}: {len(found)} objects"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


# ---------------------------------------------------------------------------------------------- lint + schema


@pytest.mark.parametrize("name", [None, *VALUE_SETS])
def test_lint_strict_passes(name: str | None) -> None:
    values = VALUE_SETS[name]() if name else None
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The lint is real: the same chart with one unbalanced action is an error."""
    broken = tmp_path / "slas"
    shutil.copytree(CHART, broken)
    job = broken / "templates" / "train-job.yaml"
    job.write_text(job.read_text().replace("{{- end }}", "", 1))
    report = helm.lint(str(broken), _one_node(), strict=True)
    assert report["errors"]


@pytest.mark.parametrize("name", VALUE_SETS)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_object_validates_strictly(name: str, kube: str) -> None:
    objects = _render(VALUE_SETS[name]())
    assert len(objects) >= 3
    for obj in objects:
        kubernetes_validate.validate(obj, kube, strict=True)


def test_strict_validation_catches_an_unknown_field() -> None:
    """The validator is strict: a misspelled field in a Job (what a template typo would render) fails."""
    job = copy.deepcopy(_by_kind(_render(_one_node()), "Job")[0])
    job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("change", "expected"), [
    ({"training": {"nodes": 0}}, "/training/nodes"),
    ({"training": {"gpus": 8}}, "'gpus' not allowed"),
    ({"postgresql": {"password": "hunter2"}}, "'password' not allowed"),
    ({"ui": {"authSecret": {"name": "slas-ui", "value": "admin:pw"}}}, "'value' not allowed"),
    ({"run": {"overrides": ["model.finetune"]}}, "/run/overrides/0"),
    ({"run": {"config": {"run": {"name": "x"}}}}, "/run/config"),
])
def test_schema_refuses_bad_values_in_one_line(change: dict[str, Any], expected: str) -> None:
    values = _one_node()
    for section, update in change.items():
        values.setdefault(section, {}).update(update)
    with pytest.raises(ChartError) as err:
        _render(values)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("change", "expected"), [
    ({"run": {"config": "  \n"}}, "run.config is required"),
    ({"store": {"databaseUrlSecret": {"name": ""}}}, "store.databaseUrlSecret.name is required"),
    ({"mlflow": {"enabled": False, "externalUri": ""}}, "mlflow.externalUri is required"),
    ({"ui": {"enabled": True}}, "ui.authSecret.name is required"),
    ({"rewardServer": {"enabled": True, "spec": "clip"}}, "rewardServer.tokenSecret.name is required"),
    ({"postgresql": {"enabled": True}}, "postgresql.passwordSecret.name is required"),
])
def test_missing_secret_names_and_config_are_named(change: dict[str, Any], expected: str) -> None:
    values = _one_node()
    for section, update in change.items():
        values[section] = {**values.get(section, {}), **update}
    if "postgresql" in change:
        values["store"] = {"databaseUrlSecret": {"name": ""}}
    with pytest.raises(ChartError, match=re.escape(expected)):
        _render(values)


# ---------------------------------------------------------------------------------------------- the training Job


@pytest.mark.parametrize(("name", "nodes", "gpus"), [("one_node", 1, 1), ("two_by_eight", 2, 8), ("lora", 1, 4)])
def test_indexed_job_ranks_and_rendezvous(name: str, nodes: int, gpus: int) -> None:
    objects = _render(VALUE_SETS[name]())
    job = _by_kind(objects, "Job")[0]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    assert spec["backoffLimit"] == 0
    pod = _pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    headless = [s for s in _by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and headless[0]["spec"]["publishNotReadyAddresses"] is True
    service = headless[0]["metadata"]["name"]
    assert pod["subdomain"] == service  # <job>-<index>.<service> resolves
    # the Job controller labels its pods batch.kubernetes.io/job-name=<job>: only this run's pods are selected
    assert headless[0]["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    (train,) = pod["containers"]
    assert train["command"] == ["accelerate", "launch"]
    args = train["args"]
    assert f"--num_machines={nodes}" in args
    assert f"--num_processes={nodes * gpus}" in args
    assert "--machine_rank=$(JOB_COMPLETION_INDEX)" in args
    assert f"--main_process_ip={job['metadata']['name']}-0.{service}" in args
    port = headless[0]["spec"]["ports"][0]["port"]
    assert f"--main_process_port={port}" in args
    module = args.index("--module")
    assert args[module + 1: module + 4] == ["slas", "train", "/config/config.yaml"]
    assert ("--same_network" in args) == (nodes > 1)
    for kind in ("requests", "limits"):
        assert train["resources"][kind]["nvidia.com/gpu"] == gpus
    # the pod hostname <job>-<index> must be a DNS label
    assert len(f"{job['metadata']['name']}-{nodes - 1}") <= 63


def test_services_only_release_renders_no_run() -> None:
    objects = _render(_services_only())
    assert not [o for o in objects if o["metadata"]["labels"]["app.kubernetes.io/component"] == "train"]
    assert {o["kind"] for o in objects} == {"Deployment", "Service", "StatefulSet", "ConfigMap", "PersistentVolumeClaim"}


def test_job_arguments_follow_the_run_values() -> None:
    args_of = {name: _by_kind(_render(VALUE_SETS[name]()), "Job")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
               for name in TRAINING_SETS}
    assert "--config_file=configs/accelerate/ddp.yaml" in args_of["one_node"]  # the chart's default strategy
    assert "--config_file=configs/accelerate/fsdp.yaml" in args_of["two_by_eight"]
    assert not any("--multi_gpu" in args for args in args_of.values())
    assert "--job-id=17" in args_of["two_by_eight"]
    lora = args_of["lora"]
    assert "--config_file=configs/accelerate/ddp.yaml" in lora and "--multi_gpu" not in lora
    assert lora[-3:] == ["--resume", "--set=model.finetune=lora", "--set=train.lr=3e-4"]
    assert not any(a.startswith("--job-id") for a in args_of["one_node"])


def test_accelerate_config_default_is_shipped_and_empty_falls_back() -> None:
    """The chart's default accelerate config is a file the image holds (configs/ is copied to /opt/slas, the
    working directory); without one, accelerate's multi-GPU defaults."""
    default = yaml.safe_load((CHART / "values.yaml").read_text())["training"]["accelerateConfig"]
    assert (ROOT / default).is_file()
    values = _two_by_eight()
    values["training"]["accelerateConfig"] = ""
    args = _by_kind(_render(values), "Job")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--multi_gpu" in args and not any(a.startswith("--config_file") for a in args)


def test_run_config_configmap_is_the_config_and_loads() -> None:
    objects = _render(_lora())
    job = _by_kind(objects, "Job")[0]
    config_volume = next(v for v in _pod_spec(job)["volumes"] if v["name"] == "config")
    cm = next(c for c in _by_kind(objects, "ConfigMap") if c["metadata"]["name"] == config_volume["configMap"]["name"])
    assert cm["data"]["config.yaml"] == _config()  # byte for byte, comments included
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(data["train"]["lr"], float)  # 1.0e-5 stays a number (a mapping would come back as 1e-05)
    cfg = config_from_dict(data, ["model.finetune=lora"])  # what `slas train /config/config.yaml --set` reads
    assert cfg.model.finetune == "lora" and cfg.model.family == "flux"
    assert cfg == load_config(ROOT / "configs" / "flux_dev_hps_clip.yaml", ["model.finetune=lora"])
    mounts = _mounts(_pod_spec(job)["containers"][0])
    assert mounts["/config"]["name"] == "config" and mounts["/config"]["readOnly"] is True


def test_trainer_environment_and_volumes() -> None:
    objects = _render(_two_by_eight())
    job = _by_kind(objects, "Job")[0]
    pod = _pod_spec(job)
    (train,) = pod["containers"]
    env = _env(train)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    home = values["persistence"]["checkpoints"]["mountPath"]
    models = values["persistence"]["models"]["mountPath"]
    assert env["SLAS_HOME"]["value"] == home
    assert env["HF_HOME"]["value"] == f"{models}/huggingface"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    mlflow = _one(objects, "Service", "mlflow")
    assert env["MLFLOW_TRACKING_URI"]["value"] == (
        f"http://{mlflow['metadata']['name']}:{mlflow['spec']['ports'][0]['port']}")
    # the rendezvous port is open on the pod
    assert train["ports"][0]["containerPort"] == 29500
    mounts = _mounts(train)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[home]["name"]]["persistentVolumeClaim"]["claimName"] == "exp-slas-checkpoints"
    assert volumes[mounts[models]["name"]]["persistentVolumeClaim"]["claimName"] == "exp-slas-models"
    assert mounts[models]["readOnly"] is True
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "128Gi"}
    for writable in ("/tmp", "/home/slas"):
        assert "emptyDir" in volumes[mounts[writable]["name"]] and not mounts[writable].get("readOnly")
    assert env["HOME"]["value"] == "/home/slas"
    # scheduling
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["priorityClassName"] == "training-high"
    assert job["metadata"]["labels"]["slas.dev/job-id"] == "17"
    # the reward server's token reaches its clients
    assert env["SLAS_REWARD_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "slas-reward", "key": "token"}


def test_created_and_existing_volumes() -> None:
    created = {c["metadata"]["name"]: c for c in _by_kind(_render(_two_by_eight()), "PersistentVolumeClaim")}
    assert set(created) == {"exp-slas-checkpoints", "exp-slas-models", "exp-slas-mlflow-artifacts"}
    assert created["exp-slas-checkpoints"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every rank mounts it
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in created.values())
    objects = _render(_lora())
    assert _by_kind(objects, "PersistentVolumeClaim") == []  # existing claims, artifacts in S3
    claims = {v["persistentVolumeClaim"]["claimName"] for v in _pod_spec(_by_kind(objects, "Job")[0])["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"team-checkpoints", "shared-hf-cache"}


# ---------------------------------------------------------------------------------------------- the services


def test_mlflow_server_backend_and_artifacts() -> None:
    objects = _render(_lora())
    deploy = _one(objects, "Deployment", "mlflow")
    (c,) = _pod_spec(deploy)["containers"]
    assert c["command"] == ["mlflow", "server"]
    # mlflow server reads MLFLOW_BACKEND_STORE_URI itself: the password stays off the command line
    assert not [a for a in c["args"] if "backend-store" in a or "$(" in a]
    assert "--serve-artifacts" in c["args"]
    assert "--artifacts-destination=s3://ml-artifacts/slas" in c["args"]
    assert _env(c)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert _env(c)["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.example.org"
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    hosts = next(a for a in c["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "exp-slas-mlflow:5000" in hosts  # the Host header trainer pods send
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # on a volume instead
    objects = _render(_two_by_eight())
    (c,) = _pod_spec(_one(objects, "Deployment", "mlflow"))["containers"]
    assert "--artifacts-destination=/mlartifacts" in c["args"]
    assert _mounts(c)["/mlartifacts"]["name"] == "artifacts"
    assert "mlflow.example.org" in next(a for a in c["args"] if a.startswith("--allowed-hosts="))
    assert not _by_kind(_render(_one_node()), "Deployment")  # external MLflow, no UI: no servers at all


def test_chart_postgresql_backs_store_and_mlflow_with_their_own_databases() -> None:
    objects = _render(_two_by_eight())
    sts = _one(objects, "StatefulSet", "postgresql")
    (pg,) = _pod_spec(sts)["containers"]
    assert _env(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "slas-postgres", "key": "password"}
    assert _env(pg)["POSTGRES_DB"]["value"] == "slas"
    init = next(c for c in _by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-postgresql-init"))
    assert "CREATE DATABASE mlflow;" in init["data"]["10-mlflow-database.sql"]
    for component, var, db in (("train", "SLAS_DATABASE_URL", "slas"), ("mlflow", "MLFLOW_BACKEND_STORE_URI", "mlflow")):
        kind = "Job" if component == "train" else "Deployment"
        c = _pod_spec(_one(objects, kind, component))["containers"][0]
        names = [e["name"] for e in c["env"]]
        # $(SLAS_PG_PASSWORD) expands only when that variable is defined earlier in the list
        assert names.index("SLAS_PG_PASSWORD") < names.index(var)
        assert _env(c)[var]["value"] == f"postgresql+psycopg://slas:$(SLAS_PG_PASSWORD)@exp-slas-postgresql:5432/{db}"
    assert not _by_kind(_render(_one_node()), "StatefulSet")


def test_review_ui_and_reward_server() -> None:
    objects = _render(_two_by_eight())
    (ui,) = _pod_spec(_one(objects, "Deployment", "ui"))["containers"]
    assert ui["command"] == ["slas", "ui"] and "--host=0.0.0.0" in ui["args"]
    assert _env(ui)["SLAS_UI_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": "slas-ui", "key": "auth"}
    assert _one(objects, "Service", "ui")["spec"]["ports"][0]["port"] == 7860
    reward = _one(objects, "Deployment", "reward")
    (rc,) = _pod_spec(reward)["containers"]
    assert rc["command"] == ["slas", "reward", "serve"]
    assert rc["args"] == ["hpsv21:0.7,clip:1.4", "--host=0.0.0.0", "--port=8000"]  # reachable, so the token is required
    assert rc["readinessProbe"]["httpGet"]["path"] == "/health"
    assert rc["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert _env(rc)["SLAS_REWARD_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "slas-reward"
    assert _one(objects, "Service", "reward")["spec"]["ports"][0]["port"] == 8000
    assert "backend: remote, url: http://exp-slas-reward:8000" in render_manifests(
        _two_by_eight(), release="exp", namespace="ml", chart=CHART)["slas/templates/NOTES.txt"]
    one = _render(_one_node())
    assert not [o for o in one if o["metadata"]["labels"]["app.kubernetes.io/component"] in ("ui", "reward")]


# ---------------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_non_root_with_read_only_roots(name: str) -> None:
    workloads = [o for o in _render(VALUE_SETS[name]()) if o["kind"] in ("Job", "Deployment", "StatefulSet")]
    assert workloads
    for obj in workloads:
        pod = _pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in _mounts(c)  # the one writable scratch place every process needs


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_secret_value_is_rendered(name: str) -> None:
    """The chart never holds a secret: no Secret objects, and every credential variable is a secretKeyRef
    (or composed only from one, through $(SLAS_PG_PASSWORD))."""
    objects = _render(VALUE_SETS[name]())
    assert _by_kind(objects, "Secret") == []
    for obj in objects:
        if obj["kind"] not in ("Job", "Deployment", "StatefulSet"):
            continue
        for c in _pod_spec(obj)["containers"]:
            for var, entry in _env(c).items():
                if var not in SECRET_ENV:
                    continue
                if "valueFrom" in entry:
                    assert set(entry["valueFrom"]) == {"secretKeyRef"}
                else:
                    assert "$(SLAS_PG_PASSWORD)" in entry["value"], f"{var} has a literal value"
    text = json.dumps(objects)
    assert not re.search(r"postgres(ql)?(\+psycopg)?://[^:/@]+:(?!\$\(SLAS_PG_PASSWORD\))[^@]+@", text)


def test_default_values_hold_no_secret_values() -> None:
    """values.yaml names Secrets, it never holds one: every *Secret key is a name (and key), and nothing
    called password/token/auth/uri carries a value."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else key
                if key.endswith("Secret") and isinstance(value, dict):
                    assert set(value) == {"name", "key"}, where
                    assert value["name"] == "", where  # created by the user, named at install
                elif re.search(r"password|token|auth|secret", key, re.I) and not isinstance(value, dict):
                    # names of Secrets only: an image pull Secret list, the object-storage Secret's name
                    assert (key, value) in (("imagePullSecrets", []), ("credentialsSecret", "")), where
                walk(value, where)

    walk(values, "")
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False


# ---------------------------------------------------------------------------------------------- the image


def test_dockerfile_runs_as_non_root_and_is_the_charts_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", dockerfile, re.M).group(1)
    assert froms == ["${CUDA_IMAGE}"] and base.startswith("nvidia/cuda:")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])  # numeric: the kubelet can check runAsNonRoot against it
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == uid
    # the pinned torch pair is the Makefile's
    makefile = (ROOT / "Makefile").read_text()
    torch_pair = re.search(r'^ARG TORCH_SPEC="([^"]+)"', dockerfile, re.M).group(1)
    assert torch_pair in makefile
    # `make image` tags slas:<version>, which is the chart's default image
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert "IMAGE ?= slas:$(shell sed" in makefile and "$(DOCKER) build -t $(IMAGE) ." in makefile
    assert chart["appVersion"] == version
    job = _by_kind(_render(_one_node()), "Job")[0]
    assert _pod_spec(job)["containers"][0]["image"] == f"{values['image']['repository']}:{version}" == f"slas:{version}"
    assert "ENV SLAS_HELM_CHART=/opt/slas/helm/slas" in dockerfile and "COPY helm ./helm" in dockerfile


def test_chart_dir_is_found_and_named_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert chart_dir() == CHART
    monkeypatch.setenv("SLAS_HELM_CHART", str(tmp_path))
    with pytest.raises(ChartError, match="SLAS_HELM_CHART"):
        chart_dir()
