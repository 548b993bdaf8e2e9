"""GISP: iterative global pruning with first-order importance; nested plans."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import GraspError
from ..core.masking import Multipliers
from ..core.projection import UnitLayout, project
from ..core.shape import FFN, ModelShape
from .base import MethodInput, MethodResult, MethodSettings, flag
from .gisp_file import (
    TRAJECTORY_FILE,
    GispStep,
    load_trajectory,
    trajectory_calibration,
    trajectory_record,
)
from .importance import mean_gradients, taylor_importance


@dataclass(frozen=True)
class GispSettings(MethodSettings):
    step: float = flag(0.025, "Prune-ratio increment per iteration (the plans of every "
                              "multiple of it are nested; trajectory.json records them).",
                       name="--gisp-step")
    blocks: int = flag(16, "Calibration blocks per iteration's gradient.", name="--gisp-blocks")
    from_trajectory: Path | None = flag(
        None, "Take the nested plan for --prune-ratio from an earlier gisp run's PLAN_DIR (no "
              "recomputation and no calibration: prune once, deploy many).")

    def __post_init__(self) -> None:
        if not 0.0 < self.step < 1.0 or self.blocks < 1:
            raise GraspError(f"--gisp-step {self.step} must be in (0, 1) and --gisp-blocks "
                             f"{self.blocks} positive")

    def record(self, num_samples: int) -> dict[str, Any]:
        return {"gisp_step": self.step, "gisp_blocks": self.blocks}

    def without_calibration(self) -> str | None:
        return None if self.from_trajectory is None else "--from-trajectory"


def gisp_trajectory(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                    blocks: torch.Tensor, prune_ratio: float, step: float = 0.025,
                    blocks_per_step: int = 16, progress: bool = True,
                    done: list[GispStep] | None = None,
                    save: Callable[[list[GispStep]], None] | None = None,
                    kv_budget: int | None = None) -> list[GispStep]:
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
    consecutive steps see different blocks. ``done``: the steps of an interrupted run (given to
    ``save`` after each step), which the trajectory continues from.

    ``kv_budget`` (KV heads) holds at every step, so every plan on the trajectory meets it:
    the first step removes the KV groups it asks for (the lowest-scoring), and later steps
    take the rest of the parameters from what is left.
    """
    if not 0 < step < 1:
        raise GraspError(f"GISP step {step} must be in (0, 1)")
    total, costs = layout.total_cost(), layout.unit_costs().astype(np.float64)
    steps = list(done or [])
    alive = np.ones(layout.num_units, dtype=bool)
    for s in steps:
        alive[list(s.removed)] = False
    n_steps = int(np.ceil(round(prune_ratio / step, 9)))
    bar = tqdm(total=n_steps, initial=len(steps), desc="  gisp", unit="step",
               disable=not progress, dynamic_ncols=True)
    for k in range(len(steps) + 1, n_steps + 1):
        target = min(round(k * step, 9), prune_ratio)
        budget = int(np.floor((1.0 - target) * total))
        take = [(k - 1) * blocks_per_step + j for j in range(blocks_per_step)]
        batch = blocks[[t % len(blocks) for t in take]]
        mult = _mask_multipliers(layout, alive, shape.num_layers)
        grads = mean_gradients(model, shape, batch, mult, progress=False)
        score = taylor_importance(model, shape, layout, grads) / costs
        score[~alive] = -np.inf
        keep = project(score, layout, budget, kv_budget=kv_budget) & alive
        removed = np.flatnonzero(alive & ~keep)
        removed = removed[np.argsort(score[removed], kind="stable")]
        steps.append(GispStep(target, tuple(int(u) for u in removed)))
        alive = keep
        if save is not None:
            save(steps)
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


def prune(inp: MethodInput) -> MethodResult:
    """Resumable: the steps made so far go to the store after each step. With
    ``from_trajectory``, the steps of that earlier run (for the same model and KV budget)."""
    settings: GispSettings = inp.settings
    calibration = None
    if settings.from_trajectory is not None:
        earlier = Path(settings.from_trajectory)
        steps = load_trajectory(earlier, inp.fingerprint, inp.kv_ratio)
        calibration = trajectory_calibration(earlier)
    else:
        saved = [GispStep(float(t), tuple(int(u) for u in removed))
                 for t, removed in inp.store.load().get("gisp_steps", [])]
        steps = gisp_trajectory(
            inp.loaded, inp.shape, inp.layout, inp.calibration, inp.prune_ratio, settings.step,
            settings.blocks, inp.progress, done=saved,
            save=lambda s: inp.store.save(gisp_steps=[[x.target, list(x.removed)] for x in s]),
            kv_budget=inp.kv_budget)
    record = trajectory_record(settings.step, inp.fingerprint, inp.kv_ratio, steps)
    return MethodResult(mask_at(inp.layout, steps, inp.prune_ratio),
                        files={TRAJECTORY_FILE: record}, calibration=calibration)
