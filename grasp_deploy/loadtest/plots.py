"""The A/B and soak reports' plots (PNG, matplotlib without a display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .tables import level_name


def plots(results: dict[str, Any], out: Path, rows: list[dict[str, Any]]) -> list[str]:
    """throughput.png, latency.png, kv_capacity.png, scheduler.png and pareto.png from the
    report's summary ``rows`` (one per level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    x = [r["level"] for r in rows]
    name = level_name(results)
    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for who in ("dense", "pruned"):
        ax.plot(x, [r[f"{who}_output_throughput"] for r in rows], marker="o", label=who)
    ax.set(xscale="log", xlabel=name, ylabel="output tokens/s", title="Output throughput")
    ax.set_xticks(x, [str(v) for v in x])
    ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out / "throughput.png", dpi=120), plt.close(fig)
    made.append("throughput.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    levels = results["levels"]
    for ax, metric, title in ((axes[0], "tpot", "TPOT"), (axes[1], "ttft", "TTFT")):
        for who, color in (("dense", "C0"), ("pruned", "C1")):
            for q, style in (("median", "-"), ("p99", "--")):
                ys = [
                    levels[str(item)].get(who, {}).get(f"{q}_{metric}_ms", math.nan) for item in x
                ]
                ax.plot(
                    x,
                    ys,
                    style,
                    color=color,
                    marker="o",
                    label=f"{who} {q.replace('median', 'p50')}",
                )
        ax.set(
            xscale="log",
            xlabel=name,
            ylabel="ms",
            title=f"{title} (p50 solid, p99 dashed)",
        )
        ax.set_xticks(x, [str(v) for v in x])
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out / "latency.png", dpi=120), plt.close(fig)
    made.append("latency.png")
    kv = [results["models"][w].get("kv", {}).get("kv_cache_tokens", 0) for w in ("dense", "pruned")]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(["dense", "pruned"], kv, color=["C0", "C1"])
    ax.set(ylabel="tokens", title=f"KV cache capacity ({results['config']['kv_cache_gb']} GiB)")
    for i, v in enumerate(kv):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
    fig.tight_layout(), fig.savefig(out / "kv_capacity.png", dpi=120), plt.close(fig)
    made.append("kv_capacity.png")
    if scheduler_plot(results, out, x, name):
        made.append("scheduler.png")
    made.append(pareto_plot(rows, out))
    return made


def pareto_plot(rows: list[dict[str, Any]], out: Path) -> str:
    """Tokens/s each user sees (1000 / p50 TPOT) against the server's total output tokens/s,
    one point per load level: up and to the right is better; a model whose curve lies above
    the other's gives every user more speed at the same total throughput."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for who, color in (("dense", "C0"), ("pruned", "C1")):
        total = [r[f"{who}_output_throughput"] for r in rows]
        per_user = [1000 / r[f"{who}_median_tpot_ms"] if r[f"{who}_median_tpot_ms"] else math.nan
                    for r in rows]
        ax.plot(total, per_user, marker="o", color=color, label=who)
        for r, tx, ty in zip(rows, total, per_user, strict=True):
            ax.annotate(str(r["level"]), (tx, ty), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=color)
    ax.set(xlabel="total output tokens/s", ylabel="tokens/s per user (1000 / p50 TPOT)",
           title="Per-user vs total throughput (labels: load level)")
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout(), fig.savefig(out / "pareto.png", dpi=120), plt.close(fig)
    return "pareto.png"


def scheduler_plot(results: dict[str, Any], out: Path, levels: list[int | float],
                   name: str = "concurrency") -> bool:
    """Requests running (solid) and waiting (dashed) over time, dense vs pruned, one panel per
    concurrency level (first repeat): where the KV cache, not compute, limits a server."""
    import matplotlib.pyplot as plt

    series = {
        (label, level): (
            (results["models"][label].get("metrics", {}).get(str(level)) or [{}])[0].get("series")
        )
        for label in ("dense", "pruned")
        for level in levels
    }
    if not any(series.values()):
        return False
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.6), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for label, color in (("dense", "C0"), ("pruned", "C1")):
            points = series[(label, level)] or []
            t = [p[0] for p in points]
            ax.plot(t, [p[1] for p in points], "-", color=color, label=f"{label} running")
            ax.plot(t, [p[2] for p in points], "--", color=color, label=f"{label} waiting")
        ax.set(xlabel="seconds", ylabel="requests", title=f"{name} {level}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "scheduler.png", dpi=120), plt.close(fig)
    return True


def soak_plot(results: dict[str, Any], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x / 60 for x, _ in results["rss_samples"]]
    mib = [b / 2**20 for _, b in results["rss_samples"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, mib, color="C1")
    if results.get("config", {}).get("soak_warmup"):
        ax.axvline(results["measured_from_s"] / 60, color="gray", linestyle="--")
        ax.text(results["measured_from_s"] / 60, 0.05 * max(mib), " measured from here",
                color="gray")
    ax.set(xlabel="minutes", ylabel="RSS (MiB)", ylim=(0, max(mib) * 1.1),
           title=f"Server memory under load ({results['users']} users)")
    ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(out / "memory.png", dpi=120), plt.close(fig)
    return "memory.png"
