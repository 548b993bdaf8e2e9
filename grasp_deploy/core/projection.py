"""Projection of unit scores onto the budgets: a pure function of (scores, costs, budgets).

Two budgets: parameters (``--prune-ratio``) and, optionally, KV heads (``--kv-ratio``: the
KV-cache bytes per token are proportional to the KV heads kept, as every head of a model has
the same head_dim).

All units of all layers live in one flat vector, laid out segment by segment
(layer 0 FFN channels, layer 0 KV groups, layer 1 FFN channels, ...). A segment may demand
that its kept count be a multiple of ``align`` (FFN widths: ``--align``, made a multiple of
``--tp`` too; KV groups: ``--tp``): its units are then ranked inside the segment and chunked
into blocks of ``align``, and blocks are what the global ranking chooses among.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from .errors import GraspError
from .shape import FFN, KV, ModelShape

TieBreak = Literal["rank", "index"]


@dataclass(frozen=True)
class Segment:
    layer: int
    kind: str  # FFN or KV
    start: int  # offset in the flat unit vector
    size: int
    unit_cost: int
    align: int  # kept count is a multiple of this

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class UnitLayout:
    """Where each layer's FFN channels and KV groups sit in the flat unit vector."""

    segments: tuple[Segment, ...]

    @classmethod
    def from_shape(cls, shape: ModelShape, align: int = 1, tp: int = 1) -> UnitLayout:
        if align < 1 or tp < 1:
            raise GraspError(f"--align ({align}) and --tp ({tp}) must be positive integers")
        segments, start = [], 0
        ffn_multiple = math.lcm(align, tp)  # vLLM gives each tensor-parallel rank 1/tp of it
        for i, layer in enumerate(shape.layers):
            for kind, size, multiple in ((FFN, layer.intermediate_size, ffn_multiple),
                                         (KV, layer.num_key_value_heads, tp)):
                if size < multiple:
                    flag = "--align" if kind == FFN else "--tp"
                    raise GraspError(f"{flag} {multiple} exceeds layer {i}'s {size} "
                                     f"{'FFN channels' if kind == FFN else 'KV heads'}; "
                                     f"use a {flag} that divides {size}")
                segments.append(Segment(i, kind, start, size, shape.unit_cost(kind), multiple))
                start += size
        return cls(tuple(segments))

    @property
    def num_units(self) -> int:
        return self.segments[-1].stop

    def unit_costs(self) -> np.ndarray:
        costs = np.empty(self.num_units, dtype=np.int64)
        for seg in self.segments:
            costs[seg.start:seg.stop] = seg.unit_cost
        return costs

    def total_cost(self) -> int:
        return sum(seg.size * seg.unit_cost for seg in self.segments)

    def mandatory_cost(self) -> int:
        """Cost of the least every layer must keep: one aligned block of each kind."""
        return sum(seg.align * seg.unit_cost for seg in self.segments)

    def kept_cost(self, mask: np.ndarray) -> int:
        return int(self.unit_costs()[np.asarray(mask, dtype=bool)].sum())

    def kv_heads(self) -> int:
        """KV heads of the dense model, all layers (the KV budget's unit)."""
        return sum(seg.size for seg in self.segments if seg.kind == KV)

    def kept_kv_heads(self, mask: np.ndarray) -> int:
        mask = np.asarray(mask, dtype=bool)
        return sum(int(mask[seg.start:seg.stop].sum()) for seg in self.segments if seg.kind == KV)

    def mandatory_kv_heads(self) -> int:
        return sum(seg.align for seg in self.segments if seg.kind == KV)

    def segment(self, layer: int, kind: str) -> Segment:
        return self.segments[2 * layer + (0 if kind == FFN else 1)]

    @property
    def aligned(self) -> bool:
        """Some segment keeps whole blocks of more than one unit (``--align``/``--tp`` > 1)."""
        return any(seg.align > 1 for seg in self.segments)


