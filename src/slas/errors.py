"""The one error base of slas: every error raised on purpose derives from :class:`SlasError`.

Its message is one line that names what is wrong (a file, a key, a value) and, where there is one, the
fix; the command line prints ``error: <message>`` and exits with :attr:`SlasError.exit_code` (2: bad
input). Subclasses also derive from the builtin they replace (``ValueError``, ``RuntimeError``, ...), so
code that catches those keeps working.
"""

from __future__ import annotations


class SlasError(Exception):
    """Bad input or a missing resource, said in one line; the command line exits with ``exit_code``."""

    exit_code = 2


def one_line(exc: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (its type name when it has none), cut to ``limit``.

    ``with_type=True`` prefixes the type (``ValueError: ...``), for errors that are not our own and whose
    type says something the message does not.
    """
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:limit]
