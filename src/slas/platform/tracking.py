"""Trackers the trainer logs through: JSONL in the run dir, MLflow, and a tee that feeds both.

The trainer only calls the :class:`Tracker` protocol, so a run with no tracking server still leaves a
complete ``metrics.jsonl``. :class:`MLflowTracker` adds the MLflow view (params, step metrics, sample
grids, checkpoints, registered models) and never stops a run because the server went away: what it
cannot send is buffered in the run dir and replayed, in order, once the server answers again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from slas.platform.locks import file_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...

    def close(self) -> None: ...


class JsonlTracker:
    """``params.json``, one ``metrics.jsonl`` line per step and an ``artifacts/`` folder in ``run_dir``.

    Resuming appends; a line for a step already logged is dropped, so a resumed run never duplicates steps.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._logged = {rec["step"] for rec in read_metrics(self.metrics_path)}
        self._fh = self.metrics_path.open("a", encoding="utf-8")

    def log_params(self, params: dict[str, Any]) -> None:
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True, default=str))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step in self._logged:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()})
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        self._logged.add(int(step))

    def log_artifact(self, path: str | Path) -> None:
        dest = self.run_dir / "artifacts"
        dest.mkdir(exist_ok=True)
        src = Path(path)
        if src.resolve().parent != dest.resolve():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / src.name)

    def log_image(self, image: Any, key: str, step: int) -> Path:
        """Save a sample grid as ``images/<key>/step_<step>.png`` so offline runs keep them too."""
        path = self.run_dir / "images" / _safe_name(key) / f"step_{int(step):06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _to_pil(image).save(path)
        return path

    def close(self, status: str = "FINISHED") -> None:
        self._fh.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- MLflow

# MLflow's own limits (mlflow.utils.validation); copied so importing this module stays cheap.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
SCORE_TAG = "slas.score"  # model-version tag compared to decide which version gets the ``best`` alias
_IMAGE_FILE = re.compile(r"^(.+?)[+%]step[+%](\d+)[+%]timestamp[+%]")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")
_HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


class TrackingError(RuntimeError):
    """A tracking request that can never succeed (bad run id, rejected value), as opposed to an outage."""


class TrackingServerUnavailable(RuntimeWarning):
    """Warned once per outage: the run goes on and tracking records wait on disk."""


def tracking_home() -> Path:
    """The folder for local tracking data: ``$SLAS_HOME`` or ``./.slas`` (the job store uses the same)."""
    return Path(os.environ.get("SLAS_HOME") or ".slas").expanduser().resolve()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``<SLAS_HOME or ./.slas>/mlflow.db``.

    MLflow 3 refuses the plain ``./mlruns`` file store, so the local default is SQLite.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{tracking_home() / 'mlflow.db'}"


def _local_artifact_root(tracking_uri: str) -> Path | None:
    """Where a database-backed store keeps artifacts: beside a SQLite file, else ``<SLAS_HOME>/mlartifacts``.

    ``None`` for a tracking server, which picks (and may proxy) its own artifact store.
    """
    scheme = tracking_uri.split(":", 1)[0].lower()
    if scheme in ("http", "https", "databricks", "databricks-uc", "uc"):
        return None
    if scheme == "sqlite" and tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        return Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts"
    return tracking_home() / "mlartifacts"


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "image"


def _clean_key(key: str) -> str:
    return _KEY_BAD_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VALUE_LENGTH]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _to_pil(image: Any) -> Any:
    """PIL image from a PIL image, an HWC/HW array, or a CHW/HWC tensor in [0, 1] or uint8."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):  # torch tensor, CHW as torchvision makes grids
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (bounded: chains can in rare cases loop)."""
    seen: BaseException | None = exc
    for _ in range(32):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _is_outage(exc: BaseException) -> bool:
    """True for errors that mean "the store is away or overloaded" (retry later), not "request rejected"."""
    import requests
    from mlflow.exceptions import MlflowException

    for seen in _chain(exc):
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if isinstance(seen, ConnectionError | TimeoutError):
            return True
        if isinstance(seen, MlflowException) and seen.get_http_status_code() >= 500:
            return True
    return False


