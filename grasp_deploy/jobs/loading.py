"""Opening a model for any job: its config checked (a supported family or a pruned checkpoint)
before weights load, and a pruned checkpoint's weights checked against its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import format as fmt
from ..checkpoint.read import read_checkpoint, shape_of, verify_checkpoint
from ..core.errors import GraspError
from ..core.plan import Plan
from ..core.shape import ModelShape, check_supported
from ..sources import models
from ..sources.models import ModelSource

__all__ = ["load_config", "load_model", "model_shape", "check_plan_matches"]


def load_config(source: ModelSource) -> Any:
    """The model's config, refused here when grasp-deploy cannot handle it."""
    config = models.load_config(source)
    if not fmt.is_pruned_config(config):
        check_supported(config, source.spec)
    return config


def model_shape(config: Any) -> ModelShape:
    return shape_of(config)


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Any:
    """The frozen causal LM in eval mode (config checked first, before any weights load)."""
    config = load_config(source)
    if source.kind == "local" and fmt.is_pruned_config(config):
        # Shapes against config and readable headers: a clear error instead of a stack trace.
        verify_checkpoint(read_checkpoint(Path(source.location)), hashes=False)
    return models.load_model(source, dtype=dtype, device=device)


def check_plan_matches(plan: Plan, model: torch.nn.Module, model_name: str) -> None:
    fp = models.fingerprint(model)
    if fp != plan.source.fingerprint:
        raise GraspError(f"plan was made for {plan.source.name} ({plan.source.fingerprint}) but "
                         f"{model_name} has fingerprint {fp}; use the plan's source model")
