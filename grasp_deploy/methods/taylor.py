"""LLM-Pruner-style first-order Taylor importance per unit, uniform ratio, no recovery tuning."""

from __future__ import annotations

from .base import MethodInput, MethodResult
from .importance import mean_gradients, taylor_importance
from .uniform import keep_uniform


def prune(inp: MethodInput) -> MethodResult:
    """Resumable: the running gradient sums go to the store every ``save_every`` blocks."""
    grads = mean_gradients(inp.loaded, inp.shape, inp.calibration, progress=inp.progress,
                           resume=inp.store.load().get("taylor"),
                           save=lambda state: inp.store.save(taylor=state),
                           save_every=inp.save_every)
    scores = taylor_importance(inp.loaded, inp.shape, inp.layout, grads)
    return MethodResult(keep_uniform(scores, inp.layout, inp.prune_ratio, inp.kv_budget))
