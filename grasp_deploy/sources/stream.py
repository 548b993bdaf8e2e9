"""A model one decoder layer at a time: what a memory-bounded method (StructPrune) runs on.

The model is built on the ``meta`` device (shapes only, no memory); its weights stay in the
safetensors files. A layer is read from the files when asked for, moved to the device, and
dropped by the caller when done. Each read opens the file (a memory map), copies that layer's
tensors and closes it, so pages of other layers never stay mapped: resident memory is one
layer, the embedding while calibration states are computed, and the caller's activations.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import GraspError
from ..core.masking import decoder_layers
from .models import ModelSource, ensure_available, fingerprint_tensors

EMBED = "model.embed_tokens.weight"


class _Stop(Exception):
    """Ends the skeleton's forward once the last layer's arguments are captured."""


class _Capture(nn.Module):
    """Stands in for a decoder layer: records the keyword arguments it is called with."""

    def __init__(self, index: int, last: bool, real: nn.Module, box: dict[int, dict]) -> None:
        super().__init__()
        self.index, self.last, self.box = index, last, box
        self.attention_type = getattr(real, "attention_type", None)  # Qwen2/Mistral windows

    def forward(self, hidden_states, *args, **kwargs):
        self.box[self.index] = dict(kwargs)
        if self.last:
            raise _Stop
        return hidden_states


class LayerStream:
    """A causal LM's layers, read one at a time from its safetensors files."""

    def __init__(self, source: ModelSource, config: Any, dtype: torch.dtype,
                 device: torch.device) -> None:
        from transformers import AutoModelForCausalLM

        self.name, self.dtype, self.device = source.spec, dtype, torch.device(device)
        self.files = _tensor_files(_local_directory(source))
        with torch.device("meta"):
            self.skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
        inner = getattr(self.skeleton, "model", self.skeleton)
        # RoPE tables are computed, not stored: the one real module the skeleton needs.
        inner.rotary_emb = type(inner.rotary_emb)(config=config).to(self.device)
        self.num_layers = len(decoder_layers(self.skeleton))
        missing = [n for n, _ in self.skeleton.named_parameters() if n not in self.files]
        if missing:
            raise GraspError(f"the weight files of {self.name} lack {missing[0]} (and "
                             f"{len(missing) - 1} more); check that they are complete")

    def tensors(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, copied out of their files (each file mapped only meanwhile)."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for path, keys in by_file.items():
            with safe_open(path, framework="pt") as f:
                for key in keys:
                    out[key] = f.get_tensor(key)
        return out

    def layer(self, i: int) -> nn.Module:
        """Decoder layer ``i`` with its weights, on the device, frozen, in eval mode."""
        prefix = f"model.layers.{i}."
        module = copy.deepcopy(decoder_layers(self.skeleton)[i])
        names = [prefix + n for n, _ in module.named_parameters()]
        state = {k[len(prefix):]: v.to(self.dtype) for k, v in self.tensors(names).items()}
        module.load_state_dict(state, assign=True, strict=True)
        return module.to(self.device).eval().requires_grad_(False)

    def embed(self, blocks: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """For token ids ``blocks`` (n, seq_len): the hidden states entering layer 0 and the
        keyword arguments each layer receives for them."""
        weight = self.tensors([EMBED])[EMBED].to(self.device, self.dtype)
        hidden = nn.functional.embedding(blocks.to(self.device), weight)
        return hidden, self._layer_kwargs(hidden)

    @torch.no_grad()
    def _layer_kwargs(self, hidden: torch.Tensor) -> list[dict[str, Any]]:
        """The keyword arguments each layer receives for a batch shaped like ``hidden`` (RoPE,
        the attention mask of its kind), from the model's own forward on the skeleton."""
        inner = getattr(self.skeleton, "model", self.skeleton)
        real = inner.layers
        box: dict[int, dict] = {}
        inner.layers = nn.ModuleList(_Capture(i, i == len(real) - 1, layer, box)
                                     for i, layer in enumerate(real))
        try:
            inner(inputs_embeds=hidden, use_cache=False)
        except _Stop:
            pass
        finally:
            inner.layers = real
        return [box[i] for i in range(len(real))]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.skeleton.parameters())

    def fingerprint(self) -> str:
        """The same value ``models.fingerprint`` gives for the loaded model, one layer read
        at a time."""
        names = sorted(n for n, _ in self.skeleton.named_parameters())

        def tensors():
            for name in names:
                yield name, self.tensors([name])[name].to(self.dtype)
        return fingerprint_tensors(tensors())


def _local_directory(source: ModelSource) -> Path:
    location = ensure_available(source)
    if source.kind != "hub":
        return Path(location)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # network, auth, missing repo: one line
        raise GraspError(
            f"cannot fetch {location}'s weight files: {str(err).splitlines()[0]}"
        ) from err


def _tensor_files(directory: Path) -> dict[str, str]:
    """Tensor name -> the safetensors file holding it (sharded or not)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: str(directory / file) for name, file in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise GraspError(f"{directory} has no .safetensors weight files; memory-bounded pruning "
                         "reads layers from them (convert the checkpoint, or use another method)")
    from safetensors import safe_open

    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            out.update((key, str(path)) for key in f.keys())
    return out
