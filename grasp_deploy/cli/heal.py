"""heal: distil the dense model back into a pruned checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .group import main, quiet_transformers
from .options import device_options, no_verify_option


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="CKPT_DIR to write: the checkpoint with healed weights (same shapes).")
@click.option("--teacher", default=None,
              help="The dense teacher; its fingerprint must match the checkpoint's source  "
                   "[default: the checkpoint's source model]")
@click.option("--data", default="wikitext2", show_default=True,
              help="Training text: wikitext2[:SPLIT] (train split by default), file:PATH, or "
                   "self: data-free, only text the teacher samples itself (see --samples).")
@click.option("--samples", type=int, default=None,
              help="Blocks of --seq-len tokens the teacher samples itself (temperature 1, top-p "
                   "0.95; through a vLLM server of the teacher where vLLM is installed, else "
                   "transformers), added to --data's blocks; cached for later runs  "
                   "[default: 1024 with --data self, else none]")
@click.option("--eval-data", default=None,
              help="The text you will evaluate on (e.g. file:wiki.test.raw): refused if it "
                   "overlaps --data.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (with --max-minutes: "
              "whichever comes first; the learning rate decays over them).")
@click.option("--max-minutes", type=float, default=None,
              help="Stop after this much training time (resumed runs count their earlier time).")
@click.option("--train", "train", default="all", show_default=True,
              type=click.Choice(["all", "lora"]),
              help="all: every kept projection weight; lora: LoRA adapters on every projection "
                   "(peft), merged into the weights at the end.")
@click.option("--lora-rank", type=int, default=16, show_default=True, help="With --train lora.")
@click.option("--lr", type=float, default=None,
              help="Peak AdamW learning rate (linear warm-up, then cosine to a tenth)  "
                   "[default: 3e-4 with --train all, 1e-3 with --train lora]")
@click.option("--batch-size", "-b", type=int, default=4, show_default=True,
              help="Blocks per step.")
@click.option("--seq-len", "-l", type=int, default=256, show_default=True,
              help="Tokens per block.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Softmax temperature of the distillation (loss scaled by T^2).")
@click.option("--ce-weight", type=float, default=0.0, show_default=True,
              help="Weight of the next-token cross-entropy added to the KL.")
@click.option("--held-out", type=int, default=8, show_default=True,
              help="Blocks of --data never trained on: the KL to the teacher before and after.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Warm-up steps.")
@click.option("--save-every", type=int, default=25, show_default=True,
              help="Steps between resume states (beside OUT; an interrupted run resumes).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: less memory, more time.")
@device_options
@no_verify_option
@click.option("--force", is_flag=True, help="Replace an existing CKPT_DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the healing record as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def heal(checkpoint, out, teacher, data, samples, eval_data, steps, max_minutes, train,
         lora_rank, lr, batch_size, seq_len, temperature, ce_weight, held_out, warmup, save_every,
         seed, gradient_checkpointing, device, dtype, no_verify, force, as_json, quiet):
    """Heal a pruned checkpoint by distillation from its dense source model.

    The kept projection weights (or LoRA adapters on them) train with AdamW (norms, embeddings
    and the LM head frozen) to
    match the teacher's next-token distribution on --data: KL divergence, optionally plus
    cross-entropy. Shapes never change, so serve, bench, compare and eval take the result as
    they take any checkpoint; its manifest records the teacher, data, steps, loss curve and
    held-out KL, and its model card says it was healed. Give --steps or --max-minutes.
    --dtype is the compute dtype (autocast); master weights stay float32.
    """
    from ..jobs.heal import HealConfig, run_heal, warning

    if quiet or as_json:
        quiet_transformers()
    config = HealConfig(
        checkpoint=checkpoint, out=out, teacher=teacher, data=data, samples=samples,
        eval_data=eval_data,
        steps=steps, max_minutes=max_minutes, train=train, lora_rank=lora_rank, lr=lr,
        batch_size=batch_size, seq_len=seq_len,
        temperature=temperature, ce_weight=ce_weight, held_out=held_out, warmup=warmup,
        save_every=save_every, seed=seed, device=device, dtype=dtype,
        gradient_checkpointing=gradient_checkpointing, force=force,
        progress=not (quiet or as_json), verify=not no_verify)
    say = (lambda _msg: None) if as_json else click.echo
    result = run_heal(config, say=say)
    record = result.record
    if as_json:
        click.echo(json.dumps({"directory": str(result.directory), **record}))
        return
    kl = record["held_out_kl"]
    click.echo(f"healed {checkpoint} -> {result.directory}: {record['steps']} steps, "
               f"{record['tokens']:,} tokens, {record['seconds'] / 60:.1f} min; held-out KL "
               f"{kl['before']:.4f} -> {kl['after']:.4f} ({kl['blocks']} blocks)")
    if (line := warning(record)) is not None:
        click.echo(line, err=True)
