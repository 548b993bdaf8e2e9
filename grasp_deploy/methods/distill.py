"""Healing by distillation: the pruned model (student) learns the dense model's (teacher's)
next-token distribution on text. The math only; ``jobs.heal`` runs it on checkpoints.

loss = T^2 * KL(p_teacher^T || p_student^T) per token, averaged (Hinton et al. 2015; NVIDIA
Minitron's main lever), + ``ce_weight`` * cross-entropy on the text's next tokens. What trains:
every weight and bias of the decoder layers' projections (``all``), or LoRA adapters on them
(``lora``, with peft), merged into the weights at the end; norms, embeddings and the LM head stay
frozen either way (shapes never change, so the checkpoint keeps its per-layer widths).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Peak learning rates measured to work for each kind of training (``jobs.heal``'s defaults).
DEFAULT_LR = {"all": 3e-4, "lora": 1e-3}
# Tokens whose vocabulary-wide log-softmax is held at once: bounds memory on a 151,936-token
# vocabulary (a chunk of 512 positions: 311 MB per float32 copy).
CHUNK = 512


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The decoder layers' projection weights and biases, in name order; nothing else."""
    return [(name, p) for name, p in sorted(model.named_parameters())
            if ".layers." in name and "norm" not in name]


def with_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """``model`` with rank-``rank`` LoRA adapters on every projection (B = 0: unchanged at
    first); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none",
                        target_modules=PROJECTIONS)
    return get_peft_model(model, config)


def requiring_grad(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in sorted(model.named_parameters()) if p.requires_grad]


def compute(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """Autocast to ``dtype`` (bf16 where the hardware has it), master weights in float32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
            temperature: float = 1.0, ce_weight: float = 0.0) -> torch.Tensor:
    """Mean per-token distillation loss of ``student`` logits (N, V) against ``teacher``'s,
    in chunks of positions; ``targets`` (N,) the text's next tokens for the cross-entropy."""
    total = student.new_zeros((), dtype=torch.float32)
    n = student.shape[0]
    for part in _chunks(n):
        s = F.log_softmax(student[part].float() / temperature, dim=-1)
        t = F.log_softmax(teacher[part].float() / temperature, dim=-1)
        kl = (t.exp() * (t - s)).sum(dim=-1).sum()
        total = total + kl * temperature ** 2
        if ce_weight:
            total = total + ce_weight * F.cross_entropy(student[part].float(), targets[part],
                                                        reduction="sum")
    return total / n


def step_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits for every position but the last, flattened: (B * (T - 1), V)."""
    logits = model(input_ids=batch).logits
    return logits[:, :-1].reshape(-1, logits.shape[-1])


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher: torch.nn.Module, blocks: torch.Tensor,
            batch_size: int = 4, dtype: torch.dtype | None = None) -> float:
    """Mean per-token KL(teacher || student) at temperature 1 over ``blocks`` (n, T)."""
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for first in range(0, blocks.shape[0], batch_size):
        batch = blocks[first:first + batch_size].to(device)
        with compute(dtype, device):
            s, t = step_logits(student, batch), step_logits(teacher, batch)
        total += float(kd_loss(s, t, batch[:, 1:].reshape(-1))) * s.shape[0]
        count += s.shape[0]
    return total / count


def learning_rate(step: int, peak: float, warmup: int, total: int | None) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to a tenth of ``peak`` by ``total``
    (constant after warm-up when the run is bounded by time only)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
