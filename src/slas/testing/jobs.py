"""Waiting on detached ``slas jobs`` in tests: polling, the submitted id, a checkpoint's trained weights."""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from slas.testing.cli import error_text


def until(predicate, timeout: float = 180.0, poll: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def submitted_id(result) -> int:
    """The job id ``slas jobs submit`` printed (the submission must have succeeded)."""
    assert result.exit_code == 0, error_text(result) + result.stdout
    return int(re.search(r"submitted job (\d+)", result.stdout).group(1))


def trainable_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor under ``<checkpoint>/trainable`` keyed by file and name (full or LoRA weights)."""
    out = {}
    for f in sorted((ckpt / "trainable").rglob("*.safetensors")):
        out.update({f"{f.relative_to(ckpt)}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no weights under {ckpt}"
    return out
