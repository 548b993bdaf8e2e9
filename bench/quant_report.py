"""The tables and the Pareto plot of ``bench.quant`` (rows as ``bench.quant.summary`` makes them).

A row: ``variant``, ``weight_bytes``, ``kv_bytes_per_token``, ``levels`` (per concurrency level
the pooled summary of every repeat, with ``repeats``: each repeat's own output tok/s), and the
quality entries (``wikitext``, ``code``, ``humaneval``) where measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None or value != value else format(value, fmt)  # None or NaN: blank


def _markdown(head: list[str], body: list[list[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def _speed(level: dict[str, Any]) -> str:
    """Pooled output tok/s, with the lowest and highest repeat's own in brackets."""
    pooled = _cell(level.get("output_throughput"), ".1f")
    spread = level.get("repeats") or []
    if pooled and len(spread) > 1:
        pooled += f" ({min(spread):.0f}-{max(spread):.0f})"
    return pooled


def table(rows: list[dict[str, Any]], levels: list[int], at: int) -> str:
    """One line per variant: sizes, speed per level, latency at level ``at``, quality."""
    head = (["variant", "weights MiB", "KV bytes/token"]
            + [f"tok/s c={c}" for c in levels]
            + [f"p50 TPOT ms c={at}", f"p50 TTFT ms c={at}", "WikiText ppl", "code ppl",
               "HumanEval pass@1"])
    body = []
    for r in rows:
        lv = r.get("levels", {})
        body.append([r["variant"], _cell(r["weight_bytes"] / 2**20, ".1f"),
                 _cell(r.get("kv_bytes_per_token"), ".0f"),
                 *[_speed(lv.get(str(c), {})) for c in levels],
                 _cell(lv.get(str(at), {}).get("median_tpot_ms"), ".1f"),
                 _cell(lv.get(str(at), {}).get("median_ttft_ms"), ".1f"),
                 _cell(r.get("wikitext", {}).get("perplexity"), ".2f"),
                 _cell(r.get("code", {}).get("perplexity"), ".3f"),
                 _cell(r.get("humaneval", {}).get("pass_at_1"), ".3f")])
    return _markdown(head, body)


def ratios(rows: list[dict[str, Any]], levels: list[int], base: str) -> str:
    """Output tok/s of each variant over ``base``'s, per level (pooled over the repeats)."""
    by_name = {r["variant"]: r.get("levels", {}) for r in rows}
    if base not in by_name:
        return ""
    head = ["variant", *[f"x {base} c={c}" for c in levels]]
    speed = {name: {c: lv.get(str(c), {}).get("output_throughput") for c in levels}
             for name, lv in by_name.items()}
    return _markdown(head, [[name, *[_cell(mine[c] / speed[base][c] if mine[c] and speed[base][c]
                                            else None, ".3f") for c in levels]]
                            for name, mine in speed.items()])


def pareto(points: list[tuple[float, float]], high: bool) -> list[tuple[float, float]]:
    """The (x, perplexity) points no other point beats: lower perplexity at no worse x (higher
    x better when ``high``), in x order."""
    sign = 1 if high else -1
    return sorted(p for p in points if not any(
        q != p and q[1] <= p[1] and sign * q[0] >= sign * p[0] for q in points))


def plot(rows: list[dict[str, Any]], path: Path, at: int, title: str) -> None:
    """WikiText perplexity against output tok/s at level ``at`` and against weight bytes, the
    Pareto front of each joined by a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, high, label in ((axes[0], True, f"output tok/s at concurrency {at}"),
                            (axes[1], False, "weight MiB (as served)")):
        pts = []
        for r in rows:
            ppl = r.get("wikitext", {}).get("perplexity")
            x = (r.get("levels", {}).get(str(at), {}).get("output_throughput") if high
                 else r["weight_bytes"] / 2**20)
            if ppl is not None and x is not None:
                pts.append((x, ppl))
                ax.scatter(x, ppl)
                ax.annotate(r["variant"], (x, ppl), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        front = pareto(pts, high)
        ax.plot([x for x, _ in front], [y for _, y in front], "--", color="grey",
                label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("WikiText-2 perplexity as served")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
