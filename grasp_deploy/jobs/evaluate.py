"""Perplexity, with the protocol every number of the project uses.

Tokenize the whole text once, cut it into consecutive non-overlapping ``seq_len`` windows
(the last partial window is dropped), perplexity = exp(mean over windows of the mean token NLL).
The model may be dense, an exported checkpoint, or a dense model with a plan applied as masks
and stage-B scales.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.dtypes import dtype_name
from ..core.errors import GraspError
from ..core.masking import multiplied
from ..core.plan import load_plan
from ..sources import models, text
from ..sources.device import resolve_device, resolve_dtype
from . import loading


@dataclass(frozen=True)
class EvalConfig:
    model: str | None = None
    plan: Path | None = None
    data: str = "wikitext2"
    seq_len: int = 2048
    max_windows: int | None = None
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True
    verify: bool = True  # a pruned checkpoint's files against its manifest (--no-verify: off)

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise GraspError(f"--seq-len {self.seq_len} is too short; use at least 2")
        if self.max_windows is not None and self.max_windows < 1:
            raise GraspError(f"--max-windows {self.max_windows} must be at least 1")
        if self.batch_size < 1:
            raise GraspError(f"--batch-size {self.batch_size} must be at least 1")


@dataclass(frozen=True)
class EvalResult:
    perplexity: float
    nll: float  # mean over windows of the mean token NLL
    windows: int
    seq_len: int
    tokens: int  # tokens scored: windows x seq_len
    model: str
    plan: str | None
    data: str
    dtype: str
    seconds: float
    engine: str = "transformers"  # or "vllm": scored through a served endpoint

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int,
               max_windows: int | None = None, batch_size: int = 1,
               progress: bool = False) -> tuple[float, int]:
    """(mean window NLL, windows) of ``model`` on the token stream ``ids`` (n_tokens,)."""
    windows = ids.numel() // seq_len
    if windows == 0:
        raise GraspError(f"the text has {ids.numel()} tokens, fewer than one window of "
                         f"{seq_len}; use a shorter --seq-len")
    if max_windows is not None:
        windows = min(windows, max_windows)
    blocks = ids[: windows * seq_len].view(windows, seq_len)
    device = next(model.parameters()).device
    total = 0.0
    for first in tqdm(range(0, windows, batch_size), desc="eval", unit="batch",
                      disable=not progress, dynamic_ncols=True):
        batch = blocks[first:first + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()  # (B, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
            reduction="none").view(batch.shape[0], -1).mean(dim=1)  # (B,) mean NLL per window
        total += float(nll.sum())
    return total / windows, windows


def run_eval(config: EvalConfig) -> EvalResult:
    plan = load_plan(config.plan) if config.plan is not None else None
    source = text.parse_source(config.data, default_split="test", allow_self=False, flag="--data")
    model_src = models.resolve_source(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    hf_config = loading.load_config(model_src)
    if plan is not None:
        loading.check_plan_shape(plan, hf_config, model_src.spec)
    limit = getattr(hf_config, "max_position_embeddings", None)
    if limit is not None and config.seq_len > limit:
        raise GraspError(f"--seq-len {config.seq_len} exceeds the model's context of {limit} "
                         "tokens; use a smaller --seq-len")
    tokenizer = models.load_tokenizer(model_src)
    ids = text.tokenize(tokenizer, text.load_text(source))
    if ids.numel() < config.seq_len:
        raise GraspError(f"{config.data} has {ids.numel()} tokens, fewer than one window of "
                         f"{config.seq_len}; use a shorter --seq-len")
    model = loading.load_model(model_src, dtype=dtype, device=device, verify=config.verify)
    t0 = time.perf_counter()
    masks = contextlib.nullcontext()
    if plan is not None:
        loading.check_plan_matches(plan, model, model_src.spec)
        masks = multiplied(model, plan.source.shape, plan.multipliers())
    with masks:
        nll, windows = perplexity(model, ids, config.seq_len, config.max_windows,
                                  config.batch_size, config.progress)
    return EvalResult(
        perplexity=math.exp(nll), nll=nll, windows=windows, seq_len=config.seq_len,
        tokens=windows * config.seq_len, model=model_src.spec,
        plan=str(config.plan) if config.plan is not None else None, data=config.data,
        dtype=dtype_name(dtype), seconds=time.perf_counter() - t0)
