"""Calibration blocks for the prune job: cut from a text source, or sampled from the model
itself (data-free), with the description the plan records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..sources import text

if TYPE_CHECKING:
    from .prune import PruneConfig


@dataclass
class Calibration:
    stage_a: torch.Tensor | None
    stage_b: torch.Tensor | None
    description: dict[str, Any]


def text_calibration(config: "PruneConfig", calib, tokenizer) -> Calibration:
    """Blocks cut from a text source (none yet for ``self``: those need the model)."""
    if calib is None or calib.is_model_sampled:
        return Calibration(None, None, {"source": None})
    ids = text.tokenize(tokenizer, text.load_text(calib))
    blocks_a, blocks_b = text.cut_blocks(ids, config.seq_len,
                                         (config.num_samples, config.stage_b_samples), config.seed)
    description = {**text.describe(calib, tokens=int(ids.numel())), **_sizes(config)}
    return Calibration(blocks_a, blocks_b, description)


def sampled_calibration(config: "PruneConfig", calib, model, tokenizer) -> Calibration:
    """Data-free calibration: blocks sampled from the model itself."""
    sampled = text.sample_from_model(model, tokenizer, config.num_samples + config.stage_b_samples,
                                     config.seq_len, config.seed, progress=config.progress)
    description = {**text.describe(calib), "sampling": "temperature 1, top_p 0.95, from BOS",
                   **_sizes(config)}
    return Calibration(sampled[: config.num_samples], sampled[config.num_samples:], description)


def _sizes(config: "PruneConfig") -> dict[str, Any]:
    return dict(num_samples=config.num_samples, seq_len=config.seq_len,
                scale_samples=config.stage_b_samples, seed=config.seed)