def _server_answered(exc: BaseException) -> bool:
    """For an outage: True when the server replied (5xx) rather than being unreachable."""
    import requests

    return not any(
        isinstance(
            seen,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | ConnectionError
            | TimeoutError,
        )
        for seen in _chain(exc)
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class MLflowTracker:
    """Logs a run to MLflow and keeps logging (to disk) while the tracking server is away.

    Tracking URI: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in ``$SLAS_HOME`` (default
    ``./.slas``): ``mlflow.db`` with artifacts in ``mlartifacts/``. Passing ``run_id`` (or reopening the same ``run_dir``, whose
    ``mlflow_state.json`` remembers the run) continues that run (an unknown ``run_id`` is an error): a metric is never logged twice for a step,
    so a resumed trainer that repeats iterations after its last checkpoint adds no duplicate points.

    Every MLflow call goes through :meth:`_submit`. When the store is unreachable the record is appended
    to ``run_dir/mlflow_buffer.jsonl`` (images are saved beside it, artifacts keep their path), one
    :class:`TrackingServerUnavailable` warning is issued, and the server is not tried again for
    ``retry_interval`` seconds (doubling, up to ``max_retry_interval``, while it stays away, so a server
    that hangs costs at most one ``http_timeout`` per wait). The next call after that replays the buffer in
    order first.
    """

    BUFFER_NAME = "mlflow_buffer.jsonl"
    STATE_NAME = "mlflow_state.json"

    def __init__(
        self,
        run_dir: str | Path,
        *,
        experiment: str = "slas",
        run_name: str | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        retry_interval: float = 30.0,
        max_retry_interval: float = 300.0,
        http_timeout: int = 10,
        http_retries: int = 0,
        artifact_timeout: int = 600,
        max_replay_tries: int = 10,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.run_name = run_name
        self.retry_interval = float(retry_interval)
        self.max_retry_interval = float(max_retry_interval)
        self.http_timeout = int(http_timeout)
        self.http_retries = int(http_retries)
        self.artifact_timeout = int(artifact_timeout)
        self.max_replay_tries = int(max_replay_tries)
        self.buffer_path = self.run_dir / self.BUFFER_NAME
        self.buffer_files = self.run_dir / "mlflow_buffer"
        self.state_path = self.run_dir / self.STATE_NAME
        self._tags = {"slas.run_dir": str(self.run_dir.resolve()), **(tags or {})}
        self._artifact_root = _local_artifact_root(self.tracking_uri)
        if self._artifact_root is not None and self.tracking_uri.startswith("sqlite:///"):
            self._artifact_root.parent.mkdir(parents=True, exist_ok=True)

        state = self._read_state()
        same_store = state.get("tracking_uri") == self.tracking_uri
        self._explicit_run = run_id is not None
        self._run_id: str | None = run_id or (state.get("run_id") if same_store else None)
        reuse_steps = same_store and state.get("run_id") == self._run_id
        self._last_step: dict[str, int] = dict(state.get("last_step", {})) if reuse_steps else {}
        self._last_image: dict[str, int] = dict(state.get("last_image_step", {})) if reuse_steps else {}
        self._server_last: dict[str, int] = {}  # steps the store already held when we attached
        self._server_params: dict[str, str] = {}
        self._logged_artifacts: dict[str, str] = {}
        self._attached = False
        self._offline = False
        self._failed_at = 0.0
        self._failures = 0  # consecutive failed contacts: the wait doubles up to max_retry_interval
        self._constructing = True
        self._buffered = self._count_buffered()
        self._closed = self._closing = False
        with _sqlite_init_lock(self.tracking_uri):
            self._client: MlflowClient = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
            self._online(force=True)  # create or reopen the run now, so run_id is known when the store is up
        self._constructing = False

    # ------------------------------------------------------------------ public API
    @property
    def run_id(self) -> str | None:
        """The MLflow run id; ``None`` only while the store has been unreachable since the run began."""
        return self._run_id

    @property
    def buffered(self) -> int:
        """How many records wait in the on-disk buffer."""
        return self._buffered

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the (flattened) config; values are stringified and cut to MLflow's 6000 characters."""
        flat = {_clean_key(k): _param_value(v) for k, v in _flatten(params).items()}
        if flat:
            self._submit({"kind": "params", "params": flat})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one iteration's metrics at ``step``; non-finite values and already-logged steps are skipped."""
        step = int(step)
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}") from None
            clean = _clean_key(key)
            if math.isfinite(number) and step > self._last_step.get(clean, -1):
                values[clean] = number
        if not values:
            return
        self._submit({"kind": "metrics", "step": step, "timestamp": _now_ms(), "values": values})
        self._last_step.update(dict.fromkeys(values, step))
        self._write_state()

    def log_image(self, image: Any, key: str, step: int) -> None:
        """Log a sample grid (PIL image, array or tensor) as MLflow's step image ``key`` at ``step``.

        Like metrics, an image for a step this run dir already logged (a resumed trainer repeating
        iterations) is skipped.
        """
        clean = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)
        step = int(step)
        if step <= self._last_image.get(clean, -1):
            return
        record = {"kind": "image", "key": clean, "step": step, "timestamp": _now_ms()}
        self._submit(record, image=_to_pil(image))
        self._last_image[clean] = step
        self._write_state()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> str:
        """Upload a file or folder; a folder (a checkpoint) goes to ``checkpoints/<name>`` by default.

        Returns the run-relative artifact path.
        """
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"cannot log artifact {src}: no such file or folder")
        if artifact_path is None:
            artifact_path = f"checkpoints/{src.name}" if src.is_dir() else ""
        self._submit({"kind": "artifact", "path": str(src.resolve()), "artifact_path": artifact_path})
        where = artifact_path if src.is_dir() else "/".join(p for p in (artifact_path, src.name) if p)
        self._logged_artifacts[str(src.resolve())] = where
        return where

    def register_model(
        self,
        name: str,
        path: str | Path,
        aliases: Sequence[str] = ("latest",),
        best: bool = False,
        tags: Mapping[str, str] | None = None,
        score: float | None = None,
    ) -> int | None:
        """Register ``path`` (a checkpoint, uploaded now unless already logged) as a new version of ``name``.

        ``aliases`` are pointed at the new version, plus ``best`` when asked. ``latest`` is reserved by
        MLflow and always resolves to the newest version (``models:/NAME@latest``), which this one is, so it
        needs no alias. ``score`` (higher is better, kept as the version tag ``slas.score``) moves ``best``
        to this version when it beats the score of the version ``best`` points at, or no version has it;
        the comparison happens when the version is created, so a registration replayed after an outage
        compares against the registry as it is then. Returns the version number, or ``None`` while the
        store is away (registered later).
        """
        src = Path(path).resolve()
        artifact_path = self._logged_artifacts.get(str(src)) or self.log_artifact(src)
        wanted = [a for a in aliases if a.lower() != "latest"] + (["best"] if best else [])
        tag_values = {k: str(v) for k, v in (tags or {}).items()}
        if score is not None and math.isfinite(float(score)):
            tag_values[SCORE_TAG] = repr(float(score))
        record = {
            "kind": "model",
            "name": name,
            "artifact_path": artifact_path,
            "aliases": list(dict.fromkeys(wanted)),
            "tags": tag_values,
            "score": float(score) if score is not None and math.isfinite(float(score)) else None,
        }
        return self._submit(record)

    def flush(self) -> bool:
        """Try the store now (ignoring ``retry_interval``) and replay the buffer; True when it is empty."""
        self._online(force=True)
        return self._buffered == 0

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``) after a last replay of the buffer."""
        if self._closed:
            return
        self._closing = True
        self._submit({"kind": "end", "status": status, "end_time": _now_ms()}, force=True)
        self._closed = True
        if self._buffered:
            warnings.warn(
                f"MLflow store {self.tracking_uri} still unreachable at close: {self._buffered} tracking "
                f"records stay in {self.buffer_path}; they are replayed when a tracker next opens this run dir",
                TrackingServerUnavailable,
                stacklevel=2,
            )

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(
            "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        )

    # ------------------------------------------------------------------ the one guarded path
    def _submit(self, record: dict[str, Any], *, image: Any = None, force: bool = False) -> Any:
        """Send ``record`` now if the store answers (after replaying older records), else buffer it."""
        if self._online(force=force):
            try:
                with self._http(record):
                    return self._send(record, image=image)
            except Exception as exc:
                if not _is_outage(exc):
                    self._reject(record, exc)
                    return None
                self._go_offline(exc)
        self._append(record, image)
        return None

    def _online(self, *, force: bool = False) -> bool:
        """Attach the run and replay the buffer; False while the store is (recently found) unreachable."""
        if self._offline and not force and time.monotonic() - self._failed_at < self._wait():
            return False
        try:
            with self._http({"kind": "attach"}):
                self._attach()
                self._replay()
        except Exception as exc:
            if not _is_outage(exc):
                raise
            self._go_offline(exc)
            return False
        self._offline, self._failures = False, 0
        return True

    def _wait(self) -> float:
        """Seconds to leave the store alone after a failure: ``retry_interval``, doubling while it stays away."""
        grown = self.retry_interval * 2 ** min(max(self._failures - 1, 0), 16)
        return min(grown, max(self.max_retry_interval, self.retry_interval))

    @contextlib.contextmanager
    def _http(self, record: Mapping[str, Any]) -> Iterator[None]:
        """Short HTTP timeouts and retries so a dead server costs a training step seconds, not minutes."""
        timeout = self.artifact_timeout if record.get("kind") in ("artifact", "image") else self.http_timeout
        wanted = (str(self.http_retries), str(max(1, int(timeout))), "0", "0")
        saved = {k: os.environ.get(k) for k in _HTTP_ENV}
        os.environ.update(dict(zip(_HTTP_ENV, wanted, strict=True)))
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _go_offline(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._failures += 1
        if not self._offline:
            self._offline = True
            warnings.warn(
                f"MLflow tracking store {self.tracking_uri} is unreachable ({_first_line(exc)}); the run goes on "
                f"and tracking records are buffered in {self.buffer_path} until it answers again "
                f"(retried after {self.retry_interval:g} s, then less often) [{time.strftime('%H:%M:%S')}]",
                TrackingServerUnavailable,
                stacklevel=4,
            )

    def _reject(self, record: Mapping[str, Any], exc: BaseException) -> None:
        """A record the store refuses will be refused again: drop it, loudly, rather than stop the run."""
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | FileNotFoundError):
            raise exc
        warnings.warn(
            f"MLflow rejected a {record.get('kind')} record and it was dropped: {_first_line(exc)}",
            RuntimeWarning,
            stacklevel=4,
        )

    # ------------------------------------------------------------------ talking to MLflow
    def _attach(self) -> None:
        """Create the run, or reopen ``run_id`` and learn which steps and params it already holds."""
        if self._attached:
            return
        from mlflow.exceptions import MlflowException

        client = self._client
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
            except MlflowException as exc:
                if _is_outage(exc):
                    raise
                if self._explicit_run and self._constructing:
                    raise TrackingError(
                        f"MLflow run {self._run_id} not found in {self.tracking_uri}: {_first_line(exc)}"
                    ) from None
                warnings.warn(
                    f"MLflow run {self._run_id} is not in {self.tracking_uri}; logging to a new run instead",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._run_id, self._last_step, self._last_image = None, {}, {}
            else:
                self._server_params = dict(run.data.params)
                for key in run.data.metrics:
                    history = client.get_metric_history(self._run_id, key)
                    if history:
                        self._server_last[key] = max(m.step for m in history)
                for key, step in self._server_last.items():
                    self._last_step[key] = max(step, self._last_step.get(key, -1))
                if run.data.tags.get("mlflow.loggedImages"):
                    for key, step in self._server_image_steps().items():
                        self._last_image[key] = max(step, self._last_image.get(key, -1))
                if run.info.status != "RUNNING":
                    client.update_run(self._run_id, status="RUNNING")
        if self._run_id is None:
            run = client.create_run(self._experiment_id(), run_name=self.run_name, tags=self._tags)
            self._run_id = run.info.run_id
        self._attached = True
        self._write_state()

    def _server_image_steps(self) -> dict[str, int]:
        """The last step of each step image the run holds, read from MLflow's file names
        (``images/<key with / as ~>+step+<N>+timestamp+...``; older MLflow used ``%``)."""
        last: dict[str, int] = {}
        for item in self._client.list_artifacts(self._run_id, "images"):
            m = _IMAGE_FILE.match(Path(item.path).name)
            if m:
                key = m.group(1).replace("~", "/").replace("#", "/")
                last[key] = max(int(m.group(2)), last.get(key, -1))
        return last

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = self._artifact_root.as_uri() if self._artifact_root is not None else None
        try:
            return self._client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException as exc:  # another process created it between our two calls
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise exc from None
            return exp.experiment_id

    def _send(self, record: Mapping[str, Any], *, image: Any = None) -> Any:
        from mlflow.entities import Metric, Param

        client, run_id, kind = self._client, self._run_id, record["kind"]
        assert run_id is not None  # _attach ran first
        if kind == "params":
            fresh, changed = [], []
            for key, value in record["params"].items():
                old = self._server_params.get(key)
                if old is None:
                    fresh.append(Param(key, value))
                elif old != value:
                    changed.append(key)
            for i in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
                chunk = fresh[i : i + MAX_PARAMS_PER_BATCH]
                client.log_batch(run_id, params=chunk)
                self._server_params.update({p.key: p.value for p in chunk})
            if changed:
                warnings.warn(
                    f"MLflow params cannot change within a run; kept the logged values of {', '.join(changed[:5])}"
                    + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""),
                    RuntimeWarning,
                    stacklevel=5,
                )
        elif kind == "metrics":
            step, ts = record["step"], record["timestamp"]
            metrics = [
                Metric(k, v, ts, step)
                for k, v in record["values"].items()
                if step > self._server_last.get(k, -1)
            ]
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
        elif kind == "image":
            if image is None:
                from PIL import Image

                with Image.open(record["file"]) as img:
                    image = img.copy()
            client.log_image(
                run_id, image, key=record["key"], step=record["step"], timestamp=record["timestamp"]
            )
        elif kind == "artifact":
            src = Path(record["path"])
            if not src.exists():
                raise FileNotFoundError(f"artifact {src} was removed before it could be uploaded")
            if src.is_dir():
                client.log_artifacts(run_id, str(src), record["artifact_path"] or None)
            else:
                client.log_artifact(run_id, str(src), record["artifact_path"] or None)
        elif kind == "model":
            return self._send_model(record)
        elif kind == "end":
            client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
        else:
            raise ValueError(f"unknown tracking record kind {kind!r}")
        return None

    def _send_model(self, record: Mapping[str, Any]) -> int:
        from mlflow.exceptions import MlflowException

        client, name = self._client, record["name"]
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if _is_outage(exc):
                raise
            try:
                client.create_registered_model(name)
            except MlflowException as again:  # created concurrently
                if _is_outage(again):
                    raise
        source = f"runs:/{self._run_id}/{record['artifact_path']}"
        aliases = list(record["aliases"])
        score = record.get("score")
        if score is not None and "best" not in aliases and self._beats_best(name, float(score)):
            aliases.append("best")
        version = client.create_model_version(
            name, source, run_id=self._run_id, tags=record["tags"] or None, await_creation_for=0
        )
        for alias in aliases:
            client.set_registered_model_alias(name, alias, version.version)
        return int(version.version)

    def _beats_best(self, name: str, score: float) -> bool:
        """True when no version of ``name`` has the ``best`` alias, or its ``slas.score`` is lower (or absent)."""
        from mlflow.exceptions import MlflowException

        try:
            current = self._client.get_model_version_by_alias(name, "best")
        except MlflowException as exc:
            if _is_outage(exc):
                raise
            return True  # no version has the alias yet
        old = (current.tags or {}).get(SCORE_TAG)
        try:
            return old is None or not score <= float(old)  # a NaN or unreadable old score loses too
        except ValueError:
            return True

    # ------------------------------------------------------------------ the on-disk buffer and state
    def _append(self, record: dict[str, Any], image: Any) -> None:
        if record["kind"] == "image" and image is not None:
            self.buffer_files.mkdir(parents=True, exist_ok=True)
            name = f"{_safe_name(record['key'])}_step{record['step']:06d}_{uuid.uuid4().hex[:8]}.png"
            image.save(self.buffer_files / name)
            record = {**record, "file": str(self.buffer_files / name)}
        with self.buffer_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._buffered += 1

    def _count_buffered(self) -> int:
        if not self.buffer_path.is_file():
            return 0
        return sum(1 for line in self.buffer_path.read_text(encoding="utf-8").splitlines() if line.strip())

    def _replay(self) -> None:
        """Send buffered records oldest first; on a new outage keep the unsent rest for next time.

        An ``end`` record left by an earlier session is dropped: this session is the run's live one now.
        A record the server keeps answering with an error (5xx) is dropped after ``max_replay_tries``.
        """
        if not self._buffered:
            return
        records = []
        for line in self.buffer_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash mid-write
                records.append(json.loads(line))
        for i, record in enumerate(records):
            try:
                if record["kind"] != "end" or self._closing:
                    with self._http(record):
                        self._send(record)
            except Exception as exc:
                if _is_outage(exc):
                    record["tries"] = record.get("tries", 0) + int(_server_answered(exc))
                    if record["tries"] < self.max_replay_tries:
                        self._rewrite_buffer(records[i:])
                        raise
                # a record that fails for any other reason would block the buffer forever
                warnings.warn(
                    f"dropped buffered {record.get('kind')} record: {_first_line(exc)}",
                    RuntimeWarning,
                    stacklevel=5,
                )
            if record.get("file"):
                Path(record["file"]).unlink(missing_ok=True)
        self._rewrite_buffer([])

    def _rewrite_buffer(self, records: list[dict[str, Any]]) -> None:
        if not records:
            self.buffer_path.unlink(missing_ok=True)
            shutil.rmtree(self.buffer_files, ignore_errors=True)
        else:
            tmp = self.buffer_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, self.buffer_path)
        self._buffered = len(records)

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_state(self) -> None:
        state = {
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "run_id": self._run_id,
            "last_step": self._last_step,
            "last_image_step": self._last_image,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_path)


@contextlib.contextmanager
def _sqlite_init_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise first contact with a local SQLite store: MLflow creates its tables on first use without a
    lock, so two jobs starting at once on a fresh store would race to create them."""
    if not tracking_uri.startswith("sqlite:///") or os.name == "nt":
        yield
        return
    with file_lock(f"{Path(tracking_uri.removeprefix('sqlite:///'))}.init.lock"):
        yield


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------- fan-out


