"""Which device and dtype a job runs in: ``auto`` resolved per machine."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.dtypes import DTYPES
from ..core.errors import GraspError


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16
    matmuls are emulated and several times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere."""
    if name == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_cuda or cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise GraspError(f"unknown --dtype {name!r}; use auto, bfloat16, float16 or float32")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise GraspError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraspError(f"--device {name} asked but no CUDA GPU is available; use --device cpu")
    return device
