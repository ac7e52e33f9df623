"""MLflow as a tracker: a run attached (created, or reopened on resume) and every record sent through one
guarded path that falls back to the offline buffer while the store is away.

What to send, when, and what to do when it fails is here; where the store is lives in
:mod:`~slas.platform.tracking.mlflow_store`, the calls that send each record in
:mod:`~slas.platform.tracking.mlflow_run` and :mod:`~slas.platform.tracking.registry`, what waits on disk
in :mod:`~slas.platform.tracking.buffer`, and what counts as an outage in :mod:`~slas.platform.tracking.outage`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slas.config import flatten
from slas.credentials import redact_text, redact_url
from slas.errors import one_line
from slas.images import to_pil
from slas.platform.tracking import mlflow_run, registry
from slas.platform.tracking.buffer import RecordBuffer
from slas.platform.tracking.mlflow_store import default_tracking_uri, first_open_lock, local_artifact_root
from slas.platform.tracking.outage import TrackingError, TrackingServerUnavailable, http_limits, is_outage

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _now_ms() -> int:
    return int(time.time() * 1000)


def _masked(exc: Any) -> Any:
    """An MLflow error (same type, code and status) whose message shows no password, its causes dropped:
    MLflow and requests repeat the request URL in them."""
    exc.message = redact_text(str(exc.message))
    exc.args = (exc.message,)
    return exc


def _said(exc: BaseException) -> str:
    """An error's first line as a message may show it: MLflow's errors repeat the request URL, password and all."""
    return redact_text(one_line(exc))


class MLflowTracker:
    """Logs a run to MLflow and keeps logging (to disk) while the tracking server is away.

    Tracking URI: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in ``$SLAS_HOME`` (default
    ``./.slas``): ``mlflow.db`` with artifacts in ``mlartifacts/``. Passing ``run_id`` (or reopening the
    same ``run_dir``, whose ``mlflow_state.json`` remembers the run) continues that run (an unknown
    ``run_id`` is an error): a metric is never logged twice for a step, so a resumed trainer that repeats
    iterations after its last checkpoint adds no duplicate points.

    Every MLflow call goes through :meth:`_submit`. When the store is unreachable the record is appended
    to ``run_dir/mlflow_buffer.jsonl`` (images are saved beside it, artifacts keep their path), one
    :class:`TrackingServerUnavailable` warning is issued, and the server is not tried again for
    ``retry_interval`` seconds (doubling, up to ``max_retry_interval``, while it stays away, so a server
    that hangs costs at most one ``http_timeout`` per wait). The next call after that replays the buffer in
    order first.

    The tracking URI may carry a password: every message, warning and ``mlflow_state.json`` shows it
    masked (:func:`slas.credentials.redact_url`); a reopened run dir is matched to the store by the masked
    form, and the connection itself always uses the real URI from the argument or the environment.
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
        self.shown_uri = redact_url(self.tracking_uri)  # what messages and the state file say
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
        self._artifact_root = local_artifact_root(self.tracking_uri)
        if self._artifact_root is not None and self.tracking_uri.startswith("sqlite:///"):
            self._artifact_root.parent.mkdir(parents=True, exist_ok=True)

        state = self._read_state()
        same_store = state.get("tracking_uri") in (self.shown_uri, self.tracking_uri)  # masked, or an old file
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
        self._buffer = RecordBuffer(self.buffer_path, self.buffer_files)
        self._closed = self._closing = False
        with first_open_lock(self.tracking_uri):
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
        return self._buffer.count

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the (flattened) config; values are stringified and cut to MLflow's 6000 characters."""
        flat = {mlflow_run.clean_key(k): mlflow_run.param_value(v) for k, v in flatten(dict(params)).items()}
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
            clean = mlflow_run.clean_key(key)
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
        clean = mlflow_run.KEY_BAD_CHARS.sub("_", key)
        step = int(step)
        if step <= self._last_image.get(clean, -1):
            return
        record = {"kind": "image", "key": clean, "step": step, "timestamp": _now_ms()}
        self._submit(record, image=to_pil(image))
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
        return self._submit(registry.model_record(name, artifact_path, aliases, best, tags, score))

    def flush(self) -> bool:
        """Try the store now (ignoring ``retry_interval``) and replay the buffer; True when it is empty."""
        self._online(force=True)
        return self.buffered == 0

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``) after a last replay of the buffer."""
        if self._closed:
            return
        self._closing = True
        self._submit({"kind": "end", "status": status, "end_time": _now_ms()}, force=True)
        self._closed = True
        if self.buffered:
            warnings.warn(
                f"MLflow store {self.shown_uri} still unreachable at close: {self.buffered} tracking "
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
                if not is_outage(exc):
                    self._reject(record, exc)
                    return None
                self._go_offline(exc)
        self._buffer.append(record, image)
        return None

    def _online(self, *, force: bool = False) -> bool:
        """Attach the run and replay the buffer; False while the store is (recently found) unreachable."""
        if self._offline and not force and time.monotonic() - self._failed_at < self._wait():
            return False
        from mlflow.exceptions import MlflowException

        try:
            with self._http({"kind": "attach"}):
                self._attach()
                self._buffer.replay(self._resend, max_tries=self.max_replay_tries)
        except Exception as exc:
            if isinstance(exc, MlflowException) and not is_outage(exc):  # refused; its text names the URL
                raise _masked(exc) from None
            if not is_outage(exc):
                raise
            self._go_offline(exc)
            return False
        self._offline, self._failures = False, 0
        return True

    def _resend(self, record: dict[str, Any]) -> None:
        """Send a buffered record; an ``end`` left by an earlier session is skipped (this session is the
        run's live one now) unless this session is closing."""
        if record["kind"] != "end" or self._closing:
            with self._http(record):
                self._send(record)

    def _wait(self) -> float:
        """Seconds to leave the store alone after a failure: ``retry_interval``, doubling while it stays away."""
        grown = self.retry_interval * 2 ** min(max(self._failures - 1, 0), 16)
        return min(grown, max(self.max_retry_interval, self.retry_interval))

    def _http(self, record: Mapping[str, Any]) -> contextlib.AbstractContextManager[None]:
        """Short HTTP timeouts and retries so a dead server costs a training step seconds, not minutes."""
        timeout = self.artifact_timeout if record.get("kind") in ("artifact", "image") else self.http_timeout
        return http_limits(timeout, self.http_retries)

    def _go_offline(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._failures += 1
        if not self._offline:
            self._offline = True
            warnings.warn(
                f"MLflow tracking store {self.shown_uri} is unreachable ({_said(exc)}); the run goes on "
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
            f"MLflow rejected a {record.get('kind')} record and it was dropped: {_said(exc)}",
            RuntimeWarning,
            stacklevel=4,
        )

    # ------------------------------------------------------------------ talking to MLflow
    def _attach(self) -> None:
        """Create the run, or reopen ``run_id`` and learn which steps and params it already holds."""
        if self._attached:
            return
        from mlflow.exceptions import MlflowException

        if self._run_id is not None:
            try:
                run = self._client.get_run(self._run_id)
            except MlflowException as exc:
                if is_outage(exc):
                    raise
                self._lost_run(exc)
            else:
                self._learn_run(run)
        if self._run_id is None:
            experiment_id = mlflow_run.experiment_id(self._client, self.experiment, self._artifact_root)
            run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self._tags)
            self._run_id = run.info.run_id
        self._attached = True
        self._write_state()

    def _lost_run(self, exc: BaseException) -> None:
        """The run to continue is not in the store: an error for an explicit ``run_id`` at start, else a
        warning and a new run (the store was reset, or the run dir was copied from another store)."""
        if self._explicit_run and self._constructing:
            raise TrackingError(
                f"MLflow run {self._run_id} not found in {self.shown_uri}: {_said(exc)}"
            ) from None
        warnings.warn(
            f"MLflow run {self._run_id} is not in {self.shown_uri}; logging to a new run instead",
            RuntimeWarning,
            stacklevel=5,
        )
        self._run_id, self._last_step, self._last_image = None, {}, {}

    def _learn_run(self, run: Any) -> None:
        """Note the params and last steps a reopened run already holds, so none is sent twice; mark it running."""
        self._server_params = dict(run.data.params)
        self._server_last = mlflow_run.metric_steps(self._client, run)
        for key, step in self._server_last.items():
            self._last_step[key] = max(step, self._last_step.get(key, -1))
        if run.data.tags.get("mlflow.loggedImages"):
            for key, step in mlflow_run.image_steps(self._client, self._run_id).items():
                self._last_image[key] = max(step, self._last_image.get(key, -1))
        if run.info.status != "RUNNING":
            self._client.update_run(self._run_id, status="RUNNING")

    def _send(self, record: Mapping[str, Any], *, image: Any = None) -> Any:
        """Carry out one record against the store (the run is attached); a model record returns its version."""
        client, run_id, kind = self._client, self._run_id, record["kind"]
        assert run_id is not None  # _attach ran first
        if kind == "params":
            mlflow_run.send_params(client, run_id, record["params"], self._server_params)
        elif kind == "metrics":
            mlflow_run.send_metrics(client, run_id, record, self._server_last)
        elif kind == "image":
            mlflow_run.send_image(client, run_id, record, image)
        elif kind == "artifact":
            mlflow_run.send_artifact(client, run_id, record)
        elif kind == "model":
            return registry.create_version(client, run_id, record)
        elif kind == "end":
            client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
        else:
            raise ValueError(f"unknown tracking record kind {kind!r}")
        return None

    # ------------------------------------------------------------------ the run dir's memory of the run
    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_state(self) -> None:
        """Remember the store (password masked), run id and last logged steps in ``mlflow_state.json`` (atomically)."""
        state = {
            "tracking_uri": self.shown_uri,
            "experiment": self.experiment,
            "run_id": self._run_id,
            "last_step": self._last_step,
            "last_image_step": self._last_image,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_path)
