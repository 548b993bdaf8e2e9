"""Projection of unit scores onto the parameter budget: a pure function of (scores, costs, budget).

All units of all layers live in one flat vector, laid out segment by segment
(layer 0 FFN channels, layer 0 KV groups, layer 1 FFN channels, ...). A segment may demand
that its kept count be a multiple of ``align`` (``--align`` for FFN widths, ``--tp`` for KV
groups): its units are then ranked inside the segment and chunked into blocks of ``align``,
and blocks are what the global ranking chooses among.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Sequence

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
    def from_shape(cls, shape: ModelShape, align: int = 1, tp: int = 1) -> "UnitLayout":
        if align < 1 or tp < 1:
            raise GraspError(f"--align ({align}) and --tp ({tp}) must be positive integers")
        segments, start = [], 0
        for i, layer in enumerate(shape.layers):
            for kind, size, multiple in ((FFN, layer.intermediate_size, align),
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
            tie_break: TieBreak = "rank", per_cost: bool = False) -> np.ndarray:
    """Hard keep-mask: the best-scored units whose summed cost fits ``budget``.

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
    seg_blocks: list[np.ndarray] = []  # per segment: (n_blocks, align) flat unit ids, ranked
    block_score, block_cost, block_rank, block_seg = [], [], [], []
    for s, seg in enumerate(layout.segments):
        order = np.argsort(-scores[seg.start:seg.stop], kind="stable")
        n_blocks = seg.size // seg.align
        blocks = order[: n_blocks * seg.align].reshape(n_blocks, seg.align) + seg.start
        seg_blocks.append(blocks)
        keep[blocks[0]] = True  # reserved
        rest = blocks[1:]
        value = scores[rest].mean(axis=1)
        block_score.append(value / (seg.align * seg.unit_cost) if per_cost else value)
        block_cost.append(np.full(len(rest), seg.align * seg.unit_cost, dtype=np.int64))
        block_rank.append(np.arange(1, n_blocks))
        block_seg.append(np.full(len(rest), s))
    score, cost = np.concatenate(block_score), np.concatenate(block_cost)
    rank, seg_id = np.concatenate(block_rank), np.concatenate(block_seg)
    # np.lexsort sorts by the last key first.
    if tie_break == "rank":
        order = np.lexsort((seg_id, rank, -score))
    elif tie_break == "index":
        order = np.lexsort((rank, seg_id, -score))
    else:
        raise ValueError(f"unknown tie_break {tie_break!r}")
    room = budget - layout.mandatory_cost()
    chosen = _fill(order, cost, room) if layout.aligned else order[np.cumsum(cost[order]) <= room]
    # Within a segment, block scores never increase with rank and ties go by rank, so the
    # chosen blocks of a segment are always its first ones (its blocks cost the same, so once
    # one does not fit, none after it does): count them and take a prefix.
    per_seg = np.bincount(seg_id[chosen], minlength=len(layout.segments))
    for s, blocks in enumerate(seg_blocks):
        keep[blocks[1:1 + per_seg[s]].ravel()] = True
    return keep


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
