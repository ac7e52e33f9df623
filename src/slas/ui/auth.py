"""Who may open the review UI: loopback only, unless logins are configured.

``slas ui`` binds to 127.0.0.1 by default. Any other address (a team server, ``0.0.0.0`` in a pod) needs
logins: ``SLAS_UI_AUTH=user:password`` or ``--credentials FILE`` (one ``user:password`` per line, ``#``
comments). There is no default password; an empty one is refused. With logins the rater name defaults to
the signed-in user.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from slas.errors import SlasError

AUTH_ENV = "SLAS_UI_AUTH"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class UIAccessError(SlasError, PermissionError):
    """The UI would be reachable without logins, or the logins given are malformed; one line."""


def _pair(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    user = user.strip()
    if not sep or not user or not password:
        raise UIAccessError(f"{where}: expected user:password with a non-empty user and password")
    return user, password


def parse_credentials(text: str, where: str) -> list[tuple[str, str]]:
    """``user:password`` lines (blank lines and ``#`` comments skipped); ``where`` names the source in errors."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            pairs.append(_pair(line.rstrip("\r\n"), f"{where} line {n}"))
    if not pairs:
        raise UIAccessError(f"{where}: no user:password line")
    return pairs


def load_logins(credentials: str | Path | None = None, env: Mapping[str, str] | None = None) -> list[tuple[str, str]] | None:
    """The configured logins (``credentials`` file first, then ``$SLAS_UI_AUTH``), or ``None`` when none are."""
    env = os.environ if env is None else env
    if credentials is not None:
        path = Path(credentials).expanduser()
        if not path.is_file():
            raise UIAccessError(f"--credentials {credentials}: no such file")
        return parse_credentials(path.read_text(encoding="utf-8"), str(credentials))
    value = env.get(AUTH_ENV)
    if value is None or value == "":
        return None
    return [_pair(value, AUTH_ENV)]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_safe_bind(host: str, logins: list[tuple[str, str]] | None) -> None:
    """Refuse to serve on a non-loopback ``host`` without logins, before anything starts."""
    if not is_loopback(host) and not logins:
        raise UIAccessError(f"refusing to serve the review UI on {host} without logins: set {AUTH_ENV}=user:password "
                            f"or pass --credentials FILE (or bind to 127.0.0.1)")


__all__ = ["AUTH_ENV", "UIAccessError", "is_loopback", "load_logins", "parse_credentials", "require_safe_bind"]
