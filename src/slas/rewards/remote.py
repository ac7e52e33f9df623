"""Remote rewards: a reward component scored by a ``slas reward serve`` server (``backend: remote``).

A 7B-72B judge does not share the policy's GPUs in practice; it runs behind ``slas reward serve SPEC``
(:mod:`slas.rewards.serve`) on its own machine, and the training run's reward spec names it::

    reward:
      components:
        - name: mllm_judge            # a component of the served SPEC
          backend: remote
          url: http://judge-host:8700
          weight: {presence: 1.0, similarity: 1.0, interaction: 0.5}
          timeout: 120                # seconds per request
          retries: 1                  # extra tries of a failed request
          token_env: SLAS_REWARD_TOKEN   # or token_file: /secrets/reward-token
        - name: person_preservation   # local components mix freely with remote ones
          weight: 0.5

A remote component behaves exactly as the same component built locally: it returns the served
component's outputs under the same keys (its options live in the served spec, so ``options`` must be
empty here), and the local composite applies this config's ``weight`` (the server's weights and
``total`` are ignored). Scores equal local scoring of the same images as 8-bit PNGs (images travel
as PNG, see :func:`encode_request`).

Failures never stop a run: a server that is down, refuses, answers an error or does not answer
within ``timeout`` (after ``retries`` more tries) makes the component score NaN for every image of
that batch, so the composite's ``total`` is NaN, the advantages mask those samples and the trainer
counts them in ``reward/nonfinite``; one warning line says why. The next call (the next iteration)
tries the server again. The remote components of one spec on the same server (same url, token, timeout
and retries) share a :class:`RemoteSession`: ONE request per batch scores all of them (the server
scores its whole spec anyway), and a dead server costs one timeout and one warning per batch.

Connections are direct (``$HTTP_PROXY`` / ``$HTTPS_PROXY`` are not used); https URLs work (a TLS
proxy in front of the server). Preflight (:func:`preflight_remote`) checks that the URL is well formed
and the token file is readable (errors); it then asks the server's ``/health`` with a short timeout: a server that is not
up yet only warns (it may start after the run), a server that is up but does not serve the
component, or refuses the token, is an error.

Wire format (``POST {url}/score``, JSON; ``Authorization: Bearer <token>`` when a token is set)::

    {"prompts": [str] * N, "images": [base64 PNG] * N,
     "conditions": {"person_images": [base64 PNG] * N, "group_ids": [int] * N, ...}}

Conditions whose name ends in ``_images`` are image batches (a tensor ``[N, 3, H, W]`` in [0, 1] or
lists of PIL images, tensors or paths; sent as PNG, decoded by the server to lists of RGB PIL
images); ``group_ids`` arrives as a long tensor; any other condition must be JSON (tensors are sent as
lists). The answer is ``{"scores": {label: [float | null] * N, "total": [...]}, "parts": [{key: [...]}],
"components": [...], "n": N}`` (``null`` for a non-finite score; ``scores`` labelled as
:class:`~slas.rewards.registry.CompositeReward` labels them; ``parts``: each served component's outputs
under its own keys, in the order of ``components``, which is what a remote component returns).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from slas.errors import SlasError, one_line
from slas.preflight import PreflightError
from slas.rewards.options import load_image_batch

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "RemoteReward",
    "RemoteRewardError",
    "RemoteRewardWarning",
    "RemoteSession",
    "build_remote",
    "check_url",
    "decode_image",
    "encode_image",
    "encode_request",
    "health",
    "preflight_remote",
    "read_token",
]

DEFAULT_TOKEN_ENV = "SLAS_REWARD_TOKEN"
HEALTH_TIMEOUT = 3.0  # seconds: preflight must not hang on a server that is not there
# Direct connections only: $HTTP_PROXY would route the judge's traffic (and its token) through a proxy, and
# a proxy that does not exempt loopback turns a local server into a "down" one.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
IMAGE_SUFFIX = "_images"


class RemoteRewardError(SlasError, ValueError):
    """A remote reward's settings or a server's answer that cannot be used; one line naming it."""


class RemoteRewardWarning(UserWarning):
    """A remote reward batch scored NaN (the server was down, refused, failed or timed out)."""


# ----------------------------------------------------------------------------------------- wire format


def encode_image(image: Any) -> str:
    """One image (PIL, ``[3, H, W]`` tensor in [0, 1] or uint8) as base64 PNG text (8-bit, :mod:`slas.images` rounding)."""
    from slas.images import to_pil

    buf = io.BytesIO()
    to_pil(image).convert("RGB").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(text: Any, where: str):
    """Base64 PNG (or any format PIL reads) text as an RGB PIL image; :class:`RemoteRewardError` naming ``where``."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(text, str):
        raise RemoteRewardError(f"{where}: expected base64 image text, got {type(text).__name__}")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
        return image.convert("RGB")
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RemoteRewardError(f"{where}: not a base64 image ({one_line(exc)})") from None