class TeeTracker:
    """Sends every call to several trackers (``metrics.jsonl`` and MLflow); one failing does not starve the rest.

    Optional calls (``log_image``, ``register_model``) go to the trackers that have them.
    """

    def __init__(self, *trackers: Any) -> None:
        self.trackers = [t for t in trackers if t is not None]

    @property
    def run_id(self) -> str | None:
        """The first child's MLflow run id (what the job store records), or ``None``."""
        return next((t.run_id for t in self.trackers if getattr(t, "run_id", None)), None)

    @property
    def mlflow(self) -> MLflowTracker | None:
        return next((t for t in self.trackers if isinstance(t, MLflowTracker)), None)

    def _fan(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result, error = None, None
        for tracker in self.trackers:
            fn = getattr(tracker, method, None)
            if fn is None:
                continue
            try:
                out = fn(*args, **kwargs)
                result = out if result is None else result
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return result

    def log_params(self, params: dict[str, Any]) -> None:
        self._fan("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._fan("log_metrics", metrics, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._fan("log_artifact", path)

    def log_image(self, image: Any, key: str, step: int) -> None:
        self._fan("log_image", image, key=key, step=step)

    def register_model(
        self,
        name: str,
        path: str | Path,
        aliases: Sequence[str] = ("latest",),
        best: bool = False,
        tags: Mapping[str, str] | None = None,
        score: float | None = None,
    ) -> int | None:
        """See :meth:`MLflowTracker.register_model`; ``None`` when no child registers models."""
        return self._fan("register_model", name, path, aliases=aliases, best=best, tags=tags, score=score)

    def close(self, status: str = "FINISHED") -> None:
        self._fan("close", status=status)


def mlflow_enabled() -> bool:
    """MLflow tracking is on unless ``SLAS_MLFLOW`` is ``0``/``false``/``off`` (JSONL only)."""
    return os.environ.get("SLAS_MLFLOW", "1").strip().lower() not in ("0", "false", "off", "no")


def make_tracker(
    run_dir: str | Path,
    *,
    params: Mapping[str, Any] | None,
    run_name: str | None,
    run_id: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    mlflow: bool | None = None,
    **mlflow_options: Any,
) -> TeeTracker:
    """The run's tracker: ``metrics.jsonl`` in ``run_dir`` plus MLflow, with ``params`` already logged.

    ``run_id`` reopens an MLflow run (resume); ``tee.run_id`` is the id for the job store. The experiment
    is ``experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else ``slas``. ``mlflow=None`` follows ``SLAS_MLFLOW``;
    ``mlflow_options`` go to :class:`MLflowTracker` (``retry_interval``, ``http_timeout``, ``tags``, ...).
    """
    trackers: list[Any] = [JsonlTracker(run_dir)]
    if mlflow if mlflow is not None else mlflow_enabled():
        trackers.append(
            MLflowTracker(
                run_dir,
                experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "slas",
                run_name=run_name,
                run_id=run_id,
                tracking_uri=tracking_uri,
                **mlflow_options,
            )
        )
    tee = TeeTracker(*trackers)
    if params:
        tee.log_params(dict(params))
    return tee