def keep_budget(prune_ratio: float, total: int) -> int:
    """Parameters that may be kept: floor((1 - ratio) x total), in exact arithmetic on the
    ratio as written (0.3 is 3/10), so that 0.7 x 92160 is 64512 and not 64511."""
    return int((1 - Fraction(repr(float(prune_ratio)))) * total)


def kv_keep_budget(kv_ratio: float | None, layout: UnitLayout) -> int | None:
    """KV heads that may be kept for ``--kv-ratio K`` (KV bytes per token at most K x the
    dense model's): floor(K x dense KV heads), exactly; ``None`` without a KV budget. Checked
    against the least the layout must keep (one aligned KV block per layer)."""
    if kv_ratio is None:
        return None
    dense = layout.kv_heads()
    budget = int(Fraction(repr(float(kv_ratio))) * dense)
    need = layout.mandatory_kv_heads()
    if budget < need:
        raise GraspError(f"--kv-ratio {kv_ratio} keeps {budget} of {dense} KV heads, below the "
                         f"{need} that one KV block per layer needs; use --kv-ratio of at "
                         f"least {need / dense:.3f} (or a smaller --tp)")
    return budget


def check_budget(layout: UnitLayout, budget: int) -> None:
    need = layout.mandatory_cost()
    if budget < need:
        total = layout.total_cost()
        raise GraspError(
            f"budget of {budget:,} parameters ({budget / total:.1%} kept) is below the "
            f"{need:,} ({need / total:.1%}) that keeping one aligned FFN block and KV block per "
            "layer needs; use a smaller --prune-ratio (or smaller --align/--tp)"
        )


def project(scores: np.ndarray | Sequence[float], layout: UnitLayout, budget: int,
            tie_break: TieBreak = "rank", per_cost: bool = False,
            kv_budget: int | None = None) -> np.ndarray:
    """Hard keep-mask: the best-scored units whose summed cost fits ``budget`` (parameters)
    and, with ``kv_budget``, whose KV heads fit that too.

    1. Each segment's top block (its best ``align`` units) is reserved first, so every layer
       keeps at least one FFN block and one KV block and the budget is never exceeded.
    2. The other blocks of all layers are sorted together by mean score, descending, and the
       longest prefix that fits the remaining budget is kept (the paper's rule). With aligned
       blocks that prefix may stop a whole block short of the budget (a 64-channel FFN block
       or a KV group is 0.1-0.3% of the default model), so there the walk goes on past a block
       that does not fit and takes each later one that still does: the budget is then filled
       to within the smallest block.

    With ``per_cost`` blocks are sorted by mean score per parameter of the block instead (the
    greedy knapsack order: a KV group must be worth its many parameters).

    With ``kv_budget`` the same walk skips every KV block once the KV heads taken (reserved
    ones included) reach it, and goes on with the FFN blocks, which fill the parameter budget
    as before (a block that does not fit the parameters still ends the unaligned walk, even
    a skipped one). Every KV block holds ``--tp`` heads, so the KV blocks taken are exactly
    the best-ranked ones, and when ``kv_budget`` is at least what the unconstrained mask
    keeps, the mask is the same. This is the greedy in score order under both budgets; it is
    not the optimum of the two-constraint knapsack, which no walk in one fixed order gives.

    Ties (all scores equal at initialisation) are broken by ``tie_break``:
    ``"rank"`` takes every segment's next block in turn (a near-uniform first mask);
    ``"index"`` follows the flat unit order (what a stable sort of the reference gives:
    early layers first).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (layout.num_units,):
        raise ValueError(f"expected {layout.num_units} scores, got shape {scores.shape}")
    check_budget(layout, budget)
    keep = np.zeros(layout.num_units, dtype=bool)
    seg_blocks, score, cost, rank, seg_id = _ranked_blocks(scores, layout, per_cost)
    for blocks in seg_blocks:
        keep[blocks[0]] = True  # reserved
    # np.lexsort sorts by the last key first.
    if tie_break == "rank":
        order = np.lexsort((seg_id, rank, -score))
    elif tie_break == "index":
        order = np.lexsort((rank, seg_id, -score))
    else:
        raise ValueError(f"unknown tie_break {tie_break!r}")
    chosen = _walk(order, cost, budget - layout.mandatory_cost(), layout.aligned,
                   _past_kv_budget(order, seg_id, layout, kv_budget))
    # Within a segment, block scores never increase with rank and ties go by rank, so the
    # chosen blocks of a segment are always its first ones (its blocks cost the same, so once
    # one does not fit, none after it does): count them and take a prefix.
    per_seg = np.bincount(seg_id[chosen], minlength=len(layout.segments))
    for s, blocks in enumerate(seg_blocks):
        keep[blocks[1:1 + per_seg[s]].ravel()] = True
    return keep


def _ranked_blocks(scores: np.ndarray, layout: UnitLayout, per_cost: bool):
    """Per segment its units ranked and cut into blocks of ``align``; for every block but each
    segment's first: its score (mean, or mean per parameter), cost, rank and segment."""
    seg_blocks: list[np.ndarray] = []  # per segment: (n_blocks, align) flat unit ids, ranked
    block_score, block_cost, block_rank, block_seg = [], [], [], []
    for s, seg in enumerate(layout.segments):
        order = np.argsort(-scores[seg.start:seg.stop], kind="stable")
        n_blocks = seg.size // seg.align
        blocks = order[: n_blocks * seg.align].reshape(n_blocks, seg.align) + seg.start
        seg_blocks.append(blocks)
        rest = blocks[1:]
        value = scores[rest].mean(axis=1)
        block_score.append(value / (seg.align * seg.unit_cost) if per_cost else value)
        block_cost.append(np.full(len(rest), seg.align * seg.unit_cost, dtype=np.int64))
        block_rank.append(np.arange(1, n_blocks))
        block_seg.append(np.full(len(rest), s))
    return (seg_blocks, np.concatenate(block_score), np.concatenate(block_cost),
            np.concatenate(block_rank), np.concatenate(block_seg))


