"""Benchmarks run by ``slas bench ...`` (figures, never timed tests)."""

from __future__ import annotations

import os
import platform as _stdlib_platform  # the standard library's, not slas.platform

import torch


def machine() -> str:
    """The machine a figure was measured on: the GPU when there is one, else CPU kind, cores and threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({os.cpu_count()} CPU cores), torch {torch.__version__}"
    return (f"{_stdlib_platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")
