"""Masking credentials: a URL or a message never shows a password in clear.

Store and tracking URLs (``SLAS_DATABASE_URL``, ``MLFLOW_TRACKING_URI``) may carry ``user:password@``,
and the libraries that use them echo the whole URL in their errors. Everything slas writes where a person
or another machine can read it (messages, warnings, logs, state files, MLflow params, ``slas jobs``
output) goes through :func:`redact_url` or :func:`redact_text` first. A leaf module: it imports nothing of
slas, so any layer may use it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@ (or a bare //user:password@) -- the password runs to the last "@" before a space
# or a quote, so a password with a raw "@" or "/" in it (a malformed URL) is masked whole rather than cut
# at its first odd character
_USERINFO = re.compile(
    r"(?P<head>(?:\b[A-Za-z][A-Za-z0-9+.\-]*:)?//(?P<user>[^\s:/?#@'\"<>]*)):(?P<password>[^\s'\"<>]*)@"
)
# user:password@host with no scheme at all: only where the whole string is meant as a URL
_BARE_USERINFO = re.compile(r"^(?P<head>[^\s:/?#@]*):(?P<password>[^\s]*)@")
# password=... in query strings, libpq connection strings and key=value dumps
_KEY_VALUE = re.compile(r"(?P<key>\b(?:password|passwd|pwd)\s*=\s*)(?P<value>[^\s&;,'\"<>)]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` as ``scheme://user:***@`` and every
    ``password=...`` as ``password=***``; text without credentials comes back unchanged."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["password"] != MASK else m[0], text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_url(url: Any) -> str:
    """``url`` (a string or a SQLAlchemy ``URL``) with its password as ``***``: ``user:***@host``.

    A well-formed URL keeps everything else as written; one that does not parse is masked as free text
    (:func:`redact_text`), so even a malformed URL is never shown with its password.
    """
    if not isinstance(url, str):
        render = getattr(url, "render_as_string", None)
        return redact_text(render(hide_password=True) if render is not None else str(url))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact_text(url)
    if password is not None and "@" in parts.netloc:
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    if "//" not in url:
        url = _BARE_USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", url)
    return redact_text(url)


__all__ = ["MASK", "redact_text", "redact_url"]
