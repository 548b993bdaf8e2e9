"""Magnitude: per layer, keep the units whose weights have the largest L2 norm (uniform ratio)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.projection import UnitLayout
from ..core.shape import ModelShape
from .base import MethodInput, MethodResult
from .importance import projection_weights, unit_totals
from .uniform import keep_uniform


@torch.no_grad()
def magnitude_scores(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout) -> np.ndarray:
    """L2 norm of every weight a unit owns (its rows and columns), flat over all units."""
    squares = [{name: w.float().pow(2) for name, w in layer.items()}
               for layer in projection_weights(model)]
    return np.sqrt(unit_totals(squares, shape, layout))


def prune(inp: MethodInput) -> MethodResult:
    scores = magnitude_scores(inp.loaded, inp.shape, inp.layout)
    return MethodResult(keep_uniform(scores, inp.layout, inp.prune_ratio, inp.kv_budget))
