"""Resumable state of a prune run, kept beside PLAN_DIR and removed when the plan is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch


def run_key(ident: dict[str, Any]) -> str:
    """Identity of a run: a saved state only resumes the very same run."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class ResumeStore:
    """State checkpoints at ``.NAME.resume.pt`` beside PLAN_DIR, keyed on the run's inputs."""

    def __init__(self, out: Path, key: str) -> None:
        self.path = out.parent / f".{out.name}.resume.pt"
        self.key = key
        self._state: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        if not self._state and self.path.is_file():
            try:
                saved = torch.load(self.path, weights_only=False)
            except Exception:  # a torn checkpoint is simply not resumed
                saved = {}
            if saved.get("key") == self.key:
                self._state = saved
        return dict(self._state)

    def save(self, **parts: Any) -> None:
        self._state = {**self._state, **parts, "key": self.key}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self._state, tmp)
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
