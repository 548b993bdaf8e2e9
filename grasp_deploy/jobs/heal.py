"""``grasp-deploy heal CKPT --out CKPT2``: the pruned checkpoint's kept weights trained to match
its dense source model's next-token distribution (``methods.distill``), written as a checkpoint
like any other: same shapes and files, new weights, a ``healing`` record in the manifest.

The teacher must be the checkpoint's source (its fingerprint is checked); the text is cut into
``seq_len`` blocks in a seeded order, the first ``held_out`` of them never trained on and used to
measure the KL before and after. Every ``save_every`` steps the run's state (weights, optimizer,
step, loss curve) is saved beside OUT and an interrupted run resumes from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint import format as fmt
from ..checkpoint.card import model_card
from ..checkpoint.read import read_checkpoint, weight_files
from ..checkpoint.write import rewrite_weights, seal
from ..core.checks import check_number
from ..core.dtypes import dtype_name
from ..core.errors import GraspError
from ..core.fsutil import atomic_dir, check_target, sha256_file
from ..methods import distill
from ..sources import models
from ..sources.device import resolve_device, resolve_dtype
from . import heal_data, loading
from .export import CHECKPOINT_DIR
from .resume import ResumeStore, run_key

TRAINED = {"all": "all projection weights (AdamW)",
           "lora": "rank-{rank} LoRA adapters on every projection (AdamW, peft), merged"}


@dataclass(frozen=True)
class HealConfig:
    checkpoint: Path
    out: Path
    teacher: str | None = None  # default: the checkpoint's source model
    data: str = "wikitext2"  # its train split by default; "self": the teacher's samples only
    samples: int | None = None  # blocks the teacher samples itself [--data self: 1024]
    eval_data: str | None = None  # the evaluation text, checked not to overlap --data
    steps: int | None = None
    max_minutes: float | None = None
    lr: float | None = None  # default: methods.distill.DEFAULT_LR[train]
    train: str = "all"  # or "lora"
    lora_rank: int = 16
    batch_size: int = 4
    seq_len: int = 256
    temperature: float = 1.0
    ce_weight: float = 0.0
    held_out: int = 8
    warmup: int = 10
    save_every: int = 25
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # compute dtype (autocast); master weights stay float32
    gradient_checkpointing: bool = False
    force: bool = False
    progress: bool = True
    verify: bool = True

    def __post_init__(self) -> None:
        if self.steps is None and self.max_minutes is None:
            raise GraspError("give --steps N or --max-minutes M (or both): healing needs a bound")
        if self.steps is not None:
            check_number("--steps", self.steps, low=1, integer=True)
        if self.max_minutes is not None:
            check_number("--max-minutes", self.max_minutes, low=0, low_open=True)
        if self.train not in distill.DEFAULT_LR:
            raise GraspError(f"--train {self.train!r} is unknown; use all or lora")
        if self.samples is not None:
            check_number("--samples", self.samples, low=1, integer=True)
        if self.lr is not None:
            check_number("--lr", self.lr, low=0, low_open=True)
        check_number("--temperature", self.temperature, low=0, low_open=True)
        check_number("--lora-rank", self.lora_rank, low=1, integer=True)
        check_number("--ce-weight", self.ce_weight, low=0)
        for flag, value, low in (
                ("--batch-size", self.batch_size, 1), ("--seq-len", self.seq_len, 2),
                ("--held-out", self.held_out, 1), ("--warmup", self.warmup, 0),
                ("--save-every", self.save_every, 1)):
            check_number(flag, value, low=low, integer=True)


@dataclass(frozen=True)
class HealResult:
    directory: Path
    record: dict[str, Any]


def _manifest(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's manifest: ours, pruned, not quantized."""
    info = read_checkpoint(checkpoint)
    manifest = info.manifest
    if manifest is None or manifest.get("method") in (None, "none"):
        raise GraspError(f"{checkpoint} is not a pruned grasp-deploy checkpoint (no manifest of a "
                         "pruning method); heal exports of grasp-deploy prune")
    if manifest.get("quantization"):
        raise GraspError(f"{checkpoint} is quantized ({manifest['quantization']['scheme']}); heal "
                         "the unquantized checkpoint, then quantize the result")
    return manifest


