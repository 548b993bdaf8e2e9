"""StructPrune's layer-wise sparsity allocation: module energies, a softmax over them at a
temperature, water-filled to the budget, then rounded to aligned blocks within it."""

from __future__ import annotations

import math

import numpy as np

from ..core.projection import UnitLayout
from ..core.shape import FFN, KV


def module_energies(layout: UnitLayout, energy: np.ndarray, ratio: float) -> np.ndarray:
    """eps_m per segment: log of the mean cost-normalised energy of its ``ratio`` weakest units."""
    out = np.empty(len(layout.segments))
    for m, seg in enumerate(layout.segments):
        e = np.sort(energy[seg.start:seg.stop] / seg.unit_cost)
        k = max(1, int(round(ratio * seg.size)))
        out[m] = math.log(float(e[:k].mean()) + 1e-30)
    return out


def allocate(layout: UnitLayout, energy: np.ndarray, ratio: float, temperature: float,
             max_fraction: float, max_over: float) -> np.ndarray:
    """Fraction of each segment to remove: c x exp(-eps_m / T), capped at
    min(max_fraction, ratio + max_over), summing (by cost) to the ratio; c by bisection
    (water-filling)."""
    eps = module_energies(layout, energy, ratio)
    cost = np.array([seg.size * seg.unit_cost for seg in layout.segments], dtype=np.float64)
    floor = np.array([seg.align / seg.size for seg in layout.segments])
    cap = np.minimum(min(max_fraction, ratio + max_over), 1.0 - floor)
    if math.isinf(temperature):
        log_w = np.zeros_like(eps)
    else:
        log_w = -(eps - eps.min()) / max(temperature, 1e-12)
    target = ratio * cost.sum()

    def fractions(log_c: float) -> np.ndarray:
        return np.minimum(np.exp(np.minimum(log_c + log_w, 0.0)), cap)

    # log c from "every module nearly untouched" to "every module at its cap"
    lo, hi = float((np.log(cap) - log_w).min()) - 60.0, float((np.log(cap) - log_w).max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((fractions(mid) * cost).sum()) < target else (lo, mid)
    return fractions(hi)


def kept_counts(layout: UnitLayout, fractions: np.ndarray, budget: int,
                kv_budget: int | None = None) -> dict[tuple[int, str], int]:
    """Kept units per segment (multiples of its alignment, at least one block); then KV blocks
    come off the segments furthest below their target fraction until within ``kv_budget``
    (KV heads), FFN blocks (KV ones once none is left) until within ``budget`` (parameters);
    then blocks that still fit both go back to the most over-pruned segments."""
    counts: dict[tuple[int, str], int] = {}
    for f, seg in zip(fractions, layout.segments, strict=True):
        k = int(round((1.0 - f) * seg.size / seg.align)) * seg.align
        counts[(seg.layer, seg.kind)] = min(max(k, seg.align), seg.size - seg.size % seg.align)

    def cost() -> int:
        return sum(counts[(g.layer, g.kind)] * g.unit_cost for g in layout.segments)

    def shortfall(m: int) -> float:
        seg = layout.segments[m]
        return fractions[m] - (1.0 - counts[(seg.layer, seg.kind)] / seg.size)

    def kv_heads() -> int:
        return sum(counts[(g.layer, g.kind)] for g in layout.segments if g.kind == KV)

    def take_block(kind: str) -> bool:
        """One block off the segment of ``kind`` furthest below its target; False if none can."""
        open_ = [m for m, g in enumerate(layout.segments)
                 if g.kind == kind and counts[(g.layer, g.kind)] > g.align]
        if not open_:
            return False
        seg = layout.segments[max(open_, key=shortfall)]
        counts[(seg.layer, seg.kind)] -= seg.align
        return True

    kv_cap = layout.kv_heads() if kv_budget is None else kv_budget
    # every segment at one block fits both budgets: kv_keep_budget and check_budget refused less
    while kv_heads() > kv_cap and take_block(KV):
        pass
    while cost() > budget and (take_block(FFN) or take_block(KV)):
        pass
    while True:  # then give back blocks that still fit, to the most over-pruned segments
        spare = budget - cost()
        room = [m for m, g in enumerate(layout.segments) if g.align * g.unit_cost <= spare
                and counts[(g.layer, g.kind)] + g.align <= g.size
                and (g.kind != KV or kv_heads() + g.align <= kv_cap)]
        if not room:
            return counts
        seg = layout.segments[min(room, key=shortfall)]
        counts[(seg.layer, seg.kind)] += seg.align
