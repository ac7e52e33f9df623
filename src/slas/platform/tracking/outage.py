"""When the MLflow store is away: telling an outage (retry later) from a rejected request (never retry),
and the short HTTP limits that keep a dead server from stalling a training step for minutes.

A tracker that mistook a rejection for an outage would buffer a record forever; one that mistook an
outage for a rejection would drop records a restarted server could still take. Both decisions are here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from slas.errors import SlasError

# the environment variables MLflow's HTTP client reads for every request
HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)


class TrackingError(SlasError, RuntimeError):
    """A tracking request that can never succeed (bad run id, rejected value), as opposed to an outage."""


class TrackingServerUnavailable(RuntimeWarning):
    """Warned once per outage: the run goes on and tracking records wait on disk."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (bounded: chains can in rare cases loop)."""
    seen: BaseException | None = exc
    for _ in range(32):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (not its causes) says no answer came: refused, reset or timed out."""
    import requests

    return isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError | TimeoutError
    )


def is_outage(exc: BaseException) -> bool:
    """True for errors that mean "the store is away or overloaded" (retry later), not "request rejected"."""
    from mlflow.exceptions import MlflowException

    for seen in _chain(exc):
        if _unreachable(seen):
            return True
        if isinstance(seen, MlflowException) and seen.get_http_status_code() >= 500:
            return True
    return False


def server_answered(exc: BaseException) -> bool:
    """For an outage: True when the server replied (5xx) rather than being unreachable.

    Only answered failures count towards dropping a buffered record: a record the server keeps refusing
    with a 5xx would block the buffer forever, while one that never reached the server may still succeed.
    """
    return not any(_unreachable(seen) for seen in _chain(exc))


@contextlib.contextmanager
def http_limits(timeout: int, retries: int) -> Iterator[None]:
    """MLflow's HTTP timeout (seconds) and retries set for the calls inside, the previous values restored after.

    MLflow's defaults retry for minutes; a trainer would stall that long on every step of an outage.
    """
    wanted = (str(retries), str(max(1, int(timeout))), "0", "0")
    saved = {k: os.environ.get(k) for k in HTTP_ENV}
    os.environ.update(dict(zip(HTTP_ENV, wanted, strict=True)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