def _teacher(config: HealConfig, manifest: dict[str, Any], dtype: torch.dtype,
             device: torch.device) -> tuple[Any, str]:
    source = models.resolve_source(config.teacher or manifest["source"]["model"])
    teacher = loading.load_model(source, dtype=dtype, device=device, verify=config.verify)
    want, got = manifest["source"]["fingerprint"], models.fingerprint(teacher)
    if got != want:
        raise GraspError(f"teacher {source.spec} has fingerprint {got}, but {config.checkpoint} "
                         f"was pruned from {want}; pass --teacher with the checkpoint's source")
    return teacher, source.spec


def sample_count(config: HealConfig) -> int:
    """Blocks the teacher samples: ``--samples``, or 1024 with ``--data self`` and no count."""
    return config.samples or (1024 if config.data == "self" else 0)


def _samples(config: HealConfig, manifest: dict[str, Any], teacher_name: str, teacher: Any,
             tokenizer: Any, say: Callable[[str], None],
             ) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    count = sample_count(config)
    if not count:
        return None, None
    spec = heal_data.SampleSpec(teacher_name, manifest["source"]["fingerprint"], count,
                                config.seq_len, config.seed)
    return heal_data.teacher_samples(spec, teacher, tokenizer, config.progress, say)


def _batch(blocks: torch.Tensor, step: int, size: int, seed: int) -> torch.Tensor:
    """The blocks of training step ``step``: epochs of a seeded permutation, so that a resumed
    run sees exactly the batches an uninterrupted one would."""
    n = blocks.shape[0]
    per_epoch = n // size
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return blocks[order[k * size:(k + 1) * size]]


@dataclass
class _Run:
    """What a training run carries from step to step (and into its resume state)."""
    step: int = 0
    seconds: float = 0.0
    curve: list[list[float]] | None = None  # [step, seconds, loss] every few steps


def _train(config: HealConfig, student: Any, teacher: Any, blocks: torch.Tensor,
           dtype: torch.dtype, store: ResumeStore) -> _Run:
    if config.train == "all":
        for _, p in distill.trainable(student):
            p.requires_grad_(True)
    params = distill.requiring_grad(student)
    lr = config.lr or distill.DEFAULT_LR[config.train]
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=0.0)
    saved, run = store.load(), _Run(curve=[])
    if saved:
        with torch.no_grad():
            for name, p in params:
                p.copy_(saved["weights"][name])
        opt.load_state_dict(saved["optimizer"])
        run = _Run(saved["step"], saved["seconds"], saved["curve"])
    device = next(student.parameters()).device
    budget = config.max_minutes * 60 if config.max_minutes is not None else float("inf")
    bar = tqdm(total=config.steps, initial=run.step, desc="heal", unit="step",
               disable=not config.progress, dynamic_ncols=True)
    while (config.steps is None or run.step < config.steps) and run.seconds < budget:
        t0 = time.perf_counter()
        batch = _batch(blocks, run.step, config.batch_size, config.seed).to(device)
        for group in opt.param_groups:
            group["lr"] = distill.learning_rate(run.step, lr, config.warmup, config.steps)
        with distill.compute(dtype, device):
            with torch.no_grad():
                target = distill.step_logits(teacher, batch)
            loss = distill.kd_loss(distill.step_logits(student, batch), target,
                                   batch[:, 1:].reshape(-1), config.temperature, config.ce_weight)
        loss.backward()
        value = float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run.step += 1
        run.seconds += time.perf_counter() - t0
        assert run.curve is not None
        run.curve.append([run.step, round(run.seconds, 2), round(value, 5)])
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if run.step % config.save_every == 0:
            store.save(weights={n: p.detach() for n, p in params}, optimizer=opt.state_dict(),
                       step=run.step, seconds=run.seconds, curve=run.curve)
    bar.close()
    return run


