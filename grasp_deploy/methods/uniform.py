"""Uniform allocation: every layer keeps the same share of its own cost, its best units first.

Shared by the baselines that score units and keep a uniform ratio (magnitude, Wanda-sp,
Taylor), as their papers do.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import GraspError
from ..core.projection import UnitLayout
from ..core.shape import FFN, KV


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


def keep_uniform(scores: np.ndarray, layout: UnitLayout, prune_ratio: float) -> np.ndarray:
    """The best-scored units of every layer, each layer keeping (1 - ratio) of its cost."""
    return keep_top(scores, layout, uniform_counts(layout, prune_ratio))
