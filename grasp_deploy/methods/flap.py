"""FLAP: activation fluctuation, standardised and ranked globally, with bias compensation."""

from __future__ import annotations

import numpy as np
import torch

from ..core.masking import decoder_layers
from ..core.projection import UnitLayout, project
from ..core.shape import FFN, KV, ModelShape
from .base import MethodInput, MethodResult
from .importance import ActivationStats, collect_activations


@torch.no_grad()
def flap_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                stats: ActivationStats) -> np.ndarray:
    """FLAP's fluctuation metric, standardised for global ranking (its adaptive AL-AM structure).

    Column j: Var(X_j) * ||W[:, j]||^2 (the input's sample variance over the calibration tokens,
    weighted by the column's squared norm). Within each layer, attention columns and FFN
    columns are standardised separately (zero mean, unit standard deviation); a KV group's
    score is the mean over its query heads' columns. The standardised scores of all layers and
    both kinds are then ranked together against the parameter budget.
    """
    gh = shape.group_size * shape.head_dim
    scores = np.zeros(layout.num_units, dtype=np.float64)
    for i, layer in enumerate(decoder_layers(model)):
        for kind, name, proj in (
            (FFN, "down", layer.mlp.down_proj),
            (KV, "o", layer.self_attn.o_proj),
        ):
            w = proj.weight.float()
            col = stats.variance(name, i).to(w.device) * w.pow(2).sum(0).double()
            z = (col - col.mean()) / col.std().clamp_min(1e-12)
            if kind == KV:
                z = z.view(-1, gh).mean(1)
            seg = layout.segment(i, kind)
            scores[seg.start:seg.stop] = z.cpu().numpy()
    return scores


@torch.no_grad()
def flap_biases(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout, mask: np.ndarray,
                stats: ActivationStats) -> list[dict[str, np.ndarray]]:
    """FLAP's bias compensation: for every removed input column j of o_proj/down_proj, add
    W[:, j] * mean(X_j) to that projection's output, so the removed unit's average
    contribution survives as a constant."""
    gh = shape.group_size * shape.head_dim
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        biases = {}
        for kind, name, proj in (
            (FFN, "down", layer.mlp.down_proj),
            (KV, "o", layer.self_attn.o_proj),
        ):
            seg = layout.segment(i, kind)
            removed = torch.from_numpy(~mask[seg.start:seg.stop])
            if kind == KV:
                removed = removed.repeat_interleave(gh)
            mean = stats.mean(name, i).to(torch.float64) * removed.to(torch.float64)
            biases[name] = (proj.weight.double().cpu() @ mean.cpu()).numpy()
        out.append(biases)
    return out


def prune(inp: MethodInput) -> MethodResult:
    """Adaptive structure: one global ranking of standardised scores against the budget."""
    stats = collect_activations(inp.loaded, inp.shape, inp.calibration, progress=inp.progress)
    mask = project(flap_scores(inp.loaded, inp.shape, inp.layout, stats), inp.layout, inp.budget,
                   kv_budget=inp.kv_budget)
    return MethodResult(mask, biases=flap_biases(inp.loaded, inp.shape, inp.layout, mask, stats))