def _record(config: HealConfig, manifest: dict[str, Any], teacher: str, run: _Run,
            dtype: torch.dtype, kl: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``healing``: enough to say what was done and to do it again."""
    return {
        "teacher": {"model": teacher, "fingerprint": manifest["source"]["fingerprint"]},
        "data": config.data, "seq_len": config.seq_len, "batch_size": config.batch_size,
        "steps": run.step, "tokens": run.step * config.batch_size * config.seq_len,
        "seconds": round(run.seconds, 1),
        "train": TRAINED[config.train].format(rank=config.lora_rank),
        "lr": config.lr or distill.DEFAULT_LR[config.train], "warmup": config.warmup,
        "temperature": config.temperature, "ce_weight": config.ce_weight,
        "compute_dtype": dtype_name(dtype), "seed": config.seed, "held_out_kl": kl,
        "loss_curve": run.curve, "from": str(config.checkpoint)}


def _write(config: HealConfig, manifest: dict[str, Any], student: Any,
           record: dict[str, Any]) -> None:
    """OUT: the checkpoint's files with the healed weights, the manifest and card updated."""
    weights = {name: p.detach().cpu() for name, p in distill.trainable(student)}
    files = weight_files(config.checkpoint)
    with atomic_dir(Path(config.out), config.force, CHECKPOINT_DIR) as tmp:
        rewrite_weights(config.checkpoint, tmp, weights, files)
        new = {**manifest, "healing": record,
               "weights": {name: sha256_file(tmp / name) for name in files}}
        (tmp / fmt.CARD).write_text(model_card(new))
        seal(tmp, new)


def warning(record: dict[str, Any]) -> str | None:
    """A line for the user when healing made the checkpoint worse on its held-out blocks (the
    learning rate too high for the model, typically: the default diverged on a 0.5 B model)."""
    kl = record["held_out_kl"]
    if kl["after"] < kl["before"]:
        return None
    return (f"warning: healing raised the held-out KL to the teacher ({kl['before']:.4f} -> "
            f"{kl['after']:.4f}): the result is worse than its input; heal again with a lower "
            f"--lr (this run: {record['lr']:g}; try {record['lr'] / 5:g})")


def run_heal(config: HealConfig, say: Callable[[str], None] = print) -> HealResult:
    """Check everything (target, checkpoint, data, teacher) before training; write OUT
    atomically at the end; an interrupted run leaves its resume state, never a half OUT."""
    check_target(Path(config.out), config.force, CHECKPOINT_DIR)
    manifest = _manifest(config.checkpoint)
    source = models.resolve_source(str(config.checkpoint))
    loading.check_checkpoint(source, config.verify)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = models.load_tokenizer(source)
    ids = heal_data.text_ids(config.data, config.eval_data, tokenizer)
    teacher, teacher_name = _teacher(config, manifest, dtype, device)
    samples, sampled = _samples(config, manifest, teacher_name, teacher, tokenizer, say)
    held, train = heal_data.split_blocks(ids, samples, config.seq_len, config.held_out,
                                         config.batch_size, config.seed, config.data)
    student = loading.load_model(source, dtype=torch.float32, device=device, verify=False)
    before = distill.mean_kl(student, teacher, held, config.batch_size, dtype)
    say(f"held-out KL to the teacher before healing: {before:.4f} ({held.shape[0]} blocks)")
    if config.gradient_checkpointing:
        student.gradient_checkpointing_enable()
        student.enable_input_require_grads()  # frozen embeddings: the checkpoints need a grad
        student.train()  # transformers checkpoints only in training mode (no dropout here)
    if config.train == "lora":
        student = distill.with_lora(student, config.lora_rank)
    store = ResumeStore(Path(config.out), run_key({
        "checkpoint": manifest["weights"], "teacher": manifest["source"]["fingerprint"],
        **{k: v for k, v in vars(config).items()
           if k not in ("out", "max_minutes", "force", "progress", "verify", "teacher")}}))
    run = _train(config, student, teacher, train, dtype, store)
    if config.train == "lora":
        student = student.merge_and_unload()  # the adapters folded into the weights
    student.eval()
    after = distill.mean_kl(student, teacher, held, config.batch_size, dtype)
    record = _record(config, manifest, teacher_name, run, dtype,
                     {"blocks": held.shape[0], "before": before, "after": after})
    if sampled:
        record["samples"] = sampled
    _write(config, manifest, student, record)
    store.clear()
    return HealResult(Path(config.out), record)
