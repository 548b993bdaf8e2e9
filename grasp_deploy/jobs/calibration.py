"""Calibration blocks for the prune job: cut from a text source, or sampled from the model
itself (data-free), with the description the plan records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..sources import text


@dataclass(frozen=True)
class Blocks:
    """How many calibration blocks of what length a run wants."""

    num_samples: int  # stage A (all of them for most methods)
    held_out: int  # beside those: GRASPrune's stage B
    seq_len: int
    seed: int
    progress: bool = True


@dataclass
class Calibration:
    stage_a: torch.Tensor | None
    stage_b: torch.Tensor | None
    description: dict[str, Any]

    def all_blocks(self) -> torch.Tensor:
        """Every block the run has (stage A, then stage B)."""
        assert self.stage_a is not None, "no calibration blocks"
        if self.stage_b is not None and len(self.stage_b):
            return torch.cat([self.stage_a, self.stage_b])
        return self.stage_a


def text_calibration(want: Blocks, calib, tokenizer) -> Calibration:
    """Blocks cut from a text source (none yet for ``self``: those need the model)."""
    if calib is None or calib.is_model_sampled:
        return Calibration(None, None, {"source": None})
    ids = text.tokenize(tokenizer, text.load_text(calib))
    blocks_a, blocks_b = text.cut_blocks(ids, want.seq_len, (want.num_samples, want.held_out),
                                         want.seed)
    description = {**text.describe(calib, tokens=int(ids.numel())), **_sizes(want)}
    return Calibration(blocks_a, blocks_b, description)


def sampled_calibration(want: Blocks, calib, model, tokenizer) -> Calibration:
    """Data-free calibration: blocks sampled from the model itself."""
    sampled = text.sample_from_model(model, tokenizer, want.num_samples + want.held_out,
                                     want.seq_len, want.seed, progress=want.progress)
    description = {**text.describe(calib), "sampling": "temperature 1, top_p 0.95, from BOS",
                   **_sizes(want)}
    return Calibration(sampled[: want.num_samples], sampled[want.num_samples:], description)


def _sizes(want: Blocks) -> dict[str, Any]:
    return dict(num_samples=want.num_samples, seq_len=want.seq_len,
                scale_samples=want.held_out, seed=want.seed)
