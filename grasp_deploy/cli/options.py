"""Options shared by several commands, and the typed configs they build."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.errors import GraspError
from ..jobs.prune import PruneConfig
from ..loadtest.ab import BenchConfig
from ..methods import METHODS
from ..methods.grasp import DEFAULT_RECIPE, RECIPES, GraspSettings
from ..methods.reconstruct import ReconstructSettings
from ..methods.structprune import StructPruneSettings

def stack(*decorators):
    """Apply option decorators in the order they are listed (as --help shows them)."""
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


no_verify_option = click.option(
    "--no-verify", is_flag=True,
    help="Load a pruned checkpoint without checking its files against grasp_manifest.json "
         "(by default every file, code included, must match; only for checkpoints you trust).")

device_options = stack(
    click.option("--device", default="auto", show_default=True,
                 help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N."),
    click.option("--dtype", default="auto", show_default=True,
                 help="auto (bfloat16 on CUDA or CPUs with native bf16, else float32), "
                      "bfloat16, float16 or float32."),
)

prune_options = stack(
    click.option("--prune-ratio", "-r", type=float, required=True,
                 help="Fraction of the prunable parameters (FFN + attention projections) to "
                      "remove, in (0, 1)."),
    click.option("--kv-ratio", type=float, default=None,
                 help="A second budget: KV-cache bytes per token at most this fraction of the "
                      "dense model's, in (0, 1] (e.g. -r 0.5 --kv-ratio 0.4: half the "
                      "parameters and 60% less KV cache). Every method honours it; by default "
                      "the KV heads kept follow from the parameter budget alone."),
    click.option("--method", default="grasp", show_default=True, type=click.Choice(list(METHODS)),
                 help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + "."),
    click.option("--recipe", default=DEFAULT_RECIPE, show_default=True, type=click.Choice(list(RECIPES)),
                 help="GRASPrune settings: paper (4 epochs of 512 x 512, tau 1.5, lr 1e-2, "
                      "score ranking, zero init, LM loss, index tie-break) or best (ours: "
                      "the same with Taylor-informed initial scores and rank tie-break; "
                      "measured in bench/results/quality.md). Options below override "
                      "single settings."),
    click.option("--calib", default="wikitext2", show_default=True,
                 help="Calibration text: wikitext2[:SPLIT] (hub), file:PATH "
                      "(.txt/.jsonl/.parquet), or self (sampled from the model: data-free)."),
    click.option("--num-samples", "-n", default=512, show_default=True, type=int,
                 help="Calibration blocks (stage A for grasp; all of them for baselines)."),
    click.option("--seq-len", "-l", default=512, show_default=True, type=int,
                 help="Tokens per calibration block."),
    click.option("--epochs", "-e", default=None, type=int,
                 help="Passes over the blocks in stage A  [default: recipe's, 4]"),
    click.option("--scale-epochs", default=1, show_default=True, type=int,
                 help="Passes of stage B (per-unit scales, on held-out blocks); 0 skips it."),
    click.option("--scale-samples", default=None, type=int,
                 help="Held-out blocks for stage B  [default: --num-samples]"),
    click.option("--lr", default=None, type=float, help="AdamW learning rate  [default: 1e-2]"),
    click.option("--tau", default=None, type=float,
                 help="Temperature of the keep probability sigmoid(score / tau)  [default: 1.5]"),
    click.option("--tie-break", default=None, type=click.Choice(["rank", "index"]),
                 help="Order of equal scores in the projection: rank (a near-uniform first "
                      "mask) or index (flat unit order, as a stable sort of the reference "
                      "gives)  [default: paper index, best rank]"),
    click.option("--projection", default=None, type=click.Choice(["score", "cost"]),
                 help="Rank units by keep probability (score) or by probability per "
                      "parameter (cost: greedy knapsack)  [default: recipe's]"),
    click.option("--init", "init", default=None, type=click.Choice(["zero", "taylor"]),
                 help="Initial gate scores: zero, or from first-order Taylor importance  "
                      "[default: recipe's]"),
    click.option("--loss", default=None, type=click.Choice(["ce", "kd", "ce+kd"]),
                 help="Gate loss: LM cross-entropy, KL to the dense logits, or both  "
                      "[default: recipe's]"),
    click.option("--gisp-step", default=0.025, show_default=True, type=float,
                 help="gisp: prune-ratio increment per iteration (the plans of every "
                      "multiple of it are nested; trajectory.json records them)."),
    click.option("--gisp-blocks", default=16, show_default=True, type=int,
                 help="gisp: calibration blocks per iteration's gradient."),
    click.option("--from-trajectory", type=click.Path(path_type=Path), default=None,
                 help="gisp: take the nested plan for --prune-ratio from an earlier gisp "
                      "run's PLAN_DIR (no recomputation: prune once, deploy many)."),
    click.option("--temperature", default=StructPruneSettings.temperature, show_default=True,
                 type=float,
                 help="structprune: temperature of the layer-wise sparsity allocation, "
                      "exp(-module log-energy / T); inf gives every module the same ratio "
                      "(measured best: bench/results/structprune-temperature-r50.md), small T "
                      "approaches one global threshold."),
    click.option("--reconstruct", is_flag=True,
                 help="After the method (any method): refit the kept columns of o_proj and "
                      "down_proj layer by layer, by ridge least squares, so each pruned layer "
                      "matches the dense layer on the pruned path's calibration states (all "
                      "calibration blocks, grasp's stage-B ones too; absorbs the FFN stage-B "
                      "scales; about three forward passes). structprune always ends so."),
    click.option("--reselect", is_flag=True,
                 help="With --reconstruct (implied): keep each layer's FFN width and KV-head "
                      "count as the method chose them, but choose which channels and heads by "
                      "ADMM on the layer's reconstruction objective on the pruned path "
                      "(StructPrune's pass 2), then refit with a bias; both leave the first "
                      "position of every block (an attention sink) out of their least squares "
                      "(bench/results/quality.md: grasp-best+reselect)."),
    click.option("--reconstruct-ridge", default=1e-3, show_default=True, type=float,
                 help="--reconstruct: ridge as a fraction of the Gram matrix's mean diagonal."),
    click.option("--align", default="auto", show_default=True,
                 help="Keep every layer's FFN width a multiple of this: 'auto' follows the "
                      "device pruning runs on (CUDA: 64 for Tensor Cores; CPU: 1, no multiple "
                      "measured faster), or an integer (e.g. 64 for a CPU-pruned model served "
                      "on a GPU)."),
    click.option("--tp", default=1, show_default=True, type=int,
                 help="Keep every layer's KV-head count a multiple of this tensor-parallel degree."),
    device_options,
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--checkpoint-every", default=50, show_default=True, type=int,
                 help="Save the gate state every N steps; re-running the same command resumes."),
)


def prune_config(model, out, force, quiet, prune_ratio, kv_ratio, method, recipe, calib, num_samples,
                 seq_len, epochs, scale_epochs, scale_samples, lr, tau, tie_break, projection,
                 init, loss, gisp_step, gisp_blocks, from_trajectory, temperature, reconstruct,
                 reselect, reconstruct_ridge, align, tp, device, dtype, seed, checkpoint_every) -> PruneConfig:
    settings = GraspSettings.from_recipe(recipe, epochs=epochs, scale_epochs=scale_epochs, lr=lr,
                                         tau=tau, tie_break=tie_break, projection=projection,
                                         init=init, loss=loss)
    return PruneConfig(prune_ratio=prune_ratio, kv_ratio=kv_ratio, out=out, model=model, method=method,
                       calib=calib, num_samples=num_samples, seq_len=seq_len, grasp=settings,
                       scale_samples=scale_samples, align=align, tp=tp, device=device,
                       dtype=dtype, seed=seed, force=force, checkpoint_every=checkpoint_every,
                       progress=not quiet, recipe=recipe if method == "grasp" else None,
                       gisp_step=gisp_step, gisp_blocks=gisp_blocks,
                       from_trajectory=from_trajectory,
                       structprune=StructPruneSettings(temperature=temperature),
                       reconstruct=(ReconstructSettings(reconstruct_ridge, reselect=reselect)
                                    if reconstruct or reselect else None))


def _levels(_ctx, _param, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise GraspError(f"--concurrency {text!r} must be integers separated by commas, e.g. 1,4,16")


def _slo(_ctx, _param, items: tuple[str, ...]) -> dict[str, float]:
    slo = {}
    for item in items:
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot") or not value:
            raise GraspError(f"--slo {item!r}: use ttft:MS or tpot:MS, e.g. --slo ttft:500")
        try:
            slo[key] = float(value)
        except ValueError:
            raise GraspError(f"--slo {item!r}: {value!r} is not a number of milliseconds")
    return slo


bench_options = stack(
    click.option("--concurrency", default="1,4,16,64", show_default=True, callback=_levels,
                 help="Closed-loop concurrency levels (comma-separated)."),
    click.option("--requests", default=64, show_default=True, type=int,
                 help="Requests per level, per model, per repeat."),
    click.option("--input-len", default=128, show_default=True, type=int,
                 help="Prompt tokens (seeded random ids, identical for both models)."),
    click.option("--output-len", default=64, show_default=True, type=int,
                 help="Output tokens per request (max_tokens with ignore_eos)."),
    click.option("--repeats", default=1, show_default=True, type=int,
                 help="Alternate dense/pruned this many times (ABAB)."),
    click.option("--request-rate", default=None, type=float,
                 help="Open loop: Poisson arrivals at this many requests/s (concurrency = user pool)."),
    click.option("--warmup", default=4, show_default=True, type=int,
                 help="Discarded requests after each server start."),
    click.option("--kv-cache-gb", default=1.0, show_default=True, type=float,
                 help="KV-cache memory given to both servers."),
    click.option("--max-model-len", default=None, type=int,
                 help="vLLM --max-model-len for the servers."),
    click.option("--vllm-dtype", default="auto", show_default=True,
                 help="vLLM --dtype for the servers."),
    click.option("--enforce-eager", is_flag=True, help="No torch.compile / CUDA graphs."),
    click.option("--slo", multiple=True, metavar="ttft:MS|tpot:MS", callback=_slo,
                 help="Goodput targets, e.g. --slo ttft:1000 --slo tpot:100."),
)


def bench_config(pruned: str, dense: str, out: Path, concurrency, requests, input_len,
                 output_len, repeats, request_rate, warmup, kv_cache_gb, max_model_len,
                 vllm_dtype, enforce_eager, slo) -> BenchConfig:
    return BenchConfig(
        pruned=pruned, dense=dense, out=Path(out), concurrency=concurrency, requests=requests,
        input_len=input_len, output_len=output_len, repeats=repeats, request_rate=request_rate,
        warmup=warmup, kv_cache_gb=kv_cache_gb, max_model_len=max_model_len, dtype=vllm_dtype,
        enforce_eager=enforce_eager, slo_ttft_ms=slo.get("ttft"), slo_tpot_ms=slo.get("tpot"))
