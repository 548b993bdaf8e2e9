"""GRASPrune's two training stages over a frozen model (the math; the method is ``grasp``).

Stage A learns one score per unit with the backbone frozen. Before every step the keep
probabilities p = sigmoid(s / tau) are projected onto the budget (``core.projection.project``)
giving a hard mask m; the forward pass sees z = m + p - stopgrad(p) (straight-through), so the
budget holds at every step while gradients reach every score. The loss is the causal-LM
cross-entropy (or KL to the dense logits); AdamW updates the scores only.

Stage B fixes the mask and learns a scale gamma = 1 + 0.5 tanh(t) per kept unit on held-out
blocks; export folds the scales into ``down_proj`` columns and ``k_proj``/``v_proj`` rows.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.masking import Multipliers, multiplied
from ..core.projection import UnitLayout, project
from ..core.shape import FFN, KV, ModelShape
from .base import StageLog, StepFn
from .grasp_settings import GraspSettings

STAGE_A, STAGE_B = "gates", "scales"


# A checkpoint hook: called with the stage's resumable state every N steps.
SaveFn = Callable[[dict[str, Any]], None]


def split_flat(layout: UnitLayout, flat: torch.Tensor, into: Multipliers) -> Multipliers:
    """Write slices of a flat per-unit tensor into per-layer multipliers (views, no copies)."""
    for seg in layout.segments:
        (into.ffn if seg.kind == FFN else into.kv)[seg.layer] = flat[seg.start:seg.stop]
    return into


def _epoch_order(n: int, seed: int, stage: str, epoch: int) -> torch.Tensor:
    salt = 0 if stage == STAGE_A else 1
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(seed * 7919 + salt * 104729 + epoch)
    )


def _optimise(
    model: torch.nn.Module,
    shape: ModelShape,
    layout: UnitLayout,
    stage: str,
    param: torch.nn.Parameter,
    flat_multipliers: Callable[[int], tuple[torch.Tensor, str]],
    blocks: torch.Tensor,
    epochs: int,
    settings: GraspSettings,
    seed: int,
    resume: dict[str, Any] | None,
    save: SaveFn | None,
    save_every: int,
    progress: bool,
) -> StageLog:
    """The loop both stages share: batches of blocks, LM loss, AdamW on ``param`` only."""
    device = param.device
    optim = torch.optim.AdamW([param], lr=settings.lr, betas=settings.betas, eps=settings.eps,
                              weight_decay=0.0)
    per_epoch = math.ceil(len(blocks) / settings.batch_size)
    total = per_epoch * epochs
    log, start = StageLog(), 0
    if resume is not None and resume.get("stage") == stage:
        with torch.no_grad():
            param.copy_(resume["param"].to(device))
        optim.load_state_dict(resume["optim"])
        start, log.losses = int(resume["step"]), list(resume["losses"])
    mult = Multipliers.empty(shape.num_layers)
    bar = tqdm(total=total, initial=start, desc=f"{stage:>6}", unit="step", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    with multiplied(model, shape, mult):
        for step in range(start, total):
            epoch, pos = divmod(step, per_epoch)
            order = _epoch_order(len(blocks), seed, stage, epoch)
            batch = blocks[order[pos * settings.batch_size:(pos + 1) * settings.batch_size]]
            batch = batch.to(device)
            teacher = _dense_logits(model, mult, batch) if "kd" in settings.loss else None
            flat, status = flat_multipliers(step)
            split_flat(layout, flat, mult)
            loss = _loss(model, batch, teacher, settings.loss)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            log.losses.append(float(loss.detach()))
            bar.set_postfix_str(f"loss={log.losses[-1]:.3f} {status}", refresh=False)
            bar.update(1)
            if (
                save is not None
                and save_every > 0
                and (step + 1) % save_every == 0
                and step + 1 < total
            ):
                save({"stage": stage, "step": step + 1, "param": param.detach().cpu().clone(),
                      "optim": copy.deepcopy(optim.state_dict()), "losses": list(log.losses)})
    bar.close()
    log.steps, log.seconds = total - start, time.perf_counter() - t0
    return log


def _dense_logits(model: torch.nn.Module, mult: Multipliers, batch: torch.Tensor) -> torch.Tensor:
    """The frozen dense model's logits: the same weights with every multiplier switched off."""
    saved = mult.ffn, mult.kv
    mult.ffn, mult.kv = [None] * len(saved[0]), [None] * len(saved[1])
    try:
        with torch.no_grad():
            return model(input_ids=batch).logits.float()
    finally:
        mult.ffn, mult.kv = saved


