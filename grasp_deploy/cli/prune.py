"""prune, export, inspect, models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..core.errors import GraspError
from . import show
from .group import main, quiet_transformers
from .options import no_verify_option, prune_config, prune_options
from .parts import PartsCommand


@main.command(cls=PartsCommand)
@click.argument("model", required=False)
@prune_options
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="PLAN_DIR to write (plan.json, run.json).")
@click.option("--force", is_flag=True, help="Replace an existing PLAN_DIR.")
@click.option("--for-quantize", "for_quantize", default=None, metavar="SCHEME",
              help="The plan will be exported with --quantize SCHEME: for w4a16, --align auto "
                   "keeps FFN widths multiples of 32 (vLLM's 4-bit CPU kernel) and an --align "
                   "that does not is refused. Default: no constraint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prune(model, out, force, for_quantize, quiet, **options):
    """Learn which FFN channels and KV groups to keep; write a plan.

    The plan removes --prune-ratio of the prunable parameters, with each layer getting its own
    FFN width and KV-head count. Export turns it into a smaller dense checkpoint. After the
    run's own options come --method and each method's own (named in their help), then the
    post-steps any method's plan can go through (--reconstruct).
    """
    from ..jobs.prune import run_prune

    config = replace(prune_config(model, out, force, quiet, **options), quantize=for_quantize)
    if quiet:
        quiet_transformers()
    show.prune_summary(run_prune(config))


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] PLAN_DIR")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="CKPT_DIR to write (atomically).")
@click.option("--format", "fmt", default="safetensors", show_default=True,
              type=click.Choice(["safetensors", "onnx"]),
              help="onnx also writes onnx/model.onnx and checks it with onnxruntime.")
@click.option("--dtype", default="source", show_default=True,
              help="Weight dtype: source (as the source checkpoint), bfloat16, float16, float32.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Split weights into shards (with an index) above this size.")
@click.option("--quantize", default=None, metavar="SCHEME",
              help="Also quantize every decoder projection, written in compressed-tensors' "
                   "format for vLLM and transformers: int8 (W8A8: int8 weights per channel, "
                   "int8 activations per token at run time) or w4a16 (4-bit weights in groups, "
                   "16-bit activations; widths multiples of 32). Default: no quantization.")
@click.option("--dense", is_flag=True,
              help="No plan: export MODEL itself, quantized (needs --quantize); the baseline a "
                   "quantized pruned model is compared with. A plain checkpoint of MODEL's "
                   "architecture.")
@click.option("--calib", default=None, metavar="TEXT",
              help="With --quantize w4a16: choose the 4-bit weights by GPTQ on this text "
                   "(wikitext2[:SPLIT] or file:PATH), so that each layer's output on it changes "
                   "least, instead of rounding each weight to nearest. Default: nearest.")
@click.option("--num-samples", "-n", default=128, show_default=True, type=int,
              help="GPTQ's calibration blocks (with --calib).")
@click.option("--seq-len", "-l", default=256, show_default=True, type=int,
              help="Tokens per GPTQ calibration block (with --calib).")
@click.option("--force", is_flag=True, help="Replace an existing CKPT_DIR.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export(args, out, fmt, dtype, max_shard_size, quantize, dense, calib, num_samples, seq_len,
           force, quiet):
    """Materialise a plan: a smaller dense checkpoint with per-layer widths.

    MODEL defaults to the plan's source model. Given a checkpoint instead of a plan (a healed
    one, say) and --quantize, that checkpoint is quantized as it stands. The directory loads with
    AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True) in stock transformers,
    and with grasp-deploy serve (vLLM).
    """
    from ..checkpoint.format import MANIFEST
    from ..jobs.export import ExportConfig, run_checkpoint_export, run_dense_export, run_export

    gptq: dict[str, Any] = dict(calib=calib, num_samples=num_samples, seq_len=seq_len,
                                progress=not quiet)
    if dense:
        if len(args) != 1:
            raise GraspError(f"export --dense takes MODEL alone, got {len(args)} arguments")
        show.export_summary(run_dense_export(ExportConfig(
            plan_dir=Path(args[0]), out=out, model=args[0], format=fmt, dtype=dtype,
            max_shard_size=max_shard_size, force=force, quantize=quantize, **gptq)))
        return
    if len(args) > 2:
        raise GraspError(f"export takes [MODEL] PLAN_DIR, got {len(args)} arguments")
    if len(args) == 1 and (Path(args[0]) / MANIFEST).is_file():  # a checkpoint: quantize it
        show.export_summary(run_checkpoint_export(ExportConfig(
            plan_dir=Path(args[0]), out=out, format=fmt, dtype=dtype,
            max_shard_size=max_shard_size, force=force, quantize=quantize, **gptq)))
        return
    model, plan_dir = (None, args[0]) if len(args) == 1 else args
    show.export_summary(run_export(ExportConfig(
        plan_dir=Path(plan_dir), out=out, model=model, format=fmt, dtype=dtype,
        max_shard_size=max_shard_size, force=force, quantize=quantize, **gptq)))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@no_verify_option
def inspect(checkpoint, as_json, no_verify):
    """Per-layer widths, parameter counts and KV-cache bytes of CHECKPOINT.

    First verifies every file (weights, config, code, tokenizer) against the sha256 in
    grasp_manifest.json and every tensor shape against config.json.
    """
    from ..checkpoint.read import inspect_checkpoint

    report = inspect_checkpoint(checkpoint, verify=not no_verify)
    click.echo(json.dumps(report)) if as_json else show.inspect_report(report)


@main.command()
@click.option("--fetch", "fetch_name", default=None, metavar="NAME",
              help="Download and convert a known model into the cache now.")
def models(fetch_name):
    """List the supported model families and the known models (with their cache state);
    --fetch one. Any local directory or hub id of a supported family can be pruned."""
    from ..core.shape import FAMILIES
    from ..sources import known

    if fetch_name is not None:
        click.echo(f"{fetch_name} ready at {known.fetch_known(fetch_name)}")
        return
    click.echo("supported families (config.json model_type):")
    for family in FAMILIES.values():
        click.echo(f"  {family.name:<12} {family.notes}")
    click.echo("known models (no hub needed):")
    rows = known.describe_known()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        state = f"cached at {row['path']}" if row["cached"] else "not fetched (use --fetch)"
        click.echo(f"  {row['name']:<{width}} {row['description']}\n  {'':<{width}} "
                   f"{row['source']}; {state}")
