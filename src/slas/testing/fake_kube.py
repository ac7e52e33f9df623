"""A fake Kubernetes API server on loopback, for testing the kubernetes job backend without a cluster.

It is a real HTTP server answering the REST calls the backend makes (Jobs, ConfigMaps, Services, Pods and pod
logs, in namespaces) the way the API server does: JSON objects with uids, 404/409 ``Status`` bodies, label
selectors, merge patches. It records every request (method, path, query, content type, body) so that tests can
check what was created. The Job controller is not simulated: tests add pods and set Job conditions themselves.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

#: REST collection name -> (API prefix, kind)
COLLECTIONS = {
    "jobs": ("/apis/batch/v1", "Job"),
    "configmaps": ("/api/v1", "ConfigMap"),
    "services": ("/api/v1", "Service"),
    "pods": ("/api/v1", "Pod"),
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    authorization: str | None
    body: Any


@dataclass
class FakeKube:
    """The server's state: objects by (collection, namespace, name), pod logs, recorded requests."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (method, collection) -> (code, message)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ test helpers
    def created(self, kind: str) -> list[dict[str, Any]]:
        """Bodies of the POSTs that created objects of ``kind``, in order."""
        collection = next(c for c, (_, k) in COLLECTIONS.items() if k == kind)
        return [r.body for r in self.requests if r.method == "POST" and r.path.endswith(f"/{collection}")]

    def calls(self, method: str, collection: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and f"/{collection}" in r.path]

    def get(self, collection: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((collection, namespace, name))

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], *, phase: str = "Running",
                log: str = "") -> None:
        """A pod as the Job controller would create it (the fake has no controller)."""
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": labels, "uid": str(uuid.uuid4()),
                            "creationTimestamp": _now()},
               "spec": {"containers": [{"name": "train", "image": "slas"}]}, "status": {"phase": phase}}
        with self.lock:
            self.objects[("pods", namespace, name)] = pod
            self.logs[(namespace, name)] = log

    def set_job_status(self, namespace: str, name: str, **status: Any) -> None:
        with self.lock:
            self.objects[("jobs", namespace, name)]["status"] = status

    def kubeconfig(self, path: Path, *, namespace: str = "default", token: str = "fake-token") -> Path:
        """A kubeconfig file pointing at this server (what ``KUBECONFIG`` names)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        return path


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


def _handler(state: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            query = parse_qs(parts.query)
            state.requests.append(Request(method, parts.path, query, self.headers.get("Content-Type"),
                                          self.headers.get("Authorization"), body))
            segs = parts.path.strip("/").split("/")
            try:
                ns_at = segs.index("namespaces")
                namespace, collection, rest = segs[ns_at + 1], segs[ns_at + 2], segs[ns_at + 3:]
            except (ValueError, IndexError):
                return self._send(404, _status(404, "NotFound", f"no route {parts.path}"))
            if collection not in COLLECTIONS:
                return self._send(404, _status(404, "NotFound", f"no resource {collection}"))
            if (method, collection) in state.fail:
                code, message = state.fail[(method, collection)]
                return self._send(code, _status(code, "Forbidden" if code == 403 else "Error", message))
            api, kind = COLLECTIONS[collection]
            with state.lock:
                if not rest:
                    if method == "GET":
                        selector = (query.get("labelSelector") or [None])[0]
                        items = [o for (c, n, _), o in sorted(state.objects.items())
                                 if c == collection and n == namespace
                                 and _matches(o["metadata"].get("labels", {}), selector)]
                        return self._send(200, {"kind": f"{kind}List", "apiVersion": api.split("/", 2)[-1],
                                                "metadata": {"resourceVersion": "1"}, "items": items})
                    if method == "POST":
                        name = body["metadata"]["name"]
                        if (collection, namespace, name) in state.objects:
                            return self._send(409, _status(409, "AlreadyExists", f'{collection} "{name}" already exists'))
                        obj = json.loads(json.dumps(body))
                        obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
                        obj.setdefault("status", {})
                        state.objects[(collection, namespace, name)] = obj
                        return self._send(201, obj)
                    return self._send(405, _status(405, "MethodNotAllowed", method))
                name, sub = rest[0], rest[1:]
                key = (collection, namespace, name)
                if key not in state.objects:
                    return self._send(404, _status(404, "NotFound", f'{collection} "{name}" not found'))
                if sub == ["log"] and method == "GET":
                    return self._send(200, state.logs.get((namespace, name), ""), "text/plain")
                if method == "GET":
                    return self._send(200, state.objects[key])
                if method == "PATCH":
                    return self._send(200, _merge(state.objects[key], body or {}))
                if method == "DELETE":
                    obj = state.objects.pop(key)
                    return self._send(200, obj)
            return self._send(405, _status(405, "MethodNotAllowed", method))

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@contextmanager
def fake_kube_server() -> Iterator[FakeKube]:
    """A :class:`FakeKube` serving on 127.0.0.1 (a free port) for the duration of the block."""
    state = FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


__all__ = ["FakeKube", "Request", "fake_kube_server"]
