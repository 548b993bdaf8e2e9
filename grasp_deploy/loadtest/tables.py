"""The A/B figures as rows: pooled per level, the spread of the per-repeat ratios (ABAB pairs),
and the same rows as CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

# (field, label, better) for the summary table; ratios are pruned / dense.
HEADLINE = (("output_throughput", "output tok/s", "higher"),
            ("median_tpot_ms", "p50 TPOT ms", "lower"),
            ("median_ttft_ms", "p50 TTFT ms", "lower"),
            ("p99_tpot_ms", "p99 TPOT ms", "lower"))
CSV_FILE = "results.csv"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def level_value(key: str) -> int | float:
    """A level's number from its key: a concurrency (``8``) or, in a sweep, a rate (``0.5``)."""
    value = float(key)
    return int(value) if value.is_integer() else value


def level_name(results: dict[str, Any]) -> str:
    return "request rate (req/s)" if results.get("mode") == "sweep" else "concurrency"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level: both models pooled over the repeats, the pruned/dense ratios, and for
    each ratio its lowest and highest over the repeats (repeat k of dense against repeat k of
    pruned; equal to the pooled ratio when there was one repeat)."""
    rows = []
    for level, per_model in sorted(results["levels"].items(), key=lambda kv: float(kv[0])):
        d, p = per_model.get("dense"), per_model.get("pruned")
        row: dict[str, Any] = {"level": level_value(level)}
        pairs = list(zip((d or {}).get("by_repeat", []), (p or {}).get("by_repeat", []),
                         strict=False))
        for key, _, _ in HEADLINE:
            row[f"dense_{key}"] = d[key] if d else math.nan
            row[f"pruned_{key}"] = p[key] if p else math.nan
            row[f"ratio_{key}"] = ratio(row[f"pruned_{key}"], row[f"dense_{key}"])
            each = [ratio(b[key], a[key]) for a, b in pairs if key in a and key in b]
            each = [r for r in each if not math.isnan(r)] or [row[f"ratio_{key}"]]
            row[f"ratio_{key}_min"], row[f"ratio_{key}_max"] = min(each), max(each)
        row.update(attainable(results, level, row["ratio_output_throughput"]))
        row["repeats"] = len(pairs) or 1
        row["failed"] = (d or {}).get("failed", 0) + (p or {}).get("failed", 0)
        rows.append(row)
    return rows


def attainable(results: dict[str, Any], level: str, measured: float) -> dict[str, float]:
    """The bounds at one level (NaN where the run has no profile): the whole-model parameter
    count's, the Amdahl bound from the dense step's profile (``loadtest.step_profile``), and the
    fraction of the Amdahl bound the measured output tok/s ratio reached."""
    profile = results.get("profile") or {}
    at = profile.get("levels", {}).get(level, {})
    bound = at.get("amdahl_bound", math.nan)
    return {"param_bound": profile.get("param_bound", math.nan), "amdahl_bound": bound,
            "fraction_of_amdahl_bound": ratio(measured, bound),
            "dense_decoder_share": at.get("decoder_share", math.nan)}


def bound_lines(results: dict[str, Any]) -> list[str]:
    """The report's "attainable speed-up" section: per level the Amdahl bound and the fraction
    of it reached, or why it was not measured."""
    profile = results.get("profile") or {"skipped": "the run ended before the profile"}
    if "levels" not in profile:
        why = profile.get("skipped") or f"the profile failed: {profile.get('error')}"
        return ["", f"Attainable speed-up: the Amdahl bound was not measured ({why})."]
    lines = ["", "Attainable speed-up: the dense model's decode step profiled on the same server "
             "settings (median step at full batch, profiler overhead included). Pruning shrinks "
             "the decoder forward (linears, attention, norms) by the kept decoder parameters "
             f"({profile['decoder_ratio']:.3f}); the LM head, sampling, runner and scheduler stay. "
             f"Parameter-count bound x{profile['param_bound']:.3f}.", "",
             "| concurrency | dense step ms | decoder share | Amdahl bound | measured (output "
             "tok/s ratio) | fraction of bound |", "|---:|---:|---:|---:|---:|---:|"]
    for row in summary_rows(results):
        at = profile["levels"].get(str(row["level"]))
        if at:
            lines.append(f"| {row['level']} | {at['step_ms']:.1f} | {at['decoder_share']:.2f} | "
                         f"{at['amdahl_bound']:.3f} | {row['ratio_output_throughput']:.3f} | "
                         f"{row['fraction_of_amdahl_bound']:.2f} |")
    return lines


def spread_text(row: dict[str, Any], key: str) -> str:
    """``1.343`` or, over several repeats, ``1.343 (1.301-1.382)``."""
    text = f"{row[f'ratio_{key}']:.3f}"
    if row["repeats"] > 1:
        text += f" ({row[f'ratio_{key}_min']:.3f}-{row[f'ratio_{key}_max']:.3f})"
    return text


def write_csv(results: dict[str, Any], out: Path) -> Path:
    """results.csv: one line per level with every summary column (spreadsheet-ready)."""
    rows = summary_rows(results)
    path = Path(out) / CSV_FILE
    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
