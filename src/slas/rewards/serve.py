"""The reward server behind ``slas reward serve SPEC --port N``: any registered reward over HTTP.

A stdlib :class:`~http.server.ThreadingHTTPServer` (one thread per connection, nothing to install) in
front of ONE scoring thread that owns the reward (so a GPU judge is never called concurrently):

* ``POST /score``: the JSON body of :func:`slas.rewards.remote.encode_request`; answers
  ``{"scores": {label: [float | null], "total": [...]}, "parts": [{key: [...]}, ...], "components": [...],
  "n": N}``: every component's outputs labelled as :class:`~slas.rewards.registry.CompositeReward`
  labels them, the served spec's weighted total, and each component's outputs under its own keys
  (``parts``, in the order of ``components``: what a ``backend: remote`` component returns);
* ``GET /health``: ``{"status": "ok", "components", "queued", "scoring", "auth"}`` (``auth``: whether
  the request's token is accepted; /health itself needs none, so a load balancer can probe it).

Requests are **batched**: the scoring thread takes the oldest waiting request and merges the later
ones that fit (same image size and the same conditions) up to ``batch_size`` images, one reward call
for all of them (``group_ids`` are offset per request, so groups never merge; a request larger than
``batch_size`` is scored whole). When a merged call fails, each request is scored alone, so one bad
request cannot fail the others. The **queue is bounded**: with ``max_queue`` requests already waiting
(not counting the ones being scored) a request is answered ``503`` at once, with ``Retry-After``.
Each request has a **timeout** (``timeout`` seconds from its arrival): past it, the answer is ``504``
and the request is dropped from the queue (or its result discarded when it is being scored).

**Auth**: with a token (``$SLAS_REWARD_TOKEN`` or ``--token-file``), ``/score`` needs
``Authorization: Bearer <token>`` (``401`` otherwise; compared in constant time). Binding anything but
a loopback address without a token is refused at start (:func:`check_bind`). Bad requests are ``400``
with a one-line ``{"error": ...}``; bodies over :data:`MAX_BODY_BYTES` are ``413``; a reward that
raises answers ``500`` with its one-line error. A connection that stalls for 120 s is dropped (no thread
is held forever). TLS is a reverse proxy's job (the client speaks https).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch import Tensor

from slas.errors import SlasError, one_line
from slas.rewards.registry import CompositeReward
from slas.rewards.remote import IMAGE_SUFFIX, RemoteRewardError, decode_image

__all__ = ["MAX_BODY_BYTES", "RewardServer", "ServeError", "check_bind", "is_loopback"]

MAX_BODY_BYTES = 256 * 1024 * 1024  # a batch of 32 edits with person and product at 1024 px is ~150 MB of base64


class ServeError(SlasError, ValueError):
    """A server that must not start (an open bind without a token, bad limits); one line saying why."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to an outside address


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve rewards to the network without a token (anyone could spend the judge's GPU)."""
    if not token and not is_loopback(host):
        raise ServeError(f"refusing to serve on {host} without a token: set SLAS_REWARD_TOKEN or --token-file "
                         "(only a loopback --host such as 127.0.0.1 may run without one)")


class BadRequest(SlasError, ValueError):
    """A request the server cannot score (400); one line naming the field."""


@dataclass(eq=False)  # jobs are compared by identity (deque.remove), never by their tensors
class _Job:
    """One scoring request between its handler thread and the scoring thread."""

    images: Tensor
    prompts: list[str]
    conditions: dict[str, Any]
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: str | None = None
    abandoned: bool = False

    @property
    def n(self) -> int:
        return self.images.shape[0]

    def key(self) -> tuple:
        """Requests with equal keys can share one reward call."""
        return tuple(self.images.shape[1:]), tuple(sorted(self.conditions))


def parse_request(body: Any, deadline: float) -> _Job:
    """A ``POST /score`` body as a job (:class:`BadRequest` naming the field when it cannot be)."""
    from slas.images import to_tensor

    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with prompts, images and conditions")
    images, prompts, conditions = body.get("images"), body.get("prompts"), body.get("conditions") or {}
    if not isinstance(images, list) or not images:
        raise BadRequest("images: expected a non-empty list of base64 PNGs")
    n = len(images)
    if not isinstance(prompts, list) or len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(f"prompts: expected a list of {n} strings (one per image)")
    if not isinstance(conditions, dict):
        raise BadRequest("conditions: expected a JSON object")
    try:
        tensors = [to_tensor(decode_image(im, f"images[{i}]")) for i, im in enumerate(images)]
        decoded = {name: _condition(name, value, n) for name, value in conditions.items()}
    except RemoteRewardError as exc:
        raise BadRequest(str(exc)) from None
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise BadRequest("images: every image of one request must have the same size")
    return _Job(torch.stack(tensors), prompts, decoded, deadline)


def _condition(name: str, value: Any, n: int) -> Any:
    """One condition as the reward expects it: ``*_images`` as RGB PIL lists, ``group_ids`` as a long tensor."""
    if not isinstance(value, list) or len(value) != n:
        raise BadRequest(f"conditions.{name}: expected a list of {n} values (one per image)")
    if name.endswith(IMAGE_SUFFIX):
        return [decode_image(v, f"conditions.{name}[{i}]") for i, v in enumerate(value)]
    if name == "group_ids":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise BadRequest("conditions.group_ids: expected integers")
        return torch.tensor(value, dtype=torch.long)
    return value


def _merge(jobs: list[_Job]) -> tuple[Tensor, list[str], dict[str, Any]]:
    """One reward call's inputs from compatible jobs (``group_ids`` offset so no two requests share a group)."""
    images = torch.cat([j.images for j in jobs])
    prompts = [p for j in jobs for p in j.prompts]
    conditions: dict[str, Any] = {}
    for name in jobs[0].conditions:
        if name == "group_ids":
            parts, offset = [], 0
            for j in jobs:
                ids = j.conditions[name]
                parts.append(ids - ids.min() + offset)
                offset = int(parts[-1].max()) + 1
            conditions[name] = torch.cat(parts)
        else:
            conditions[name] = [v for j in jobs for v in j.conditions[name]]
    return images, prompts, conditions


def _as_json(values: Tensor) -> list[float | None]:
    """Scores as JSON numbers (``null`` for NaN/inf, which JSON cannot hold)."""
    return [v if math.isfinite(v) else None for v in values.detach().float().cpu().reshape(-1).tolist()]


class RewardServer:
    """A reward behind HTTP: the batching queue, the scoring thread and the HTTP threads (see the module docstring).

    ``reward`` is a built :class:`~slas.rewards.registry.CompositeReward` (``slas.rewards.build(spec)``);
    its component names are what /health reports. ``start()`` serves in background threads (tests);
    ``serve_forever()`` serves in the calling thread until ``close()`` or Ctrl-C.
    """

    def __init__(self, reward: CompositeReward, *, host: str = "127.0.0.1",
                 port: int = 0, batch_size: int = 16, max_queue: int = 16, timeout: float = 300.0,
                 token: str | None = None) -> None:
        check_bind(host, token)
        if batch_size < 1 or max_queue < 1 or not timeout > 0:
            raise ServeError(f"batch_size and max_queue must be >= 1 and timeout > 0 (got {batch_size}, {max_queue}, "
                             f"{timeout})")
        self.reward, self.components = reward, [name for name, _, _ in reward.components]
        self.batch_size, self.max_queue, self.timeout, self.token = batch_size, max_queue, float(timeout), token
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._scoring = 0
        self._stopped = False
        self.calls = 0  # reward calls made (each may hold several requests)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._worker = threading.Thread(target=self._score_loop, name="reward-scorer", daemon=True)
        self._http_thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> RewardServer:
        """Serve in background threads; returns self (``url`` has the bound port)."""
        self._worker.start()
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, name="reward-http", daemon=True)
        self._http_thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` (from another thread) or KeyboardInterrupt."""
        self._worker.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Stop accepting, fail what waits (503), stop the scoring thread."""
        with self._cond:
            self._stopped = True
            while self._pending:
                job = self._pending.popleft()
                job.error = "the server is shutting down"
                job.done.set()
            self._cond.notify_all()
        if self._http_thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ queue
    def submit(self, job: _Job) -> bool:
        """Queue ``job``; False when ``max_queue`` requests already wait (the caller answers 503)."""
        with self._cond:
            if self._stopped or len(self._pending) >= self.max_queue:
                return False
            self._pending.append(job)
            self._cond.notify_all()
            return True

    def abandon(self, job: _Job) -> None:
        """A timed-out job: drop it from the queue (or let the scorer discard its result)."""
        with self._cond:
            job.abandoned = True
            if job in self._pending:
                self._pending.remove(job)

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"status": "ok", "components": self.components, "queued": len(self._pending),
                    "scoring": self._scoring, "batch_size": self.batch_size, "max_queue": self.max_queue}

    def _take_batch(self) -> list[_Job] | None:
        """The oldest live job and the later compatible ones, up to ``batch_size`` images (None when stopping)."""
        with self._cond:
            while True:
                now = time.monotonic()
                while self._pending and (self._pending[0].abandoned or self._pending[0].deadline <= now):
                    self._pending.popleft().abandoned = True
                if self._stopped:
                    return None
                if self._pending:
                    break
                self._cond.wait(timeout=0.5)
            first = self._pending.popleft()
            batch, n = [first], first.n
            for job in list(self._pending):
                if n >= self.batch_size:
                    break
                if job.key() == first.key() and n + job.n <= self.batch_size and not job.abandoned:
                    self._pending.remove(job)
                    batch.append(job)
                    n += job.n
            self._scoring = len(batch)
            return batch

    def _score_loop(self) -> None:
        """The scoring thread: one reward call per batch, results back to each request's handler."""
        while (batch := self._take_batch()) is not None:
            try:
                self._score(batch)
            except Exception as exc:  # a bug here must not leave every later request waiting for a dead thread
                for job in batch:
                    job.error = f"scoring failed: {one_line(exc, with_type=True)}"
                print(f"slas reward serve: {batch[0].error}", file=sys.stderr, flush=True)
            finally:
                with self._cond:
                    self._scoring = 0
                for job in batch:
                    job.done.set()

    def _score(self, batch: list[_Job]) -> None:
        """Score ``batch`` in one call; after a failure of a merged call, each job alone."""
        try:
            self.calls += 1
            images, prompts, conditions = _merge(batch)
            parts = self.reward.parts(images, prompts, **conditions)
            scores = self.reward.combine(parts, images.shape[0], conditions.get("group_ids"))
        except Exception as exc:  # (a reward's failure is answered, never kills the server)
            if len(batch) > 1:
                for job in batch:
                    self._score([job])
                return
            batch[0].error = one_line(exc, with_type=True)
            return
        start = 0
        for job in batch:
            cut = slice(start, start + job.n)
            job.result = {"scores": {label: _as_json(values[cut]) for label, values in scores.items()},
                          "parts": [{key: _as_json(values[cut]) for key, values in p.items()} for p in parts]}
            start += job.n

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (always, when the server has none)."""
        if not self.token:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


def _handler(server: RewardServer) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``server``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "slas-reward"
        timeout = 120  # seconds a connection may sit idle or stall mid-body before its thread gives it up

        def log_message(self, format: str, *args: Any) -> None:  # the stdlib names it format
            """Only failures are logged (one line each); a healthy server is quiet."""

        def _send(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            if status >= 500 or status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.BAD_REQUEST):
                print(f"slas reward serve: {self.command} {self.path} -> {status} {payload.get('error', '')}",
                      file=sys.stderr, flush=True)

        def do_GET(self) -> None:  # the stdlib names the handlers do_<METHOD>
            if self.path.rstrip("/") != "/health":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}; use GET /health or POST /score"})
                return
            self._send(HTTPStatus.OK, {**server.status(), "auth": server.authorized(self.headers.get("Authorization"))})

        def do_POST(self) -> None:
            arrived = time.monotonic()
            if self.path.rstrip("/") != "/score":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}; use POST /score"})
                return
            if not server.authorized(self.headers.get("Authorization")):
                self.close_connection = True
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"},
                           {"WWW-Authenticate": "Bearer"})
                return
            body = self._read_body()
            if body is None:
                return
            try:
                job = parse_request(body, arrived + server.timeout)
            except BadRequest as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            if not server.submit(job):
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"the queue is full ({server.max_queue} requests "
                                                                     "waiting); try again"}, {"Retry-After": "1"})
                return
            if not job.done.wait(max(0.0, job.deadline - time.monotonic())):
                server.abandon(job)
                self._send(HTTPStatus.GATEWAY_TIMEOUT, {"error": f"not scored within {server.timeout:g} s"})
                return
            if job.result is None:
                status = HTTPStatus.SERVICE_UNAVAILABLE if server._stopped else HTTPStatus.INTERNAL_SERVER_ERROR
                self._send(status, {"error": job.error or "not scored"})
                return
            self._send(HTTPStatus.OK, {**job.result, "components": server.components, "n": job.n})

        def _read_body(self) -> Any:
            """The JSON body, or None after answering 411/413/400."""
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return None
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"body of {int(length)} bytes is over {MAX_BODY_BYTES}; send smaller batches"})
                return None
            try:
                return json.loads(self.rfile.read(int(length)))
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
                return None

    return Handler
