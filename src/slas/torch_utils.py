"""Device and dtype names as configs spell them, resolved in one place for policies and rewards."""

from __future__ import annotations

import torch

from slas.errors import SlasError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
DEVICE_TYPES = ("cpu", "cuda", "mps")  # what training and the rewards run on
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(SlasError, ValueError):
    """A device name that is not one, or a device this machine does not have; the message names the choices."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"bf16"`` / a ``torch.dtype`` -> ``torch.dtype`` (ValueError naming the choices)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16; got {dtype!r}") from None


def parse_device(device: str | torch.device) -> torch.device | None:
    """The ``torch.device`` a name means (``None`` for ``"auto"``), or :class:`DeviceError` for a name torch
    cannot parse (``banana``) or a device type slas does not run on (``meta``, ``xla``)."""
    if str(device) == "auto":
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{str(device)!r} is not a device; use {DEVICE_CHOICES}") from None
    if parsed.type not in DEVICE_TYPES:
        raise DeviceError(f"{str(device)!r}: slas does not run on {parsed.type} devices; use {DEVICE_CHOICES}")
    return parsed


def device_unavailable(device: torch.device) -> str | None:
    """Why this machine cannot use ``device`` (``None`` when it can): no CUDA, a CUDA index past the
    GPUs it has, no MPS. Asked before any model loads, so a missing GPU is one line, not a CUDA traceback."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "this machine has no CUDA GPU (or torch was built without CUDA)"
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS (Apple GPU) is not available on this machine"
    return None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when there is one, else the CPU (``"cuda:1"`` etc. pass through; a name that is not
    a device raises :class:`DeviceError`)."""
    parsed = parse_device(device)
    if parsed is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parsed
