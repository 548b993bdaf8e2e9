"""Options shared by several commands, and the typed configs they build."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.align import parse_align
from ..core.errors import GraspError
from ..jobs.prune import PruneConfig
from ..loadtest.config import BenchConfig
from ..loadtest.workload import KINDS
from .parts import build_parts, given_options


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

# vLLM's parallel sizes, given to the launcher (which binds each CPU rank its own cores): serve
# and bench.
PARALLEL_OPTIONS = (
    click.option("--tensor-parallel-size", "-tp", "tensor_parallel", default=1,
                 show_default=True, type=int,
                 help="vLLM tensor parallelism: workers that each hold 1/N of every layer's heads "
                      "and FFN channels. Every layer must split (checked before start-up; prune "
                      "with --tp N to make it so); on CPU each worker gets its own cores."),
    click.option("--pipeline-parallel-size", "-pp", "pipeline_parallel", default=1,
                 show_default=True, type=int,
                 help="vLLM pipeline parallelism: workers that each hold a run of whole layers."),
)


def _align(_ctx, _param, value: str) -> int | str:
    return parse_align(value)


# The run's own options; the method's and post-steps' come from their settings (``parts``).
prune_options = stack(
    click.option(
        "--prune-ratio",
        "-r",
        type=float,
        required=True,
        help=(
            "Fraction of the prunable parameters (FFN + attention projections) to "
            "remove, in (0, 1)."
        ),
    ),
    click.option(
        "--kv-ratio",
        type=float,
        default=None,
        help=(
            "A second budget: KV-cache bytes per token at most this fraction of the "
            "dense model's, in (0, 1] (e.g. -r 0.5 --kv-ratio 0.4: half the "
            "parameters and 60% less KV cache). Every method honours it; by default "
            "the KV heads kept follow from the parameter budget alone."
        ),
    ),
    click.option(
        "--calib",
        default="wikitext2",
        show_default=True,
        help=(
            "Calibration text: wikitext2[:SPLIT] (hub), file:PATH "
            "(.txt/.jsonl/.parquet), or self (sampled from the model: data-free)."
        ),
    ),
    click.option(
        "--num-samples",
        "-n",
        default=512,
        show_default=True,
        type=int,
        help="Calibration blocks (stage A for grasp; all of them for baselines).",
    ),
    click.option(
        "--seq-len",
        "-l",
        default=512,
        show_default=True,
        type=int,
        help="Tokens per calibration block.",
    ),
    click.option(
        "--align",
        default="auto",
        show_default=True,
        callback=_align,
        help=(
            "Keep every layer's FFN width a multiple of this: 'auto' follows the "
            "device pruning runs on (CUDA: 64 for Tensor Cores; CPU: 64, so that layers "
            "share vLLM's oneDNN kernels), halved for narrow models; or an integer "
            "(1: any width)."
        ),
    ),
    click.option(
        "--tp",
        default=1,
        show_default=True,
        type=int,
        help="Tensor-parallel degree to serve at: every layer's KV-head count and FFN width "
             "stay multiples of it, so that 'serve --tensor-parallel-size N' can split them.",
    ),
    device_options,
    click.option("--seed", default=0, show_default=True, type=int),
    click.option(
        "--checkpoint-every",
        default=50,
        show_default=True,
        type=int,
        help="Save the gate state every N steps; re-running the same command resumes.",
    ),
)


def prune_config(model, out, force, quiet, method, prune_ratio, kv_ratio, calib, num_samples,
                 seq_len, align, tp, device, dtype, seed, checkpoint_every,
                 **part_options) -> PruneConfig:
    """The prune job's config from a command's options (the current click context tells
    which of the parts' options were typed)."""
    given = given_options(click.get_current_context(), part_options)
    method_settings, post_steps = build_parts(method, given)
    return PruneConfig(prune_ratio=prune_ratio, kv_ratio=kv_ratio, out=out, model=model,
                       method=method, calib=calib, num_samples=num_samples, seq_len=seq_len,
                       method_settings=method_settings, post_steps=post_steps, align=align,
                       tp=tp, device=device, dtype=dtype, seed=seed, force=force,
                       checkpoint_every=checkpoint_every, progress=not quiet)


def _levels(_ctx, _param, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise GraspError(f"--concurrency {text!r} must be integers separated by commas, "
                         "e.g. 1,4,16") from None


def _rates(_ctx, _param, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise GraspError(f"--request-rate {text!r} must be numbers separated by commas, "
                         "e.g. 0.5,1,2") from None


def _slo(_ctx, _param, items: tuple[str, ...]) -> dict[str, float]:
    slo = {}
    for item in items:
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot") or not value:
            raise GraspError(f"--slo {item!r}: use ttft:MS or tpot:MS, e.g. --slo ttft:500")
        try:
            slo[key] = float(value)
        except ValueError:
            raise GraspError(f"--slo {item!r}: {value!r} is not a number of "
                             "milliseconds") from None
    return slo


bench_options = stack(
    click.option(
        "--concurrency",
        default="1,4,16,64",
        show_default=True,
        callback=_levels,
        help="Closed-loop concurrency levels (comma-separated).",
    ),
    click.option(
        "--requests",
        default=64,
        show_default=True,
        type=int,
        help="Requests per level, per model, per repeat.",
    ),
    click.option(
        "--input-len",
        default="128",
        show_default=True,
        metavar="N|LO..HI|normal:MEAN,SD",
        help="Prompt tokens per request: fixed, uniform or normal (seeded, identical for both "
             "models; with --workload prefix, the part after the shared prefix).",
    ),
    click.option(
        "--output-len",
        default="64",
        show_default=True,
        metavar="N|LO..HI|normal:MEAN,SD",
        help="Output tokens per request (max_tokens with ignore_eos), drawn like --input-len.",
    ),
    click.option(
        "--workload",
        type=click.Choice(KINDS),
        default="random",
        show_default=True,
        help="random: random token ids; text: windows of --prompts text; prefix: "
             "--prefix-groups shared prefixes of --prefix-len tokens before each prompt "
             "(cut from --prompts if given); chat: sessions of --turns messages through "
             "/v1/chat/completions, each turn with the history so far.",
    ),
    click.option(
        "--prompts",
        default=None,
        metavar="SOURCE",
        help="Text the prompts are cut from (file:PATH or wikitext2[:split]), tokenized by the "
             "dense model's tokenizer.",
    ),
    click.option("--prefix-len", default=0, type=int,
                 help="--workload prefix: tokens of each shared prefix."),
    click.option("--prefix-groups", default=1, show_default=True, type=int,
                 help="--workload prefix: how many different prefixes (request i uses i mod N)."),
    click.option("--turns", default=1, show_default=True, type=int,
                 help="--workload chat: user turns per session (each turn is one request)."),
    click.option("--repeats", default=1, show_default=True, type=int,
                 help="Alternate dense/pruned this many times (ABAB)."),
    click.option(
        "--request-rate",
        default=None,
        metavar="RATE[,RATE...]",
        callback=_rates,
        help="Open loop: Poisson arrivals at this many requests/s (concurrency = user pool). "
             "Several rates sweep: one level per rate over the largest --concurrency as the "
             "pool, a latency-throughput curve for both models (pareto.png).",
    ),
    click.option("--warmup", default=4, show_default=True, type=int,
                 help="Discarded requests after each server start."),
    click.option("--kv-cache-gb", default=1.0, show_default=True, type=float,
                 help="KV-cache memory given to both servers."),
    *PARALLEL_OPTIONS,
    click.option(
        "--max-model-len", default=None, type=int, help="vLLM --max-model-len for the servers."
    ),
    click.option(
        "--vllm-dtype", default="auto", show_default=True, help="vLLM --dtype for the servers."
    ),
    click.option("--enforce-eager", is_flag=True, help="No torch.compile / CUDA graphs."),
    click.option(
        "--profile/--no-profile",
        default=True,
        show_default=True,
        help="After the A/B, profile the dense model's decode step once more (one server "
             "start, one short run per concurrency) and report the Amdahl bound: the speed-up "
             "left when only the decoder shrinks, and the fraction of it the pruned model "
             "reached.",
    ),
    click.option(
        "--slo",
        multiple=True,
        metavar="ttft:MS|tpot:MS",
        callback=_slo,
        help="Goodput targets, e.g. --slo ttft:1000 --slo tpot:100.",
    ),
)


BENCH_OPTIONS = ("concurrency", "requests", "input_len", "output_len", "workload", "prompts",
                 "prefix_len", "prefix_groups", "turns", "repeats", "request_rate", "warmup",
                 "kv_cache_gb", "tensor_parallel", "pipeline_parallel", "max_model_len",
                 "vllm_dtype", "enforce_eager", "profile", "slo")


def bench_config(pruned: str, dense: str, out: Path, *, vllm_dtype, slo,
                 **options) -> BenchConfig:
    """The A/B config from ``bench_options`` (named as in ``BENCH_OPTIONS``)."""
    return BenchConfig(pruned=pruned, dense=dense, out=Path(out), dtype=vllm_dtype,
                       slo_ttft_ms=slo.get("ttft"), slo_tpot_ms=slo.get("tpot"), **options)
