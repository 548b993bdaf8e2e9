"""eval: perplexity, or zero-shot accuracy with --tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..core.errors import GraspError
from . import show
from .group import main, quiet_transformers
from .options import device_options, no_verify_option


@main.command(name="eval")
@click.argument("model", required=False)
@click.option(
    "--plan",
    type=click.Path(path_type=Path),
    default=None,
    help="PLAN_DIR: evaluate MODEL with the plan applied as masks and scales.",
)
@click.option(
    "--data",
    default="wikitext2",
    show_default=True,
    help="wikitext2[:SPLIT] (test split by default) or file:PATH.",
)
@click.option("--seq-len", default=2048, show_default=True, type=int, help="Tokens per window.")
@click.option(
    "--max-windows", default=None, type=int, help="Score only the first N windows (quick checks)."
)
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option(
    "--tasks",
    default=None,
    metavar="TASK[,TASK...]",
    help=(
        "Zero-shot accuracy on these lm-eval tasks (e.g. hellaswag,arc_easy,piqa) "
        "instead of perplexity (needs pip install 'grasp-deploy[zeroshot]' and the "
        "Hugging Face dataset hub); or humaneval: pass@1 of MODEL served by vLLM, the "
        "generated programs run in a sandbox (needs root for its namespaces)."
    ),
)
@click.option("--max-tokens", default=512, show_default=True, type=int,
              help="With --tasks humaneval: the longest completion.")
@click.option("--served", is_flag=True,
              help="Perplexity as vLLM serves MODEL: starts a server (--dtype is vLLM's) and "
                   "scores each window from the engine's prompt logprobs, tokenized by the "
                   "server, so quantized and pruned checkpoints are scored by the kernels that "
                   "serve them.")
@click.option("--url", default=None,
              help="Score the vLLM server running at this URL (e.g. the endpoint prune-and-serve "
                   "printed) instead of starting one: perplexity as with --served, or --tasks "
                   "humaneval; MODEL, if given, is its served model name  [default: the first "
                   "it lists]")
@click.option("--api-key", default=None, envvar="GRASP_API_KEY",
              help="With --url: the server's bearer token (better: set GRASP_API_KEY).")
@click.option(
    "--limit", default=None, type=int, help="With --tasks: the first N examples per task."
)
@click.option("--num-fewshot", default=0, show_default=True, type=int, help="With --tasks.")
@click.option(
    "--include-path",
    type=click.Path(path_type=Path),
    default=None,
    help="With --tasks: a folder of your own lm-eval task YAML files (local data).",
)
@device_options
@no_verify_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def eval_cmd(model, plan, data, seq_len, max_windows, batch_size, tasks, max_tokens, served,
             url, api_key, limit, num_fewshot, include_path, device, dtype, no_verify, as_json,
             quiet):
    """Perplexity of MODEL (dense, exported checkpoint, or with --plan) on a text.

    Protocol: tokenize the whole text once, cut consecutive non-overlapping windows of
    --seq-len tokens, perplexity = exp(mean over windows of the mean token NLL).
    With --tasks, zero-shot accuracy through lm-evaluation-harness instead.
    """
    from ..jobs.evaluate import EvalConfig, run_eval
    from ..jobs.humaneval import HumanEvalConfig
    from ..jobs.zeroshot import TasksConfig, parse_tasks, run_tasks

    if quiet or as_json:
        quiet_transformers()
    if served and (tasks is not None or url is not None):
        raise GraspError("--served is for perplexity; --tasks scores otherwise and with --url "
                         "the model is served already: drop --served")
    if tasks is not None and tasks.strip().lower() == "humaneval":
        if plan is not None:
            raise GraspError("--tasks humaneval scores a served model: export the plan first "
                             "(grasp-deploy export) and pass the checkpoint")
        _humaneval(HumanEvalConfig(model=model, url=url, api_key=api_key, limit=limit,
                                   max_tokens=max_tokens, verify=not no_verify), as_json)
        return
    if tasks is not None:  # zero-shot accuracy instead of perplexity
        result = run_tasks(TasksConfig(model=model, tasks=parse_tasks(tasks), plan=plan,
                                       limit=limit, num_fewshot=num_fewshot,
                                       include_path=include_path, batch_size=batch_size,
                                       device=device, dtype=dtype, verify=not no_verify))
        click.echo(json.dumps(result.to_json())) if as_json else show.tasks_lines(result)
        return
    if limit is not None or num_fewshot or include_path is not None:
        raise GraspError("--limit, --num-fewshot and --include-path apply to --tasks; for "
                         "perplexity use --max-windows")
    if served or url is not None:
        if plan is not None:
            raise GraspError("--served scores a checkpoint as vLLM serves it: export the plan "
                             "first (grasp-deploy export) and pass the checkpoint")
        from ..jobs.served_eval import ServedEvalConfig, run_served_eval

        say = (lambda _msg: None) if as_json else click.echo
        result = run_served_eval(ServedEvalConfig(
            model=model, url=url, api_key=api_key, data=data, seq_len=seq_len,
            max_windows=max_windows, dtype=dtype, progress=not (quiet or as_json),
            verify=not no_verify), say=say)
    else:
        result = run_eval(EvalConfig(model=model, plan=plan, data=data, seq_len=seq_len,
                                     max_windows=max_windows, batch_size=batch_size,
                                     device=device, dtype=dtype, progress=not (quiet or as_json),
                                     verify=not no_verify))
    click.echo(json.dumps(result.to_json())) if as_json else show.perplexity_line(result)


def _humaneval(config: Any, as_json: bool) -> None:
    """Run the HumanEvalConfig ``config``; one summary line, or the JSON with every problem."""
    from ..jobs.humaneval import run_humaneval

    say = (lambda _msg: None) if as_json else click.echo
    result = run_humaneval(config, say=say)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(f"HumanEval pass@1 {result.pass_at_1:.4f} ({result.passed} of {result.total}, "
               f"greedy, up to {result.max_tokens} tokens); generate {result.generate_seconds:.0f}"
               f"s, execute {result.execute_seconds:.0f}s")


@main.command(name="compare")
@click.argument("checkpoint")
@click.option("--dense", default=None, help="The dense model  [default: the checkpoint's source]")
@click.option("--bench", "bench_dir", type=click.Path(path_type=Path), default=None,
              help="RESULTS_DIR of grasp-deploy bench: adds KV capacity, output tok/s and p50 "
                   "TPOT per concurrency.")
@click.option("--data", default=None,
              help="Text for perplexity (file:PATH or wikitext2[:SPLIT]); none: no perplexity row.")
@click.option("--seq-len", default=2048, show_default=True, type=int, help="Tokens per window.")
@click.option("--max-windows", default=4, show_default=True, type=int,
              help="Perplexity on the first N windows.")
@click.option("--prompt", "prompts", multiple=True,
              help="A prompt both models complete greedily (repeatable)  "
                   "[default: two short factual prompts]")
@click.option("--max-new-tokens", default=20, show_default=True, type=int,
              help="Tokens each model generates per --prompt.")
@click.option("--humaneval", is_flag=True,
              help="Add HumanEval pass@1 of each model served by vLLM (the programs run in the "
                   "sandbox; about 10 minutes per model on 2 CPU cores).")
@click.option("--humaneval-limit", default=None, type=int,
              help="With --humaneval: the first N problems  [default: all 164]")
@no_verify_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare_cmd(checkpoint, dense, bench_dir, data, seq_len, max_windows, prompts, max_new_tokens,
                humaneval, humaneval_limit, no_verify, as_json):
    """Dense vs pruned side by side: parameters, KV cache, speed (from --bench), perplexity
    (with --data) and the same prompts completed greedily by both."""
    from ..jobs.compare import DEFAULT_PROMPTS, CompareConfig, run_compare, summary_lines

    quiet_transformers()
    result = run_compare(CompareConfig(pruned=checkpoint, dense=dense, bench=bench_dir, data=data,
                                       seq_len=seq_len, max_windows=max_windows,
                                       prompts=tuple(prompts) or DEFAULT_PROMPTS,
                                       max_new_tokens=max_new_tokens, humaneval=humaneval,
                                       humaneval_limit=humaneval_limit, verify=not no_verify))
    click.echo(json.dumps(result, default=str) if as_json else "\n".join(summary_lines(result)))
