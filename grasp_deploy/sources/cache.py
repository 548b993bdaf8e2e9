"""Where converted models live: ``~/.cache/grasp-deploy`` (``GRASP_DEPLOY_CACHE`` overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("GRASP_DEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "grasp-deploy"
