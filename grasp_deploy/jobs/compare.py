"""The side-by-side summary: dense vs pruned on one page.

Parameters, KV capacity, output tokens/s and median TPOT from an A/B bench (when its results
directory is given), perplexity on the same windows of a text (when one is given), and the
same prompts completed greedily by each model. Every figure comes from a measurement made
here or read from the bench's results.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import format as fmt
from ..core.checks import check_number
from ..core.errors import GraspError
from ..loadtest.report import RESULTS_FILE, configuration, summary_rows
from ..sources import models
from . import loading
from .evaluate import EvalConfig, run_eval
from .humaneval import HumanEvalConfig, run_humaneval

DEFAULT_PROMPTS = ("The capital of France is", "The three primary colors are")


@dataclass(frozen=True)
class CompareConfig:
    pruned: str  # an exported checkpoint directory
    dense: str | None = None  # default: the checkpoint's source model (its manifest)
    bench: Path | None = None  # a RESULTS_DIR written by grasp-deploy bench
    data: str | None = None  # text for perplexity; None: no perplexity row
    seq_len: int = 2048
    max_windows: int | None = 4
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 20
    humaneval: bool = False  # pass@1 of each model served by vLLM (jobs.humaneval)
    humaneval_limit: int | None = None  # the first N problems; None: all 164
    verify: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise GraspError(f"--max-new-tokens {self.max_new_tokens} must be at least 1")
        if self.humaneval_limit is not None:
            if not self.humaneval:
                raise GraspError("--humaneval-limit is for --humaneval: add --humaneval or "
                                 "drop the limit")
            check_number("--humaneval-limit", self.humaneval_limit, low=1, integer=True)
        if self.bench is not None and not (Path(self.bench) / RESULTS_FILE).is_file():
            raise GraspError(f"--bench {self.bench} has no results.json: pass the RESULTS_DIR "
                             "that grasp-deploy bench (or prune-and-serve --bench) wrote")


def run_compare(config: CompareConfig, progress: bool = False) -> dict[str, Any]:
    manifest_path = Path(config.pruned) / fmt.MANIFEST
    if not manifest_path.is_file():
        raise GraspError(f"{config.pruned} is not a grasp-deploy checkpoint (no "
                         f"{fmt.MANIFEST}); pass the CKPT_DIR that export wrote")
    manifest = json.loads(manifest_path.read_text())
    dense = config.dense or manifest["source"]["model"]
    rows: list[dict[str, Any]] = []

    def row(label: str, d: float, p: float, fmt: str, better: str) -> None:
        rows.append({"what": label, "dense": d, "pruned": p, "format": fmt, "better": better,
                     "ratio": p / d if d and not math.isnan(d) and not math.isnan(p) else math.nan})

    params = manifest["parameters"]
    row("parameters (M)", params["dense"] / 1e6, params["pruned"] / 1e6, "{:.1f}", "lower")
    kv = manifest["kv_cache_bytes_per_token"]
    row("KV cache bytes / token", kv["dense"], kv["pruned"], "{:,.0f}", "lower")
    bench_label = None
    if config.bench is not None:
        results = json.loads((Path(config.bench) / RESULTS_FILE).read_text())
        bench_label = configuration(results)
        kv_d = results["models"]["dense"].get("kv", {}).get("kv_cache_tokens", math.nan)
        kv_p = results["models"]["pruned"].get("kv", {}).get("kv_cache_tokens", math.nan)
        row(f"KV capacity (tokens, {results['config']['kv_cache_gb']} GiB)", kv_d, kv_p,
            "{:,.0f}", "higher")
        for r in summary_rows(results):
            row(f"output tok/s, concurrency {r['level']}", r["dense_output_throughput"],
                r["pruned_output_throughput"], "{:.1f}", "higher")
        for r in summary_rows(results):
            row(f"p50 TPOT ms, concurrency {r['level']}", r["dense_median_tpot_ms"],
                r["pruned_median_tpot_ms"], "{:.1f}", "lower")
    ppl_label = None
    if config.data is not None:
        evals = [run_eval(EvalConfig(model=m, data=config.data, seq_len=config.seq_len,
                                     max_windows=config.max_windows, progress=progress,
                                     verify=config.verify))
                 for m in (dense, config.pruned)]
        ppl_label = f"perplexity ({evals[0].windows} x {evals[0].seq_len} tokens, {config.data})"
        row("perplexity", evals[0].perplexity, evals[1].perplexity, "{:.2f}", "lower")
    humaneval_label = None
    if config.humaneval:
        scores = [run_humaneval(HumanEvalConfig(model=m, limit=config.humaneval_limit,
                                                verify=config.verify), say=lambda _m: None)
                  for m in (dense, config.pruned)]
        humaneval_label = (f"HumanEval pass@1 through vLLM: {scores[0].total} problems, greedy, "
                           f"up to {scores[0].max_tokens} tokens")
        row("HumanEval pass@1", scores[0].pass_at_1, scores[1].pass_at_1, "{:.3f}", "higher")
    samples = greedy_samples(dense, config.pruned, config.prompts, config.max_new_tokens,
                             config.verify)
    return {"dense": dense, "pruned": config.pruned, "rows": rows, "samples": samples,
            "bench_configuration": bench_label, "perplexity_data": ppl_label,
            "humaneval": humaneval_label}


@torch.inference_mode()
def greedy_samples(dense: str, pruned: str, prompts: tuple[str, ...], max_new_tokens: int,
                   verify: bool) -> list[dict[str, str]]:
    """Each prompt completed greedily (float32, transformers) by both models."""
    out = [{"prompt": p} for p in prompts]
    for label, spec in (("dense", dense), ("pruned", pruned)):
        source = models.resolve_source(spec)
        loading.load_config(source)
        tokenizer = models.load_tokenizer(source)
        model = loading.load_model(source, dtype=torch.float32, verify=verify)
        for item in out:
            ids = tokenizer(item["prompt"], return_tensors="pt")
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            item[label] = tokenizer.decode(
                gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
            )
        del model
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The ten-second read: one table, then the completions."""
    width = max(len(r["what"]) for r in result["rows"])
    lines = [f"{'':{width}}  {'dense':>12}  {'pruned':>12}  {'pruned/dense':>12}"]
    for r in result["rows"]:
        ratio = "" if math.isnan(r["ratio"]) else f"x{r['ratio']:.3f}"
        if ratio:
            good = (r["ratio"] > 1) == (r["better"] == "higher") and r["ratio"] != 1
            ratio += "  (better)" if good else "  (worse)" if r["ratio"] != 1 else ""
        lines.append(f"{r['what']:{width}}  {r['format'].format(r['dense']):>12}  "
                     f"{r['format'].format(r['pruned']):>12}  {ratio:>12}")
    if result["bench_configuration"]:
        lines.append(f"speed measured with {result['bench_configuration']}")
    for label in ("perplexity_data", "humaneval"):
        if result.get(label):
            lines.append(result[label])
    for s in result["samples"]:
        lines += [
            f"{s['prompt']!r} (greedy)",
            f"  dense : {s['dense']!r}",
            f"  pruned: {s['pruned']!r}",
        ]
    return lines
