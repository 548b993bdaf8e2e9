"""serve, bench, prune-and-serve."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from ..core.errors import GraspError
from ..server.launcher import ServerConfig
from ..sources.known import DEFAULT_MODEL
from . import show
from .group import main, quiet_transformers
from .options import (
    BENCH_OPTIONS,
    PARALLEL_OPTIONS,
    bench_config,
    bench_options,
    no_verify_option,
    prune_config,
    prune_options,
    stack,
)
from .parts import PartsCommand


def _say(message: str) -> None:
    click.echo(message, err=True)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--api-key",
    default=None,
    envvar="GRASP_API_KEY",
    help=(
        "Require this bearer token from clients (better: set GRASP_API_KEY, which no "
        "other local user can read in ps). Never printed in full."
    ),
)
@click.option("--max-model-len", default=None, type=int, help="Context length to serve.")
@click.option(
    "--kv-cache-gb",
    default=None,
    type=float,
    help=(
        "KV-cache memory in GiB (CPU RAM or GPU memory; vLLM's "
        "--kv-cache-memory-bytes). Same value for dense and pruned = fair A/B."
    ),
)
@click.option("--dtype", default="auto", show_default=True, help="vLLM --dtype.")
@click.option("--served-model-name", default=None, help="[default: the directory name]")
@click.option(
    "--enforce-eager", is_flag=True, help="Skip torch.compile / CUDA graphs (faster start)."
)
@click.option("--startup-timeout", default=900.0, show_default=True, type=float, help="Seconds.")
@stack(*PARALLEL_OPTIONS)
@no_verify_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(model, host, port, api_key, max_model_len, kv_cache_gb, dtype, served_model_name,
          enforce_eager, startup_timeout, tensor_parallel, pipeline_parallel, no_verify,
          vllm_args):
    """Serve a pruned checkpoint or a dense model with vLLM's OpenAI-compatible server.

    Other vLLM flags go after '--', e.g.  grasp-deploy serve CKPT -- --max-num-seqs 32.
    Ctrl-C or SIGTERM stops the server and its engine process.
    """
    from ..jobs.serve import kv_summary, resolve, run_serve

    config = resolve(ServerConfig(
        model=model or DEFAULT_MODEL, served_name=served_model_name, host=host, port=port,
        api_key=api_key, max_model_len=max_model_len, kv_cache_gb=kv_cache_gb, dtype=dtype,
        enforce_eager=enforce_eager, startup_timeout=startup_timeout,
        tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
        extra_args=tuple(vllm_args)), verify=not no_verify)
    sys.exit(run_serve(config, lambda server: show.banner(server, kv_summary(server)), say=_say))


@main.command()
@click.option("--pruned", required=True, help="Pruned checkpoint directory.")
@click.option("--dense", default=DEFAULT_MODEL, show_default=True, help="The dense model.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="RESULTS_DIR: results.json/.md, requests.jsonl, PNG plots.")
@bench_options
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Soak instead of A/B: the pruned model alone at the highest --concurrency for "
                   "this long; failed requests and the server's memory over time (soak.md, "
                   "memory.png).")
@click.option("--soak-warmup", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Soak: run the same load this long first and judge memory only after it. "
                   "On CPU, vLLM's GEMMs cache one kernel per batch size and layer (32 each), so "
                   "RSS climbs for the first minutes of varied load; 300 s covers it here.")
@no_verify_option
@click.option("--force", is_flag=True, help="Replace an existing RESULTS_DIR (one bench wrote).")
def bench(pruned, dense, out, duration, soak_warmup, force, no_verify, **options):
    """A/B load test: the pruned checkpoint vs the dense model through vLLM.

    Both servers get identical flags and KV memory; each level runs a fixed number of
    streamed requests timed from the SSE stream (TTFT, TPOT, ITL, E2E); /metrics is scraped
    for KV usage and preemptions. Everything stays on 127.0.0.1.
    """
    from ..jobs.bench import run_bench

    config = replace(bench_config(pruned, dense, out, **options), duration=duration,
                     soak_warmup=soak_warmup)
    results = run_bench(config, force=force, say=_say, verify=not no_verify)
    show.soak_report(results, out) if duration is not None else show.bench_report(results, out)
    sys.exit(0 if results["status"] == "complete" else 1)


@main.command(name="prune-and-serve", cls=PartsCommand)
@click.argument("model", required=False)
@prune_options
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for plan/, ckpt/ and bench/  [default: runs/<model>-<method>-r<R>-<key>]",
)
@click.option(
    "--bench",
    "do_bench",
    is_flag=True,
    help="Run the A/B load test against the dense model before serving.",
)
@bench_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--api-key",
    default=None,
    envvar="GRASP_API_KEY",
    help="Require this bearer token from clients (or set GRASP_API_KEY).",
)
@click.option("--startup-timeout", default=900.0, show_default=True, type=float)
@click.option(
    "--once",
    is_flag=True,
    help="Start the server, print the endpoint and one sample completion, then stop.",
)
@click.option("--heal-minutes", type=float, default=None,
              help="Heal the checkpoint by distillation from the dense model for this long "
                   "(grasp-deploy heal, its defaults) before serving it.")
@click.option("--heal-steps", type=int, default=None,
              help="Heal for this many steps (with --heal-minutes: whichever comes first).")
@click.option("--heal-data", default=None,
              help="Text to heal on; self: text the dense model samples itself (data-free, "
                   "as heal --data self)  [default: the --calib text]")
@click.option("--quantize", default=None, metavar="SCHEME",
              help="Serve the checkpoint (healed, if asked) quantized: int8 or w4a16 "
                   "(see grasp-deploy export --help); w4a16 rounds by GPTQ on the --calib "
                   "text (at most 128 blocks of 256 tokens), to nearest with --calib self.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prune_and_serve(model, work, do_bench, host, port, api_key, startup_timeout, once,
                    heal_minutes, heal_steps, heal_data, quantize, quiet, **options):
    """Prune MODEL, export it, optionally heal and quantize it, optionally A/B it against the
    dense model, and serve it.

    Outputs are reused when the model and prune settings are unchanged, so re-running the
    same command goes straight to serving.
    """
    from ..jobs.pipeline import PipelineConfig, PipelineHooks, run_prune_and_serve
    from ..jobs.serve import kv_summary

    bench_opts = {key: options.pop(key) for key in BENCH_OPTIONS}
    bench = bench_config("", model or DEFAULT_MODEL, Path(""), **bench_opts)
    prune_opts = _plan_for_ranks(options, bench.tensor_parallel)
    config = PipelineConfig(
        prune=prune_config(model, Path("unused"), True, quiet, **prune_opts),
        server=ServerConfig(model="", host=host, port=port, api_key=api_key,
                            max_model_len=bench.max_model_len, kv_cache_gb=bench.kv_cache_gb,
                            dtype=bench.dtype, enforce_eager=bench.enforce_eager,
                            tensor_parallel=bench.tensor_parallel,
                            pipeline_parallel=bench.pipeline_parallel,
                            startup_timeout=startup_timeout),
        work=work, bench=bench if do_bench else None, once=once, heal_minutes=heal_minutes,
        heal_steps=heal_steps, heal_data=heal_data, quantize=quantize)
    if quiet:
        quiet_transformers()
    hooks = PipelineHooks(
        say=_say, on_prune=show.prune_summary,
        on_checkpoint=lambda ckpt: click.echo(f"checkpoint: {ckpt}"),
        on_bench=lambda results, out: show.bench_report(results, out),
        on_ready=lambda server: show.banner(server, kv_summary(server), once=once),
        on_sample=lambda prompt, text: click.echo(f"  sample: {prompt!r} -> {text!r}"))
    sys.exit(run_prune_and_serve(config, hooks))


def _plan_for_ranks(prune_opts: dict, tensor_parallel: int) -> dict:
    """prune-and-serve at --tensor-parallel-size N prunes a plan the N ranks can split
    (--tp N) unless --tp says otherwise; a --tp the ranks cannot use is refused up front."""
    if tensor_parallel == 1 or prune_opts["tp"] % tensor_parallel == 0:
        return prune_opts
    if prune_opts["tp"] != 1:
        raise GraspError(f"--tp {prune_opts['tp']} makes a plan that --tensor-parallel-size "
                         f"{tensor_parallel} cannot split; give --tp {tensor_parallel}")
    _say(f"note: pruning with --tp {tensor_parallel} so that every layer splits over the "
         f"{tensor_parallel} tensor-parallel ranks")
    return {**prune_opts, "tp": tensor_parallel}
