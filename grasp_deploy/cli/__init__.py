"""The ``grasp-deploy`` command line: each command parses, builds a typed config, calls one
library function and prints one summary (``show``)."""

from __future__ import annotations

from . import evaluate, heal, prune, serving  # noqa: F401  (each module registers its commands)
from .group import main

__all__ = ["main"]
