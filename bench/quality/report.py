"""The quality report: quality.json, quality.md and quality.png from the finished cells."""

from __future__ import annotations

import json
from pathlib import Path

from bench import harness
from bench.quality.columns import (
    ABLATION,
    CALIB,
    CELLS,
    METHODS,
    OURS,
    RATIOS,
    ZERO_SHOT,
    cell_name,
)


def report(opts) -> None:
    cells = {p.stem: json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))}
    found = {p.stem: json.loads(p.read_text()) for p in (CELLS / "ablation").glob("*.json")}
    known = [cell_name(name, 0.5) for name in ABLATION]
    order = [*known, *sorted(set(found) - set(known))]
    ablation = {name: found[name] for name in order if name in found}
    dense = cells.get("dense")
    columns = [c for c in METHODS if any(cell_name(c, r) in cells for r in RATIOS)]
    table = {c: {f"{r:g}": cells.get(cell_name(c, r)) for r in RATIOS} for c in columns}
    out = {"model": opts.model, "calibration": {**CALIB, "text": "wiki.valid.tokens"},
           "evaluation": "wiki.test.raw, all windows of 2048 tokens, float32",
           "dense": dense, "cells": table, "ablation": ablation,
           "commands": {"table": "python -m bench.quality",
                        "ablation": "python -m bench.quality --ablation"}}
    harness.write(opts.out, "quality", out, markdown({**harness.stamp(), **out}, columns),
                  opts.note)
    plot(out, columns, opts.out / "quality.png")
    print(f"report: {opts.out / 'quality.md'}", flush=True)


def _at(out: dict, column: str, ratio: float) -> dict | None:
    """The finished cell of ``column`` at ``ratio`` in the report, or None."""
    return out["cells"].get(column, {}).get(f"{ratio:g}")


def _ppl(cell: dict | None) -> str:
    return "-" if not cell else f"{cell['perplexity']:.2f}"


def markdown(out: dict, columns: list[str]) -> str:
    lines = [*_head(out), *_main_table(out, columns), *standings(out, columns),
             "", f"Zero-shot: {ZERO_SHOT}", *_cells(out, columns), *_ablation(out)]
    lines += ["", "Reproduce: `.venv/bin/python -m bench.quality` (cells are cached in "
              "`bench/results/quality-cells/`, each with the machine it ran on; re-running skips "
              "finished ones) and `.venv/bin/python -m bench.quality --ablation`."]
    return "\n".join(lines)


def _head(out: dict) -> list[str]:
    return [
        f"# Quality: perplexity vs prune ratio, {out['model']}",
        "",
        "WikiText-2 test (`wiki.test.raw`, the protocol in ../shared/data/wikitext-2/README.md): "
        "every window of 2048 tokens, float32, on the exported checkpoints (ablation rows: "
        "the plans applied as masks, equal within fp32 rounding). Calibration: "
        f"{CALIB['num_samples']} x {CALIB['seq_len']} tokens of `wiki.valid.tokens` (seed 0) for "
        "every calibrated method; `grasp-best-self` samples its own calibration text from the "
        "dense model (data-free). GRASPrune here: 1 epoch over the blocks (128 steps) and stage B "
        "on 32 held-out blocks (the CPU recipe; the paper's is 4 epochs of 512 x 512). "
        "`+rec`: with `--reconstruct` (o_proj/down_proj refitted layer by layer on every "
        "calibration block); `structprune` always ends so. `grasp-best+reselect`: with "
        "`--reconstruct --reselect` (GRASPrune's per-layer widths and KV heads, the units "
        "within each layer chosen by StructPrune's ADMM pass, then the refit with a bias; it "
        "leaves position 0 of every block, an attention sink, out of its least squares; "
        "`structprune`'s column was measured with `--sink-skip 0`). `grasp-best-kv0.5`: with "
        "`--kv-ratio 0.5` (KV cache at most half the dense model's) besides the parameter "
        "budget. Every column at `--align 1` (any width: what `--align auto` gave on a CPU "
        "until it became 64, issue 36).",
        ""]


def _main_table(out: dict, columns: list[str]) -> list[str]:
    dense = out["dense"]
    lines = [f"Dense: perplexity {_ppl(dense)}"
             + (f" ({dense['eval']['windows']} windows)." if dense else "."), "",
             "| method | " + " | ".join(f"r={r:g}" for r in RATIOS) + " |",
             "|---|" + "---:|" * len(RATIOS)]
    for c in columns:
        lines.append(f"| {c} | " + " | ".join(_ppl(_at(out, c, r)) for r in RATIOS) + " |")
    done = {c: sum(1 for r in RATIOS if _at(out, c, r)) for c in METHODS}
    total = sum(done.values())
    if total == len(METHODS) * len(RATIOS):
        return [*lines, "", "All cells measured.", ""]
    partial = [f"`{c}` {n} of {len(RATIOS)}" for c, n in done.items() if n < len(RATIOS)]
    return [*lines, "", f"Cells measured: {total} of {len(METHODS) * len(RATIOS)} "
            f"(not complete: {', '.join(partial)}).", ""]