def _walk(order: np.ndarray, cost: np.ndarray, room: int, aligned: bool,
          skip: np.ndarray) -> np.ndarray:
    """The blocks taken, walking ``order`` (less the ``skip`` ones) against ``room``."""
    if aligned:
        return _fill(order[~skip], cost, room)
    taken = np.where(skip, 0, cost[order])  # the longest prefix that fits, less skipped blocks
    fits = np.cumsum(taken) - taken + cost[order] <= room
    stop = len(order) if fits.all() else int(np.argmin(fits))
    return order[:stop][~skip[:stop]]


def _past_kv_budget(order: np.ndarray, seg_id: np.ndarray, layout: UnitLayout,
                    kv_budget: int | None) -> np.ndarray:
    """Per block in ``order``: a KV block that comes after the KV budget is spent."""
    if kv_budget is None:
        return np.zeros(len(order), dtype=bool)
    is_kv = np.array([seg.kind == KV for seg in layout.segments])[seg_id[order]]
    heads = np.array([seg.align for seg in layout.segments])[seg_id[order]]
    spent = layout.mandatory_kv_heads() + np.cumsum(np.where(is_kv, heads, 0))
    return is_kv & (spent > kv_budget)


def _fill(order: np.ndarray, cost: np.ndarray, room: int) -> np.ndarray:
    """Blocks in ``order``, each taken if it still fits: the fitting prefix, then the later
    blocks that fit what is left. Done in rounds (one per distinct misfit), not block by block."""
    ordered = cost[order]
    taken = np.zeros(len(order), dtype=bool)
    while True:
        candidates = np.flatnonzero(~taken & (ordered <= room))
        if candidates.size == 0:
            break
        n = int(np.count_nonzero(np.cumsum(ordered[candidates]) <= room))  # >= 1
        taken[candidates[:n]] = True
        room -= int(ordered[candidates[:n]].sum())
        if n == candidates.size:
            break
    return order[taken]
