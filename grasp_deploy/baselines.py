"""Baseline pruning methods. Each yields a flat keep-mask over the same units as GRASPrune,
so every method produces the same plan type and is exported, served and measured alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .arch import FFN, KV, ModelShape
from .errors import GraspError
from .importance import (ActivationStats, mean_gradients, projection_weights, taylor_importance,
                         unit_totals)
from .masking import Multipliers, decoder_layers
from .projection import UnitLayout, project


@torch.no_grad()
def magnitude_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout) -> np.ndarray:
    """L2 norm of every weight a unit owns (its rows and columns), flat over all units."""
    squares = [{name: w.float().pow(2) for name, w in layer.items()}
               for layer in projection_weights(model)]
    return np.sqrt(unit_totals(squares, shape, layout))


@torch.no_grad()
def _column_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
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
    return _column_scores(model, shape, layout, lambda name, i, w: (
        w.abs().sum(0).double() * stats.norm(name, i).to(w.device)))


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
        for kind, name, proj in ((FFN, "down", layer.mlp.down_proj), (KV, "o", layer.self_attn.o_proj)):
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
        for kind, name, proj in ((FFN, "down", layer.mlp.down_proj), (KV, "o", layer.self_attn.o_proj)):
            seg = layout.segment(i, kind)
            removed = torch.from_numpy(~mask[seg.start:seg.stop])
            if kind == KV:
                removed = removed.repeat_interleave(gh)
            mean = stats.mean(name, i).to(torch.float64) * removed.to(torch.float64)
            biases[name] = (proj.weight.double().cpu() @ mean.cpu()).numpy()
        out.append(biases)
    return out


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


# -- GISP: iterative global pruning with first-order importance --------------------------------
@dataclass(frozen=True)
class GispStep:
    target: float  # prune ratio reached after this step
    removed: tuple[int, ...]  # flat unit ids removed in this step, least important first


def gisp_trajectory(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                    blocks: torch.Tensor, prune_ratio: float, step: float = 0.025,
                    blocks_per_step: int = 16, progress: bool = True) -> list[GispStep]:
    """GISP (Wang, Diao et al., ACL 2026) from a dense model up to ``prune_ratio``.

    Each step recomputes, on the model masked so far, the mean-gradient importance
    sum |W * g| of every unit, divides it by the unit's parameter count (a score per
    parameter, so FFN channels and KV groups compare on one scale), and removes the
    lowest-scoring units of all layers together until the next target on the grid
    ``step, 2 step, ...`` (the last one is ``prune_ratio``) is met; every layer keeps at
    least one aligned block of each kind. Targets on a fixed grid make the trajectory's
    prefix independent of the final ratio: the masks are nested, and one run gives the plan
    of every ratio on the grid ("prune once, deploy many").

    Gradients for step k average ``blocks_per_step`` calibration blocks, taken in turn so that
    consecutive steps see different blocks.
    """
    if not 0 < step < 1:
        raise GraspError(f"GISP step {step} must be in (0, 1)")
    total, costs = layout.total_cost(), layout.unit_costs().astype(np.float64)
    alive = np.ones(layout.num_units, dtype=bool)
    steps: list[GispStep] = []
    n_steps = int(np.ceil(round(prune_ratio / step, 9)))
    bar = tqdm(total=n_steps, desc="  gisp", unit="step", disable=not progress, dynamic_ncols=True)
    for k in range(1, n_steps + 1):
        target = min(round(k * step, 9), prune_ratio)
        budget = int(np.floor((1.0 - target) * total))
        take = [(k - 1) * blocks_per_step + j for j in range(blocks_per_step)]
        batch = blocks[[t % len(blocks) for t in take]]
        mult = _mask_multipliers(layout, alive, shape.num_layers)
        grads = mean_gradients(model, shape, batch, mult, progress=False)
        score = taylor_importance(model, shape, layout, grads) / costs
        score[~alive] = -np.inf
        keep = project(score, layout, budget) & alive
        removed = np.flatnonzero(alive & ~keep)
        removed = removed[np.argsort(score[removed], kind="stable")]
        steps.append(GispStep(target, tuple(int(u) for u in removed)))
        alive = keep
        bar.set_postfix_str(f"kept={layout.kept_cost(alive) / total:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    return steps


def mask_at(layout: UnitLayout, steps: list[GispStep], prune_ratio: float) -> np.ndarray:
    """The nested mask of a trajectory at ``prune_ratio`` (which must be one of its targets)."""
    alive = np.ones(layout.num_units, dtype=bool)
    for s in steps:
        alive[list(s.removed)] = False
        if abs(s.target - prune_ratio) < 1e-9:
            return alive
    targets = ", ".join(f"{s.target:g}" for s in steps)
    raise GraspError(f"prune ratio {prune_ratio} is not on this GISP trajectory ({targets}); "
                     "use one of those or re-run with a matching --gisp-step")


def _mask_multipliers(layout: UnitLayout, alive: np.ndarray, num_layers: int) -> Multipliers:
    mult = Multipliers.empty(num_layers)
    for seg in layout.segments:
        m = torch.from_numpy(alive[seg.start:seg.stop].astype(np.float32))
        (mult.ffn if seg.kind == FFN else mult.kv)[seg.layer] = m
    return mult
