"""The pruning methods, by name. Each is a function ``MethodInput -> MethodResult``
(``base``); adding one is a module with that function and one line in ``METHODS``."""

from __future__ import annotations

from ..core.errors import GraspError
from . import flap, gisp, grasp, magnitude, structprune, taylor, wanda_sp
from .base import Method, MethodInput, MethodResult, StageLog

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("grasp", grasp.prune, "learned global gates under the budget (GRASPrune)"),
    Method("magnitude", magnitude.prune, "weight norms, uniform per-layer ratio",
           uses_calibration=False),
    Method("wanda-sp", wanda_sp.prune, "|W| x activation norm, uniform per-layer ratio"),
    Method("flap", flap.prune, "activation fluctuation, global, with bias compensation"),
    Method("taylor", taylor.prune, "first-order |W x grad|, uniform per-layer ratio"),
    Method("gisp", gisp.prune, "iterative global first-order; nested plans for every ratio"),
    Method("structprune", structprune.prune, "energy-allocated ADMM layer by layer with a "
           "ridge refit; one layer in memory at a time (models larger than the device)",
           streams=True),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GraspError(f"--method {name!r} is unknown; use one of {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "MethodInput", "MethodResult", "StageLog", "get_method"]
