"""The Helm chart ``helm/slas`` rendered in-process: one source of truth for what runs on a cluster.

``helm install`` (docs/cluster.md) and ``slas jobs submit --backend kubernetes`` both go through this chart;
the backend renders it here with the Helm v4 Go SDK bound by ``helm-python-sdk`` (no ``helm`` binary, no
cluster, no network: ``Chart.render`` is Helm's offline template engine) and creates the objects itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from slas.errors import SlasError, one_line

CHART_ENV = "SLAS_HELM_CHART"
#: the Kubernetes version the chart is validated against in tests (its Chart.yaml floor is 1.28)
KUBE_VERSION = "1.31.0"
#: creation order: what a pod mounts or resolves exists before the pod does
KIND_ORDER = ("PersistentVolumeClaim", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job")


class ChartError(SlasError, RuntimeError):
    """The chart cannot be found, its values are refused, or a template fails; one line says which."""


def chart_dir() -> Path:
    """``$SLAS_HELM_CHART``, else ``helm/slas`` of the source tree this package runs from (an editable
    install or the container image, which installs the repository in place)."""
    env = os.environ.get(CHART_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "helm" / "slas"
    if not (path / "Chart.yaml").is_file():
        raise ChartError(f"no Helm chart at {path} (Chart.yaml missing); set {CHART_ENV} to the helm/slas folder "
                         "of the slas repository")
    return path


def _helm() -> Any:
    """The SDK module, imported on first use (it loads a Go shared library), with Go's log lines kept off
    stderr: they repeat, unformatted, what the raised error already says."""
    try:
        import helm_python
    except ImportError:
        raise ChartError("rendering the chart needs helm-python-sdk: pip install 'slas[cluster]'") from None
    helm_python.disable_logging()
    return helm_python


def render_manifests(values: Mapping[str, Any], *, release: str, namespace: str,
                     chart: Path | None = None) -> dict[str, str]:
    """The chart's templates rendered with ``values`` over its defaults: template path -> text (NOTES.txt
    included). Values failing ``values.schema.json`` or a template's ``required`` raise :class:`ChartError`."""
    helm = _helm()
    try:
        helm.validate_release_name(release)
        with helm.Chart.load(chart or chart_dir()) as loaded:
            return loaded.render(values=dict(values), name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise ChartError(f"chart {release!r}: {_helm_reason(exc)}") from None


def _helm_reason(exc: BaseException) -> str:
    """Helm's message as one line: a template's ``required``/``fail`` text without its template-stack prefix,
    and for a schema failure the offending keys (Helm puts them on the lines after its preamble)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("values don't meet the specifications of the schema"):
        problems = [line.removeprefix("- ") for line in lines[1:] if line.startswith("- ")]
        return "values.schema.json: " + "; ".join(problems or lines[1:2])
    text = one_line(exc)
    marker = "): "
    return text.rsplit(marker, 1)[-1] if text.startswith("execution error at") and marker in text else text


def render_objects(values: Mapping[str, Any], *, release: str, namespace: str,
                   chart: Path | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects the chart renders, in creation order (see :data:`KIND_ORDER`)."""
    objects = []
    for path, text in sorted(render_manifests(values, release=release, namespace=namespace, chart=chart).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    return sorted(objects, key=lambda o: rank.get(o.get("kind", ""), len(KIND_ORDER)))


def notes(values: Mapping[str, Any], *, release: str, namespace: str, chart: Path | None = None) -> str:
    """The chart's NOTES.txt as ``helm install`` would print it."""
    manifests = render_manifests(values, release=release, namespace=namespace, chart=chart)
    return next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")


def load_values_file(path: str | Path) -> dict[str, Any]:
    """A values file (``-f values.yaml``) as a mapping; a missing or malformed file is one line."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ChartError(f"values file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ChartError(f"values file {p}: not YAML ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ChartError(f"values file {p}: expected a mapping of chart values, got {type(data).__name__}")
    return data


__all__ = ["CHART_ENV", "KIND_ORDER", "KUBE_VERSION", "ChartError", "chart_dir", "load_values_file", "notes",
           "render_manifests", "render_objects"]
