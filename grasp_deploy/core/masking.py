"""Per-unit multipliers on a live model, through forward hooks; the weights are never touched.

* FFN channel j of layer i: the multiplier scales input j of ``down_proj``, i.e. channel j of
  ``act(gate_proj(x)) * up_proj(x)``. Folding a scale into column j of ``down_proj`` is exact.
* KV group g of layer i: the multiplier scales KV head g's keys and values (the outputs of
  ``k_proj`` and ``v_proj``; RoPE is linear, so this equals scaling after RoPE, the reference
  implementation's choice). A 0 removes the group: its values are zero, so its query heads
  contribute nothing. Folding a scale into that head's rows of ``k_proj``/``v_proj`` is exact.
  In families where a per-head norm follows ``k_proj`` (Qwen3's ``k_norm``, shared by all
  heads) a scale on the keys would be normalised away and could not be folded per head, so
  there the multiplier scales the values only (``ModelShape.gate_keys``).

A multiplier of 0 therefore behaves exactly like slicing the unit out, which is what makes a
plan applied as masks equal to the exported, smaller model.

Optional output biases on ``o_proj`` and ``down_proj`` (FLAP's compensation for removed units)
are added to those projections' outputs; export writes them as the projections' biases.

Optional replacement weights for ``o_proj`` and ``down_proj`` (layer-wise reconstruction): a
(kept input ids, weight of shape out x kept) pair; the projection's output becomes that weight
applied to the kept inputs, plus the projection's own bias, which is exactly what the sliced
projection computes once export writes the weight in its place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .shape import ModelShape

# A transformers decoder layer (self_attn with q/k/v/o_proj, mlp with gate/up/down_proj, norms):
# reached by attribute, as every family names its parts the same (typed loosely on purpose).
DecoderLayer = Any


def decoder_layers(model: nn.Module) -> Sequence[DecoderLayer]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no decoder layers at .model.layers")
    return layers


@dataclass
class Multipliers:
    """Current per-layer multipliers; ``None`` leaves that layer's units untouched."""

    ffn: list[torch.Tensor | None] = field(default_factory=list)  # (intermediate_size,)
    kv: list[torch.Tensor | None] = field(default_factory=list)  # (num_key_value_heads,)
    # (hidden_size,) added to o_proj / down_proj
    o_bias: list[torch.Tensor | None] = field(default_factory=list)
    down_bias: list[torch.Tensor | None] = field(default_factory=list)  # added to down_proj
    # (kept input ids, weight out x kept) replacing o_proj / down_proj (reconstruction)
    o_weight: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    down_weight: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> Multipliers:
        none: list[Any] = [None] * num_layers
        return cls(*(list(none) for _ in range(6)))

    def weight(self, name: str, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        weights = self.o_weight if name == "o" else self.down_weight
        return weights[layer] if layer < len(weights) else None

    def bias(self, name: str, layer: int) -> torch.Tensor | None:
        biases = self.o_bias if name == "o" else self.down_bias
        return biases[layer] if layer < len(biases) else None


def _scale_last_dim(x: torch.Tensor, mult: torch.Tensor, repeat: int) -> torch.Tensor:
    if repeat > 1:
        mult = mult.repeat_interleave(repeat)
    return x * mult.to(dtype=x.dtype, device=x.device)


@contextmanager
def multiplied(model: nn.Module, shape: ModelShape, mult: Multipliers) -> Iterator[Multipliers]:
    """Apply ``mult`` to every forward inside the block. ``mult`` is read at each forward, so a
    training loop may replace its tensors between steps."""
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        def ffn_pre(_mod, args, i=i):
            m = mult.ffn[i]
            return None if m is None else (_scale_last_dim(args[0], m, 1), *args[1:])

        def kv_post(_mod, _args, out, i=i):
            m = mult.kv[i]
            # out: (B, T, n_kv * head_dim); head g occupies columns g*hd:(g+1)*hd
            return None if m is None else _scale_last_dim(out, m, shape.head_dim)

        def weight_post(mod, args, out, i=i, name="o"):
            replacement = mult.weight(name, i)
            if replacement is None:
                return None
            cols, w = replacement
            x = args[0]
            y = F.linear(
                x.index_select(-1, cols.to(x.device)), w.to(dtype=x.dtype, device=x.device)
            )
            return y if mod.bias is None else y + mod.bias

        def bias_post(_mod, _args, out, i=i, name="o"):
            b = mult.bias(name, i)
            return None if b is None else out + b.to(dtype=out.dtype, device=out.device)

        handles.append(layer.mlp.down_proj.register_forward_pre_hook(ffn_pre))
        if shape.gate_keys:
            handles.append(layer.self_attn.k_proj.register_forward_hook(kv_post))
        handles.append(layer.self_attn.v_proj.register_forward_hook(kv_post))
        handles.append(layer.self_attn.o_proj.register_forward_hook(weight_post))
        handles.append(layer.self_attn.o_proj.register_forward_hook(bias_post))
        handles.append(layer.mlp.down_proj.register_forward_hook(
            lambda m, a, o, i=i: weight_post(m, a, o, i, "down")))
        handles.append(layer.mlp.down_proj.register_forward_hook(
            lambda m, a, o, i=i: bias_post(m, a, o, i, "down")))
    try:
        yield mult
    finally:
        for h in handles:
            h.remove()