def _loss(model: torch.nn.Module, batch: torch.Tensor, teacher: torch.Tensor | None,
          kind: str) -> torch.Tensor:
    if teacher is None:
        return model(input_ids=batch, labels=batch).loss
    out = model(input_ids=batch, labels=batch if kind == "ce+kd" else None)
    vocab = teacher.shape[-1]
    kd = torch.nn.functional.kl_div(
        torch.log_softmax(out.logits.float().view(-1, vocab), -1),
        torch.log_softmax(teacher.view(-1, vocab), -1), log_target=True, reduction="batchmean")
    return kd if kind == "kd" else out.loss + kd


def initial_scores(importance: np.ndarray, layout: UnitLayout, tau: float) -> np.ndarray:
    """Informed initial scores: log-importance standardised within each kind (FFN channels,
    KV groups) over all layers, clipped to +-3, so that sigmoid(s / tau) = sigmoid(z)."""
    s = np.zeros(layout.num_units, dtype=np.float64)
    for kind in (FFN, KV):
        idx = np.concatenate([np.arange(seg.start, seg.stop) for seg in layout.segments
                              if seg.kind == kind])
        x = np.log(np.maximum(importance[idx], 1e-30))
        z = (x - x.mean()) / max(float(x.std()), 1e-12)
        s[idx] = np.clip(z, -3.0, 3.0) * tau
    return s


def train_gates(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                blocks: torch.Tensor, budget: int, settings: GraspSettings, seed: int,
                resume: dict[str, Any] | None = None, save: SaveFn | None = None,
                save_every: int = 0, on_step: StepFn | None = None,
                progress: bool = True, init: np.ndarray | None = None,
                kv_budget: int | None = None) -> tuple[np.ndarray, np.ndarray, StageLog]:
    """Stage A. Returns (final hard mask, final scores, log). ``init``: initial scores. Every
    step's mask holds ``budget`` (parameters) and ``kv_budget`` (KV heads, when given)."""
    device = next(model.parameters()).device
    start = torch.zeros(layout.num_units) if init is None else torch.as_tensor(init).float()
    scores = torch.nn.Parameter(start.to(device))
    total = layout.total_cost()
    per_cost = settings.projection == "cost"

    def flat_multipliers(step: int) -> tuple[torch.Tensor, str]:
        p = torch.sigmoid(scores / settings.tau)
        mask = project(p.detach().cpu().numpy(), layout, budget, settings.tie_break, per_cost,
                       kv_budget)
        if on_step is not None:
            on_step(STAGE_A, step, mask)
        m = torch.from_numpy(mask).to(device=device, dtype=p.dtype)
        kept = layout.kept_cost(mask) / total
        return m + p - p.detach(), f"kept={kept:.3f}"

    log = _optimise(model, shape, layout, STAGE_A, scores, flat_multipliers, blocks,
                    settings.epochs, settings, seed, resume, save, save_every, progress)
    final = torch.sigmoid(scores.detach() / settings.tau).cpu().numpy()
    return (project(final, layout, budget, settings.tie_break, per_cost, kv_budget),
            scores.detach().cpu().numpy(), log)


def train_scales(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                 mask: np.ndarray, blocks: torch.Tensor, settings: GraspSettings, seed: int,
                 resume: dict[str, Any] | None = None, save: SaveFn | None = None,
                 save_every: int = 0, progress: bool = True) -> tuple[np.ndarray, StageLog]:
    """Stage B. Returns (gamma per unit, flat; 1.0 where nothing was learned, log)."""
    device = next(model.parameters()).device
    t = torch.nn.Parameter(torch.zeros(layout.num_units, device=device))
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32)).to(device)

    def flat_multipliers(step: int) -> tuple[torch.Tensor, str]:
        gamma = 1.0 + 0.5 * torch.tanh(t)
        return m * gamma, f"|gamma-1|={float((gamma.detach() - 1).abs()[m > 0].mean()):.4f}"

    log = _optimise(model, shape, layout, STAGE_B, t, flat_multipliers, blocks,
                    settings.scale_epochs, settings, seed, resume, save, save_every, progress)
    gamma = (1.0 + 0.5 * torch.tanh(t.detach())).cpu().numpy().astype(np.float32)
    return gamma, log
