"""Wanda-sp: |W| x input activation norm, aggregated per unit; uniform ratio."""

from __future__ import annotations

import numpy as np
import torch

from ..core.masking import decoder_layers
from ..core.projection import UnitLayout
from ..core.shape import FFN, KV, ModelShape
from .base import MethodInput, MethodResult
from .importance import ActivationStats, collect_activations
from .uniform import keep_uniform


@torch.no_grad()
def column_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                  per_column) -> np.ndarray:
    """Scores from the input columns of o_proj (attention) and down_proj (FFN).

    ``per_column(name, layer, weight)`` gives one score per input column; an FFN channel gets
    its column's score, a KV group the sum over its query heads' columns.
    """
    scores = np.zeros(layout.num_units, dtype=np.float64)
    gh = shape.group_size * shape.head_dim
    for i, layer in enumerate(decoder_layers(model)):
        ffn = per_column("down", i, layer.mlp.down_proj.weight.float())
        kv = per_column("o", i, layer.self_attn.o_proj.weight.float()).view(-1, gh).sum(1)
        for kind, t in ((FFN, ffn), (KV, kv)):
            seg = layout.segment(i, kind)
            scores[seg.start:seg.stop] = t.double().cpu().numpy()
    return scores


@torch.no_grad()
def wanda_sp_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                    stats: ActivationStats) -> np.ndarray:
    """Wanda-sp: for input column j of o_proj/down_proj, sum_i |W_ij| * ||X_j||_2."""
    return column_scores(model, shape, layout, lambda name, i, w: (
        w.abs().sum(0).double() * stats.norm(name, i).to(w.device)))


def prune(inp: MethodInput) -> MethodResult:
    stats = collect_activations(inp.loaded, inp.shape, inp.calibration, progress=inp.progress)
    scores = wanda_sp_scores(inp.loaded, inp.shape, inp.layout, stats)
    return MethodResult(keep_uniform(scores, inp.layout, inp.prune_ratio, inp.kv_budget))
