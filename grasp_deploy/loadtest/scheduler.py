"""What vLLM's scheduler did during an A/B run, from the /metrics samples: requests running and
waiting, preemptions, KV usage, prefix-cache hits and goodput, per level and model."""

from __future__ import annotations

import math
from typing import Any

from .tables import level_name, level_value


def scheduler(results: dict[str, Any], label: str, level: int) -> dict[str, float]:
    """What vLLM's scheduler did at one level, over every repeat: requests running and waiting
    (mean and peak of the /metrics samples), preemptions (summed), KV usage peak, the share of
    prompt tokens found in the prefix cache, and goodput."""
    runs = results["models"][label].get("metrics", {}).get(str(level), [])
    if not runs:
        return {}

    def mean(key):
        if all(r.get("series") for r in runs):  # over the busy samples only (see _busy)
            column = {"running_mean": 1, "waiting_mean": 2}[key]
            values = [point[column] for r in runs for point in _busy(r["series"])]
        else:
            values = [r[key] for r in runs if not math.isnan(r.get(key, math.nan))]
        return sum(values) / len(values) if values else math.nan

    def peak(key):
        return max((r.get(key, math.nan) for r in runs), default=math.nan)

    out = {"running_mean": mean("running_mean"), "running_peak": peak("running_peak"),
           "waiting_mean": mean("waiting_mean"), "waiting_peak": peak("waiting_peak"),
           "preemptions": sum(r.get("preemptions", 0.0) for r in runs),
           "kv_usage_peak": peak("kv_cache_usage_peak")}
    queries = sum(r.get("prefix_cache_queries", 0.0) for r in runs)  # tokens looked up
    out["prefix_hits"] = sum(r.get("prefix_cache_hits", 0.0) for r in runs) / queries \
        if queries else math.nan
    out["request_goodput"] = results["levels"].get(str(level), {}).get(label, {}).get(
        "request_goodput", math.nan)
    return out


def _busy(series: list[list[float]]) -> list[list[float]]:
    """The samples from the first to the last with a request running or waiting: the load
    generator's start-up and the drained tail are not the server's steady state."""
    busy = [k for k, point in enumerate(series) if point[1] > 0 or point[2] > 0]
    return series[busy[0]:busy[-1] + 1] if busy else []


def _percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{100 * share:.0f}%"


def scheduler_markdown(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    slo = " and ".join(f"{k} <= {v:g} ms" for k, v in (("TTFT", cfg.get("slo_ttft_ms")),
                                                        ("TPOT", cfg.get("slo_tpot_ms"))) if v)
    lines = [
        "",
        "Scheduler (from /metrics, sampled every 0.5 s; means over the samples from the "
        "first to the last busy one, peaks over the level"
        + (f"; goodput = requests/s meeting {slo}" if slo else "")
        + "):",
        "",
        f"| {level_name(results)} | model | running mean | peak | waiting mean | peak "
        "| preemptions | KV usage peak | prefix cache hits |"
        + (" goodput req/s |" if slo else ""),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if slo else ""),
    ]
    for level in sorted((level_value(k) for k in results["levels"]), key=float):
        for label in ("dense", "pruned"):
            s = scheduler(results, label, level)
            if not s:
                continue
            lines.append(
                f"| {level} | {label} | {s['running_mean']:.1f} | {s['running_peak']:.0f} | "
                f"{s['waiting_mean']:.1f} | {s['waiting_peak']:.0f} | {s['preemptions']:.0f} | "
                f"{100 * s['kv_usage_peak']:.0f}% | {_percent(s['prefix_hits'])} |"
                + (f" {s['request_goodput']:.3f} |" if slo else "")
            )
    return lines if len(lines) > 5 else []
