"""GRASPrune: learned gates over FFN channels and KV groups under one global parameter budget.

Settings and named recipes live in ``grasp_settings``, the training stages in ``gates``. The
method runs the optional Taylor initialisation, stage A (gates) and stage B (scales), resuming
each stage from the store when an earlier run of the same inputs was interrupted.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import MethodInput, MethodResult, StageLog
from .gates import initial_scores, train_gates, train_scales
from .grasp_settings import GraspSettings
from .importance import mean_gradients, taylor_importance


def prune(inp: MethodInput) -> MethodResult:
    settings: GraspSettings = inp.settings
    init = None
    if settings.init == "taylor":
        grads = mean_gradients(inp.loaded, inp.shape, inp.calibration[:settings.init_samples],
                               progress=inp.progress, desc="  init")
        importance = taylor_importance(inp.loaded, inp.shape, inp.layout, grads)
        init = initial_scores(importance / inp.layout.unit_costs(), inp.layout, settings.tau)
        del grads
    mask, stages = _gates(inp, init)
    if inp.held_out is None or len(inp.held_out) == 0:
        return MethodResult(mask, stages=stages)
    scales, stages["scales"] = _scales(inp, mask, inp.held_out)
    return MethodResult(mask, scales=scales, stages=stages)


def _gates(inp: MethodInput, init: np.ndarray | None) -> tuple[np.ndarray, dict[str, StageLog]]:
    """Stage A, or its result from the store when a previous run finished it."""
    done = inp.store.load().get("gates_done")
    if done is not None:
        return done["mask"], {"gates": StageLog(done["steps"], done["seconds"], done["losses"])}
    state = inp.store.load()
    mask, _, log = train_gates(
        inp.loaded, inp.shape, inp.layout, inp.calibration, inp.budget, inp.settings, inp.seed,
        kv_budget=inp.kv_budget,
        resume=state.get("current"), save=lambda s: inp.store.save(current=s),
        save_every=inp.save_every, on_step=inp.on_step, progress=inp.progress, init=init)
    inp.store.save(gates_done={"mask": mask, "steps": log.steps, "seconds": log.seconds,
                               "losses": log.losses}, current=None)
    return mask, {"gates": log}


def _scales(inp: MethodInput, mask: np.ndarray, held_out: torch.Tensor
            ) -> tuple[np.ndarray, StageLog]:
    """Stage B on the held-out blocks, resumed from the store's current state."""
    state = inp.store.load()
    gates_done = state.get("gates_done")
    return train_scales(
        inp.loaded, inp.shape, inp.layout, mask, held_out, inp.settings, inp.seed,
        resume=state.get("current"),
        save=lambda s: inp.store.save(gates_done=gates_done, current=s),
        save_every=inp.save_every, progress=inp.progress)