def _cells(out: dict, columns: list[str]) -> list[str]:
    dense = out["dense"]
    lines = ["", "Per cell: parameters (whole model), KV-cache bytes per token (bf16), prune time "
             "(wall-clock seconds of `grasp-deploy prune` on this 2-core CPU; a few ran while "
             "other work shared the CPU, so read them as indicative).", "",
             "| method | ratio | perplexity | params | removed (model) | KV B/token | prune s | "
             "windows |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    if dense:
        # the dense sizes are recorded by every pruned cell of the same model
        ref = next((cell for c in columns for cell in out["cells"][c].values() if cell), None)
        params = f"{ref['params_dense']:,}" if ref else "-"
        kv = f"{ref['kv_bytes_per_token_bf16_dense']:,}" if ref else "-"
        lines.append(f"| dense | 0 | {_ppl(dense)} | {params} | 0% | {kv} | 0 | "
                     f"{dense['eval']['windows']} |")
    for c in columns:
        for r in RATIOS:
            cell = _at(out, c, r)
            if cell:
                lines.append(f"| {c} | {r:g} | {_ppl(cell)} | {cell['params']:,} | "
                             f"{cell['removed_model']:.1%} | {cell['kv_bytes_per_token_bf16']:,} | "
                             f"{_seconds(cell['prune_seconds'])} | {cell['eval']['windows']} |")
    notes = [f"- `{c}` at {r:g}: {_at(out, c, r)['note']}" for c in columns for r in RATIOS
             if _at(out, c, r) and _at(out, c, r).get("note")]
    return [*lines, "", "Notes on single cells:", "", *notes] if notes else lines


def _ablation(out: dict) -> list[str]:
    if not out["ablation"]:
        return []
    lines = ["", "## GRASPrune variants (ratio 0.5, first "
             f"{next(iter(out['ablation'].values()))['eval']['windows']} test windows)", "",
             "Each variant changes one switch of the paper's method; `best` is the "
             "`--recipe best` combination.", "",
             "| variant | perplexity | prune s |", "|---|---:|---:|"]
    for cell in out["ablation"].values():
        lines.append(f"| {cell['method']} | {_ppl(cell)} | {_seconds(cell['prune_seconds'])} |")
    return lines


def _seconds(s: float) -> str:
    """Whole seconds, but keep a decimal for sub-10-second runs (magnitude takes half a second)."""
    return f"{s:.1f}" if s < 10 else f"{s:,.0f}"


def standings(out: dict, columns: list[str]) -> list[str]:
    """Per ratio: GRASPrune's best column (of ``OURS``) against the lowest other method. The
    data-free (-self) and KV-constrained (-kv) columns answer other questions and sit out."""
    lines = []
    same_terms = [c for c in columns if not c.endswith("-self") and "-kv" not in c]
    for r in RATIOS:
        present = {c: _at(out, c, r)["perplexity"] for c in same_terms if _at(out, c, r)}
        ours = {c: v for c, v in present.items() if c in OURS}
        others = {c: v for c, v in present.items() if c not in OURS}
        if not ours or not others:
            continue
        best, rival = min(ours, key=ours.get), min(others, key=others.get)
        a, b = ours[best], others[rival]
        verdict = (f"`{best}` lowest, {a:.2f}; next other method `{rival}` {b:.2f} (x{b / a:.2f})"
                   if a <= b else f"`{rival}` lowest, {b:.2f}; GRASPrune's best `{best}` {a:.2f} "
                   f"is x{a / b:.2f} above it")
        lines.append(f"- r={r:g}: {verdict}, of {len(present)} columns measured.")
    return lines


def plot(out: dict, columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    colours = plt.get_cmap("tab20").colors  # one per column: the default cycle has only ten
    # The y axis stops at 100 x dense so that the columns that matter are not squashed flat.
    top = 100 * out["dense"]["perplexity"] if out["dense"] else None
    for k, c in enumerate(columns):
        done = [(r, _at(out, c, r)) for r in RATIOS if _at(out, c, r)]
        xs, ys = [r for r, _ in done], [cell["perplexity"] for _, cell in done]
        ours = c.startswith("grasp")  # GRASPrune's columns solid, the others dashed
        label = c if top is None or min(ys) <= top else f"{c} (all above {top:,.0f})"
        ax.plot(xs, ys, marker="o" if ours else "s", linestyle="-" if ours else "--",
                linewidth=2 if ours else 1.2, color=colours[k % len(colours)], label=label)
    if out["dense"]:
        ax.axhline(out["dense"]["perplexity"], color="k", linestyle="--", label="dense")
    ax.set_yscale("log")
    if top is not None:
        ax.set_ylim(top=top)
    ax.set_xticks(RATIOS)  # the whole grid, so a partly filled table reads against it
    ax.set_xlim(min(RATIOS) - 0.03, max(RATIOS) + 0.03)
    ax.set_xlabel("prune ratio (fraction of prunable parameters removed)")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title(f"{out['model']}: quality vs budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )  # beside, not over, the data
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
