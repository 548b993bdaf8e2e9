"""The pruning methods and post-steps, by name.

A method is a function ``MethodInput -> MethodResult`` (``base``) with a settings dataclass of
its own; adding one is a module with those two and one ``register`` line below (or a call to
``register`` from anywhere). Its options reach the command line from the dataclass.
"""

from __future__ import annotations

from ..core.errors import GraspError
from . import flap, gisp, grasp, magnitude, reconstruct, structprune, taylor, wanda_sp
from .base import (
    Method,
    MethodInput,
    MethodResult,
    MethodSettings,
    NoSettings,
    PostInput,
    PostStep,
    StageLog,
    flag,
)
from .gisp import GispSettings
from .grasp_settings import GraspSettings
from .reconstruct import ReconstructSettings
from .structprune import StructPruneSettings

METHODS: dict[str, Method] = {}
POST_STEPS: dict[str, PostStep] = {}


def register(entry: Method | PostStep) -> None:
    """Add a method or a post-step (a name may be registered once)."""
    table: dict = METHODS if isinstance(entry, Method) else POST_STEPS
    if entry.name in table:
        raise GraspError(f"{entry.name!r} is registered already")
    table[entry.name] = entry


def unregister(name: str) -> None:
    """Remove a method or post-step registered by ``register`` (tests use it)."""
    METHODS.pop(name, None)
    POST_STEPS.pop(name, None)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GraspError(f"--method {name!r} is unknown; use one of {', '.join(METHODS)}")
    return METHODS[name]


register(Method("grasp", grasp.prune, "learned global gates under the budget (GRASPrune)",
                GraspSettings))
register(Method("magnitude", magnitude.prune, "weight norms, uniform per-layer ratio",
                uses_calibration=False))
register(Method("wanda-sp", wanda_sp.prune, "|W| x activation norm, uniform per-layer ratio"))
register(Method("flap", flap.prune, "activation fluctuation, global, with bias compensation"))
register(Method("taylor", taylor.prune, "first-order |W x grad|, uniform per-layer ratio"))
register(Method("gisp", gisp.prune, "iterative global first-order; nested plans for every ratio",
                GispSettings))
register(Method("structprune", structprune.prune, "energy-allocated ADMM layer by layer with a "
                "ridge refit; one layer in memory at a time (models larger than the device)",
                StructPruneSettings, streams=True, refits=True))
register(reconstruct.STEP)

__all__ = ["METHODS", "POST_STEPS", "GispSettings", "GraspSettings", "Method", "MethodInput",
           "MethodResult", "MethodSettings", "NoSettings", "PostInput", "PostStep",
           "ReconstructSettings", "StageLog", "StructPruneSettings", "flag", "get_method",
           "register", "unregister"]
