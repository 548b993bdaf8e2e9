"""Opening a model for any job: its config checked (a supported family or a pruned checkpoint)
before weights load, and a pruned checkpoint's weights checked against its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import format as fmt
from ..checkpoint.read import needs_verification, read_checkpoint, shape_of, verify_checkpoint
from ..core.errors import GraspError
from ..core.plan import Plan
from ..core.shape import ModelShape, check_supported
from ..sources import models
from ..sources.models import ModelSource

__all__ = ["load_config", "load_model", "model_shape", "check_checkpoint", "check_plan_shape",
           "check_plan_matches"]


def load_config(source: ModelSource) -> Any:
    """The model's config, refused here when grasp-deploy cannot handle it."""
    config = models.load_config(source)
    if not fmt.is_pruned_config(config):
        check_supported(config, source.spec)
    return config


def model_shape(config: Any) -> ModelShape:
    return shape_of(config)


def check_checkpoint(source: ModelSource, verify: bool = True) -> None:
    """A local pruned checkpoint: every file against its manifest (unless ``verify`` is off:
    ``--no-verify``), and always its weights' shapes against its config."""
    if source.kind != "local":
        return
    info = read_checkpoint(Path(source.location))
    if needs_verification(info):
        verify_checkpoint(info, hashes=verify)


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", verify: bool = True) -> Any:
    """The frozen causal LM in eval mode; config and checkpoint checked before weights load."""
    load_config(source)
    check_checkpoint(source, verify)
    return models.load_model(source, dtype=dtype, device=device)


def check_plan_shape(plan: Plan, config: Any, model_name: str) -> None:
    """Before any weights load: the plan's units must exist in this model."""
    shape = model_shape(config)
    if shape != plan.source.shape:
        def brief(s: ModelShape) -> str:
            return (f"{s.num_layers} layers, hidden {s.hidden_size}, FFN "
                    f"{s.layers[0].intermediate_size}, {s.layers[0].num_key_value_heads} KV heads")
        raise GraspError(f"plan was made for {plan.source.name} ({brief(plan.source.shape)}) but "
                         f"{model_name} has {brief(shape)}; use the plan's source model")


def check_plan_matches(plan: Plan, model: torch.nn.Module, model_name: str) -> None:
    fp = models.fingerprint(model)
    if fp != plan.source.fingerprint:
        raise GraspError(f"plan was made for {plan.source.name} ({plan.source.fingerprint}) but "
                         f"{model_name} has fingerprint {fp}; use the plan's source model")
