"""Uniform allocation: every layer keeps the same share of its own cost, its best units first.

Shared by the baselines that score units and keep a uniform ratio (magnitude, Wanda-sp,
Taylor), as their papers do.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import GraspError
from ..core.projection import UnitLayout
from ..core.shape import FFN, KV


def uniform_counts(layout: UnitLayout, prune_ratio: float,
                   kv_budget: int | None = None) -> dict[tuple[int, str], int]:
    """Keep counts that give every layer the same share (1 - ratio) of its own cost.

    KV groups are rounded to the nearest allowed count first (they are few and coarse), at
    most the layer's part of ``kv_budget`` (``kv_spread``); the FFN takes what is left of the
    layer's share, rounded down to its alignment, so no layer exceeds its share unless its
    minimum (one aligned block of each kind) does.
    """
    counts: dict[tuple[int, str], int] = {}
    layers = sorted({seg.layer for seg in layout.segments})
    kv_caps = kv_spread(layout, kv_budget)
    for i in layers:
        ffn, kv = layout.segment(i, FFN), layout.segment(i, KV)
        share = (1.0 - prune_ratio) * (ffn.size * ffn.unit_cost + kv.size * kv.unit_cost)
        n_kv = int(round((1.0 - prune_ratio) * kv.size / kv.align)) * kv.align
        n_kv = min(max(n_kv, kv.align), kv.size - kv.size % kv.align, kv_caps[i])
        while n_kv > kv.align and n_kv * kv.unit_cost + ffn.align * ffn.unit_cost > share:
            n_kv -= kv.align
        n_ffn = int((share - n_kv * kv.unit_cost) // ffn.unit_cost) // ffn.align * ffn.align
        n_ffn = min(max(n_ffn, ffn.align), ffn.size - ffn.size % ffn.align)
        counts[(i, KV)], counts[(i, FFN)] = n_kv, n_ffn
    return counts


def kv_spread(layout: UnitLayout, kv_budget: int | None) -> dict[int, int]:
    """Per layer, the most KV heads it may keep so that all layers together keep at most
    ``kv_budget``: one block each, the other blocks spread over the layers in proportion to
    what each has beyond its first (cumulative rounding, so the spread is even over depth)."""
    kv = [seg for seg in layout.segments if seg.kind == KV]
    if kv_budget is None:
        return {seg.layer: seg.size for seg in kv}
    extra = [seg.size // seg.align - 1 for seg in kv]
    spare = kv_budget // kv[0].align - len(kv)  # blocks beyond the first of every layer
    caps, given, seen = {}, 0, 0
    for seg, e in zip(kv, extra, strict=True):
        seen += e
        upto = min(spare * seen // max(sum(extra), 1), seen)
        caps[seg.layer] = (1 + upto - given) * seg.align
        given = upto
    return caps


def keep_top(
    scores: np.ndarray, layout: UnitLayout, counts: dict[tuple[int, str], int]
) -> np.ndarray:
    """In each segment, keep its ``counts`` best-scored units (ties: lower index first)."""
    keep = np.zeros(layout.num_units, dtype=bool)
    for seg in layout.segments:
        k = counts[(seg.layer, seg.kind)]
        if not 0 < k <= seg.size:
            raise GraspError(f"cannot keep {k} of {seg.size} units in layer {seg.layer} {seg.kind}")
        order = np.argsort(-scores[seg.start:seg.stop], kind="stable")[:k]
        keep[seg.start + order] = True
    return keep


def keep_uniform(scores: np.ndarray, layout: UnitLayout, prune_ratio: float,
                 kv_budget: int | None = None) -> np.ndarray:
    """The best-scored units of every layer, each layer keeping (1 - ratio) of its cost (and
    at most its part of ``kv_budget`` KV heads)."""
    return keep_top(scores, layout, uniform_counts(layout, prune_ratio, kv_budget))
