"""Resumable state of a prune run, beside PLAN_DIR, removed when the plan is written.

``.NAME.resume/`` holds ``state.json`` (numbers, strings, lists) and ``tensors.safetensors``
(every tensor and array of the state); nothing is ever unpickled. The directory is written
like every output (a fresh temporary swapped into place, never through a symlink), and a
state is only resumed by the run whose inputs hash to the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import GraspError
from ..core.fsutil import DirKind, atomic_dir

log = logging.getLogger("grasp_deploy")
STATE, TENSORS = "state.json", "tensors.safetensors"
RESUME_DIR = DirKind("resume", STATE)


def run_key(ident: dict[str, Any]) -> str:
    """Identity of a run: a saved state only resumes the very same run."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def encode(value: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """JSON-able form of ``value``; its tensors and arrays go into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.array(value))  # a copy
        return {"__array__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__items__": [[k, encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the resume state")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__array__" in value:
        return tensors[value["__array__"]].numpy()
    if "__tuple__" in value:
        return tuple(decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: decode(v, tensors) for k, v in value["__items__"]}
    return {k: decode(v, tensors) for k, v in value.items()}


class ResumeStore:
    """Resumable state at ``.NAME.resume/`` beside PLAN_DIR, keyed on the run's inputs."""

    def __init__(self, out: Path, key: str) -> None:
        self.path = out.parent / f".{out.name}.resume"
        self.key = key
        self._state: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        if not self._state:
            saved = self._read()
            if saved.get("key") == self.key:
                self._state = saved
        return dict(self._state)

    def _read(self) -> dict[str, Any]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if self.path.is_symlink() or not self.path.is_dir():
            return {}
        if self.path.stat().st_uid != os.getuid():
            log.info("ignored %s: it belongs to another user", self.path)
            return {}
        try:
            state = json.loads((self.path / STATE).read_text())
            tensors = load_file(str(self.path / TENSORS)) if (self.path / TENSORS).is_file() else {}
            return decode(state, tensors) if isinstance(state, dict) else {}
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.info("ignored the unreadable resume state %s (%s)", self.path, err)
            return {}

    def save(self, **parts: Any) -> None:
        from safetensors.torch import save_file

        self._state = {**self._state, **parts, "key": self.key}
        tensors: dict[str, torch.Tensor] = {}
        state = encode(self._state, tensors)
        try:
            with atomic_dir(self.path, True, RESUME_DIR, flag="resume state") as tmp:
                (tmp / STATE).write_text(json.dumps(state))
                save_file(tensors, str(tmp / TENSORS))
        except GraspError as err:  # the run goes on; only resuming it would be lost
            log.info("could not save the resume state: %s", err)

    def clear(self) -> None:
        import shutil

        if self.path.is_symlink():
            self.path.unlink()
        elif self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
