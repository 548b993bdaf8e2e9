"""Baseline pruning methods. Each yields a flat keep-mask over the same units as GRASPrune,
so every method produces the same plan type and is exported, served and measured alike."""

from __future__ import annotations

import numpy as np
import torch

from .arch import FFN, KV, ModelShape
from .errors import GraspError
from .masking import decoder_layers
from .projection import UnitLayout


@torch.no_grad()
def magnitude_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout) -> np.ndarray:
    """L2 norm of every weight a unit owns (its rows and columns), flat over all units."""
    scores = np.zeros(layout.num_units, dtype=np.float64)
    h, g = shape.head_dim, shape.group_size
    for i, layer in enumerate(decoder_layers(model)):
        mlp, attn = layer.mlp, layer.self_attn

        def sq(w: torch.Tensor, dim: int) -> torch.Tensor:
            return w.float().pow(2).sum(dim=dim)

        # FFN channel j: gate row j, up row j, down column j.
        ffn = sq(mlp.gate_proj.weight, 1) + sq(mlp.up_proj.weight, 1) + sq(mlp.down_proj.weight, 0)
        # KV group: k/v rows of its head (h each), q rows and o columns of its g query heads.
        kv = (sq(attn.k_proj.weight, 1).view(-1, h).sum(1) + sq(attn.v_proj.weight, 1).view(-1, h).sum(1)
              + sq(attn.q_proj.weight, 1).view(-1, g * h).sum(1)
              + sq(attn.o_proj.weight, 0).view(-1, g * h).sum(1))
        for kind, values in ((FFN, ffn), (KV, kv)):
            seg = layout.segment(i, kind)
            scores[seg.start:seg.stop] = values.sqrt().double().cpu().numpy()
    return scores


def uniform_counts(layout: UnitLayout, prune_ratio: float) -> dict[tuple[int, str], int]:
    """Keep counts that give every layer the same share (1 - ratio) of its own cost.

    KV groups are rounded to the nearest allowed count first (they are few and coarse); the
    FFN takes what is left of the layer's share, rounded down to its alignment, so no layer
    exceeds its share unless its minimum (one aligned block of each kind) does.
    """
    counts: dict[tuple[int, str], int] = {}
    layers = sorted({seg.layer for seg in layout.segments})
    for i in layers:
        ffn, kv = layout.segment(i, FFN), layout.segment(i, KV)
        share = (1.0 - prune_ratio) * (ffn.size * ffn.unit_cost + kv.size * kv.unit_cost)
        n_kv = int(round((1.0 - prune_ratio) * kv.size / kv.align)) * kv.align
        n_kv = min(max(n_kv, kv.align), kv.size - kv.size % kv.align)
        while n_kv > kv.align and n_kv * kv.unit_cost + ffn.align * ffn.unit_cost > share:
            n_kv -= kv.align
        n_ffn = int((share - n_kv * kv.unit_cost) // ffn.unit_cost) // ffn.align * ffn.align
        n_ffn = min(max(n_ffn, ffn.align), ffn.size - ffn.size % ffn.align)
        counts[(i, KV)], counts[(i, FFN)] = n_kv, n_ffn
    return counts


def keep_top(scores: np.ndarray, layout: UnitLayout, counts: dict[tuple[int, str], int]) -> np.ndarray:
    """In each segment, keep its ``counts`` best-scored units (ties: lower index first)."""
    keep = np.zeros(layout.num_units, dtype=bool)
    for seg in layout.segments:
        k = counts[(seg.layer, seg.kind)]
        if not 0 < k <= seg.size:
            raise GraspError(f"cannot keep {k} of {seg.size} units in layer {seg.layer} {seg.kind}")
        order = np.argsort(-scores[seg.start:seg.stop], kind="stable")[:k]
        keep[seg.start + order] = True
    return keep
