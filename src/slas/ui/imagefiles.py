"""Which image files the review UI may read: only those inside the store's own folders.

A sample row's paths come from the database, and a page's requests name rows, never paths; still, a
row could point anywhere (a hand-edited database, a crafted import), so every path is resolved (``..``
and symlinks followed) and must land inside one of the set's roots: its ``meta.out_dir`` (where ``slas
sample`` wrote it), ``$SLAS_HOME/samples``, and the folders the set's maker declared for its input
images in ``meta.input_dirs`` (an editing set's person and product photos). Anything else is an
:class:`ImageAccessError`, and the app never hands Gradio a path at all: it passes the decoded pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from slas.errors import SlasError
from slas.paths import slas_home
from slas.platform.schema import SampleSet


class ImageAccessError(SlasError, PermissionError):
    """An image path outside the store's folders, or not a readable image; one line naming it."""


def set_roots(sset: SampleSet) -> list[Path]:
    """The folders images of ``sset`` may come from (resolved)."""
    meta = sset.meta or {}
    roots = [slas_home() / "samples"]
    if meta.get("out_dir"):
        roots.append(Path(meta["out_dir"]))
    extra = meta.get("input_dirs") or []
    roots += [Path(p) for p in ([extra] if isinstance(extra, str) else extra)]
    return [r.expanduser().resolve() for r in roots]


def checked_path(path: str | Path, roots: Iterable[Path]) -> Path:
    """``path`` resolved, when it lies inside one of ``roots`` and is a file; else :class:`ImageAccessError`."""
    raw = str(path)
    if not raw or "\x00" in raw:
        raise ImageAccessError(f"refusing image path {raw!r}: empty or not a file name")
    resolved = Path(raw).expanduser().resolve()
    roots = list(roots)
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ImageAccessError(f"refusing image path {raw}: outside the store's image folders "
                               f"({', '.join(map(str, roots))})")
    if not resolved.is_file():
        raise ImageAccessError(f"image {raw} does not exist")
    return resolved


def load_checked(path: str | Path, roots: Iterable[Path]) -> Image.Image:
    """The RGB image at ``path`` once :func:`checked_path` allows it."""
    resolved = checked_path(path, roots)
    try:
        with Image.open(resolved) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some broken files
        raise ImageAccessError(f"image {path} is not readable: {exc}") from None


__all__ = ["ImageAccessError", "checked_path", "load_checked", "set_roots"]