def _encode_images(value: Any, n: int, name: str) -> list[str]:
    """An image batch condition (tensor, or list of PIL/tensors/paths) as ``n`` base64 PNGs."""
    from PIL import Image

    if isinstance(value, (list, tuple)) and all(isinstance(v, Image.Image) for v in value):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} images for {n} generated images")
        return [encode_image(v) for v in value]
    return [encode_image(t) for t in load_image_batch(value, n, name=name)]


def _jsonable(value: Any, name: str) -> Any:
    """A non-image condition as JSON (tensors as lists); ValueError naming it when it cannot be sent."""
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, name) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, name) for k, v in value.items()}
    raise ValueError(f"condition {name!r}: a {type(value).__name__} cannot be sent to a remote reward (JSON only)")


def encode_request(images: Tensor, prompts: list[str], conditions: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of ``POST /score`` (see the module docstring)."""
    n = images.shape[0]
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} images")
    cond = {
        name: _encode_images(value, n, name) if name.endswith(IMAGE_SUFFIX) else _jsonable(value, name)
        for name, value in conditions.items()
    }
    return {"prompts": list(prompts), "images": [encode_image(im) for im in images], "conditions": cond}


# ------------------------------------------------------------------------------------------ settings


def check_url(url: Any, where: str = "url") -> str:
    """``url`` without a trailing slash when it is ``http(s)://host[:port][/prefix]``; RemoteRewardError otherwise."""
    if not isinstance(url, str) or not url:
        raise RemoteRewardError(f"{where}: expected http://host:port, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise RemoteRewardError(f"{where}: {url!r} is not a URL ({one_line(exc)})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteRewardError(f"{where}: {url!r} is not an http(s)://host:port URL")
    if parts.query or parts.fragment:
        raise RemoteRewardError(f"{where}: {url!r} has a query or fragment; give the server's base URL")
    return url.rstrip("/")


def read_token(token_env: str = DEFAULT_TOKEN_ENV, token_file: str | os.PathLike | None = None) -> str | None:
    """The bearer token: the first line of ``token_file`` when given, else ``$token_env`` (None when unset)."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise RemoteRewardError(f"token_file {path}: cannot be read ({one_line(exc)})") from None
        if not token:
            raise RemoteRewardError(f"token_file {path}: is empty")
        return token
    return os.environ.get(token_env) or None


def _request(url: str, *, body: dict | None, token: str | None, timeout: float) -> dict[str, Any]:
    """One HTTP exchange; the answer's JSON object. Raises RemoteRewardError (status and server message) or OSError."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as exc:
        raise RemoteRewardError(f"HTTP {exc.code}: {_server_message(exc)}") from None
    try:
        answer = json.loads(payload)
    except ValueError:
        raise RemoteRewardError("the server's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise RemoteRewardError("the server's answer is not a JSON object")
    return answer


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The ``error`` text of a server's error answer (its reason phrase when there is none)."""
    try:
        return str(json.loads(exc.read()).get("error") or exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


def health(url: str, *, token: str | None = None, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """``GET {url}/health``: the server's status, served components, queue and whether ``token`` is accepted."""
    return _request(f"{check_url(url)}/health", body=None, token=token, timeout=timeout)


def preflight_remote(index: int, component: Any) -> None:
    """Preflight of remote component ``index``: URL and token file are errors; a server not up yet only warns."""
    where = f"reward.components.{index}"
    try:
        url = check_url(component.url, f"{where}.url")
        token = read_token(component.token_env, component.token_file)
    except RemoteRewardError as exc:
        raise PreflightError(str(exc) if str(exc).startswith(where) else f"{where}.{exc}") from None
    try:
        status = health(url, token=token)
    except (OSError, RemoteRewardError) as exc:
        warnings.warn(f"{where}: the reward server at {url} does not answer now ({_reason(exc)}); its component "
                      f"{component.name!r} scores NaN until it does", RemoteRewardWarning, stacklevel=2)
        return
    served = status.get("components") or []
    if component.name not in served:
        raise PreflightError(f"{where}.name: the server at {url} serves {served}, not {component.name!r}")
    if not status.get("auth", True):
        raise PreflightError(f"{where}: the server at {url} refuses the token (set ${component.token_env} or "
                             "token_file to the server's token)")


def _reason(exc: BaseException) -> str:
    """Why a request failed, in a few words (``timed out``, ``connection refused``, ``HTTP 503: ...``)."""
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return one_line(exc)


# ------------------------------------------------------------------------------------------- client


class RemoteSession:
    """One server as the remote components of one composite see it: ONE request per batch for all of them.

    The composite calls its components one after another with the same ``images``, ``prompts`` and
    conditions; the first remote component's call sends the request and the others on the same server
    reuse its answer (or its failure: a dead server costs one timeout per batch, and one warning line,
    however many of its components the spec names). The last batch is recognised by content: equal
    image tensors and prompts, and the same condition objects (a caller that refills one buffer in place
    gets a fresh request).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 120.0, retries: int = 1) -> None:
        self.url = check_url(url)
        self.token = token
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.batches = 0  # batches sent
        self.failures = 0  # batches that scored NaN
        self._last: tuple[tuple, dict[str, Any] | None] | None = None

    def answer(self, images: Tensor, prompts: list[str], conditions: Mapping[str, Any]) -> dict[str, Any] | None:
        """The server's answer for this batch (cached for the batch), or None after a failure (warned once)."""
        if self._last is not None and _same_batch(self._last[0], images, prompts, conditions):
            return self._last[1]
        self.batches += 1
        body = encode_request(images, prompts, conditions)  # a bad condition is the caller's bug: it raises
        error: BaseException | None = None
        answer = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                answer = _request(f"{self.url}/score", body=body, token=self.token, timeout=self.timeout)
                break
            except (OSError, RemoteRewardError) as exc:  # URLError, timeouts and resets are OSErrors
                error = exc
        if answer is None:
            self.failures += 1
            warnings.warn(f"remote reward server {self.url}: batch {self.batches} ({images.shape[0]} images) scored NaN "
                          f"after {self.retries + 1} tr{'y' if self.retries == 0 else 'ies'}: {_reason(error)}",
                          RemoteRewardWarning, stacklevel=3)
        self._last = (_snapshot(images, prompts, conditions), answer)
        return answer


def _snapshot(images: Tensor, prompts: list[str], conditions: Mapping[str, Any]) -> tuple:
    """What :func:`_same_batch` compares a later call with: copies of the images, prompts and condition lists."""
    cond = {k: v.detach().clone() if isinstance(v, Tensor) else list(v) if isinstance(v, (list, tuple)) else v
            for k, v in conditions.items()}
    return images.detach().clone(), list(prompts), cond


def _same_batch(last: tuple, images: Tensor, prompts: list[str], conditions: Mapping[str, Any]) -> bool:
    """Whether a call carries the batch of :func:`_snapshot` ``last`` (as a composite calls each component)."""
    last_images, last_prompts, last_cond = last
    if last_images.shape != images.shape or list(prompts) != last_prompts or last_cond.keys() != conditions.keys():
        return False
    if not torch.equal(last_images, images.detach().to(last_images.device)):
        return False
    for k, v in conditions.items():
        old = last_cond[k]
        if isinstance(v, Tensor):
            if not (isinstance(old, Tensor) and old.shape == v.shape and torch.equal(old, v.detach())):
                return False
        elif isinstance(v, (list, tuple)):
            if len(v) != len(old) or any(a is not b and not (isinstance(a, (str, int, float)) and a == b)
                                         for a, b in zip(old, v, strict=True)):
                return False
        elif v is not old and v != old:
            return False
    return True


class RemoteReward:
    """Scores the served component ``name`` through a :class:`RemoteSession`; NaN on any failure.

    The output keys are the served component's (learnt from the last answer; before the first one, a
    failed batch returns ``{name: NaN}``). An answer that lacks the component or has the wrong length
    also scores NaN, with a warning.
    """

    def __init__(self, name: str, session: RemoteSession) -> None:
        self.name = name
        self.session = session
        self.keys: list[str] = [name]

    @classmethod
    def connect(cls, name: str, url: str, *, token_env: str = DEFAULT_TOKEN_ENV, token_file: str | None = None,
                timeout: float = 120.0, retries: int = 1) -> RemoteReward:
        """A component with its own session (``slas.rewards.build`` shares one session per server instead)."""
        session = RemoteSession(url, token=read_token(token_env, token_file), timeout=timeout, retries=retries)
        return cls(name, session)

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        n = images.shape[0]
        answer = self.session.answer(images, prompts, conditions)
        if answer is not None:
            try:
                return self._parts(answer, n)
            except RemoteRewardError as exc:
                warnings.warn(f"remote reward {self.name} at {self.session.url}: scored NaN: {exc}",
                              RemoteRewardWarning, stacklevel=2)
        return {key: torch.full((n,), math.nan) for key in self.keys}

    def _parts(self, answer: Mapping[str, Any], n: int) -> dict[str, Tensor]:
        """This component's outputs, under its own keys, from the server's ``parts`` (see the module docstring)."""
        components, parts = answer.get("components"), answer.get("parts")
        if not isinstance(components, list) or not isinstance(parts, list) or len(parts) != len(components):
            raise RemoteRewardError("the server's answer has no per-component parts")
        if self.name not in components:
            raise RemoteRewardError(f"the server serves {components}, not {self.name!r}")
        outputs = parts[components.index(self.name)]
        if not isinstance(outputs, Mapping) or not outputs:
            raise RemoteRewardError(f"the server's answer has no outputs for {self.name!r}")
        out = {}
        for key, values in outputs.items():
            if not isinstance(values, list) or len(values) != n:
                raise RemoteRewardError(f"the server returned a bad score list for {key!r} ({n} images sent)")
            out[key] = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
        self.keys = list(out)
        return out


def build_remote(name: str, item: Mapping[str, Any], sessions: dict[tuple, RemoteSession]) -> RemoteReward:
    """The remote component ``item`` of a reward spec, sharing ``sessions`` with the spec's other components
    on the same server (same url, token, timeout and retries)."""
    token = read_token(item.get("token_env") or DEFAULT_TOKEN_ENV, item.get("token_file"))
    timeout, retries = float(item.get("timeout", 120.0)), int(item.get("retries", 1))
    key = (check_url(item["url"], f"reward {name} url"), token, timeout, retries)
    if key not in sessions:
        sessions[key] = RemoteSession(key[0], token=token, timeout=timeout, retries=retries)
    return RemoteReward(name, sessions[key])
