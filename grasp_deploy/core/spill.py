"""Tensors kept on disk until asked for: a method's output that grows with the model (the
refitted matrices of every layer) without growing the process's memory."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch


class SpilledTensors(Mapping[str, torch.Tensor]):
    """A read-only mapping whose values live in one safetensors file each (float32), in a
    temporary directory removed when this object is garbage-collected."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="grasp-spill-")
        self._files: dict[str, Path] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = Path(self._dir.name) / f"{len(self._files)}.safetensors"
        save_file({"t": tensor.detach().float().contiguous().cpu()}, str(path))
        self._files[name] = path

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._files[name]), framework="pt") as f:
            return f.get_tensor("t")

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def serialized(weights: Mapping[str, torch.Tensor]) -> Iterator[bytes]:
    """The safetensors file of ``weights`` (float32, names sorted), in pieces: the header, then
    one tensor at a time, so that a spilled mapping is never whole in memory."""
    names = sorted(weights)
    entries, offset = {}, 0
    for name in names:
        shape = list(weights[name].shape)
        size = 4 * math.prod(shape)
        entries[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    yield struct.pack("<Q", len(header)) + header
    for name in names:
        yield weights[name].detach().float().contiguous().cpu().numpy().tobytes()


def sha256_of(pieces: Iterable[bytes], sink=None) -> str:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
        if sink is not None:
            sink(piece)
    return "sha256:" + h.hexdigest()
