"""Quality benchmark: every pruning method at several ratios on one model, full WikiText-2 test.

Each (method, ratio) cell runs the real CLI: ``grasp-deploy prune`` on the shared calibration
text, ``grasp-deploy export`` (float32), then ``grasp-deploy eval`` of that exported checkpoint
(what users deploy; smaller, so faster to evaluate than the plan as masks) on the whole
``wiki.test.raw``; the checkpoint is deleted afterwards. A finished cell
is saved as ``bench/results/quality-cells/<cell>.json`` and skipped by later runs, so the table
fills over several runs (in the background: ``nohup ... &``). Every run rewrites
``bench/results/quality.{json,md,png}`` from the cells present.

    .venv/bin/python -m bench.quality                         # all methods, ratios 0.2-0.5
    .venv/bin/python -m bench.quality --methods flap,gisp --ratios 0.5
    .venv/bin/python -m bench.quality --ablation              # GRASPrune variants at 0.5
    .venv/bin/python -m bench.quality --report                # only rebuild the report

GISP runs once at the largest ratio and takes the other ratios' plans from its nested
trajectory (``--from-trajectory``); its prune time is that one run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from bench.quick_quality import ROOT, WIKI, run
from grasp_deploy.core.versions import machine, package_versions

RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "quality-cells"
WORK = ROOT / "runs" / "quality"
RATIOS = (0.2, 0.3, 0.4, 0.5)

# The CPU calibration recipe every calibrated method shares (the paper's is 512 x 512 tokens and
# 4 epochs: about 3.5 hours per GRASPrune run on this 2-core CPU).
CALIB = dict(num_samples=128, seq_len=256)
GRASP_CPU = ["--epochs", "1", "--scale-samples", "32"]
PAPER = ["--recipe", "paper", *GRASP_CPU]
BEST = ["--recipe", "best", *GRASP_CPU]

# column -> extra prune arguments (besides --prune-ratio, calibration and the output)
METHODS: dict[str, list[str]] = {
    "magnitude": ["--method", "magnitude"],
    "wanda-sp": ["--method", "wanda-sp"],
    "flap": ["--method", "flap"],
    "taylor": ["--method", "taylor"],
    "gisp": ["--method", "gisp"],
    "grasp-paper": ["--method", "grasp", *PAPER],
    "grasp-best": ["--method", "grasp", *BEST],
    "grasp-best-self": ["--method", "grasp", *BEST, "--calib", "self"],
    # second edition (issue 22): what landed since the first
    "structprune": ["--method", "structprune"],
    "wanda-sp+rec": ["--method", "wanda-sp", "--reconstruct"],
    "flap+rec": ["--method", "flap", "--reconstruct"],
    "grasp-best+rec": ["--method", "grasp", *BEST, "--reconstruct"],
    "grasp-best-kv0.5": ["--method", "grasp", *BEST, "--kv-ratio", "0.5"],
    "grasp-best+reselect": ["--method", "grasp", *BEST, "--reconstruct", "--reselect"],
}
# What `grasp-deploy eval --tasks` said here (2026-11-24), in the report instead of accuracies.
ZERO_SHOT = ("not measured on this machine. `grasp-deploy eval smollm2-135m --tasks "
             "arc_easy,hellaswag --limit 2` stops with `error: --tasks arc_easy,hellaswag: a "
             "task's dataset could not be fetched (ConnectionError: Couldn't reach "
             "'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)); zero-shot tasks need the "
             "Hugging Face dataset hub, or its cache from a machine that has it`: lm-eval's tasks "
             "load their data from the dataset hub, which only package registries can reach "
             "from here. Where the hub is reachable, `grasp-deploy eval CKPT --tasks "
             "arc_easy,hellaswag,piqa,winogrande` measures them for any exported checkpoint.")
# The GRASPrune columns (ours); the standings compare the best of them with the others.
OURS = ("grasp-best", "grasp-best+rec", "grasp-best+reselect", "grasp-paper")
# GRASPrune variants, each one switch away from the paper's method, on a smaller recipe
# (64 x 256 tokens, 1 epoch, stage A only) so that the whole set runs in well under an hour.
SMALL = ["--num-samples", "64", "--epochs", "1", "--scale-epochs", "0"]
# In report order: the paper, one switch at a time, then the combinations.
ABLATION: dict[str, list[str]] = {
    "paper": ["--recipe", "paper", *SMALL],
    "paper+rank-ties": ["--recipe", "paper", *SMALL, "--tie-break", "rank"],
    "paper+cost-projection": ["--recipe", "paper", *SMALL, "--projection", "cost"],
    "paper+kd": ["--recipe", "paper", *SMALL, "--loss", "kd"],
    "paper+ce+kd": ["--recipe", "paper", *SMALL, "--loss", "ce+kd"],
    "paper+taylor-init": ["--recipe", "paper", *SMALL, "--init", "taylor"],
    "paper+taylor-init+rank-ties+ce+kd": ["--recipe", "paper", *SMALL, "--init", "taylor",
                                          "--tie-break", "rank", "--loss", "ce+kd"],
    "best": ["--recipe", "best", *SMALL],
}


def cli() -> list[str]:
    return [str(Path(sys.executable).with_name("grasp-deploy"))]


def cell_name(column: str, ratio: float | None) -> str:
    return column if ratio is None else f"{column}-r{ratio:g}"


def prune(column: str, args: list[str], ratio: float, model: str, calib: str,
          gisp_root: Path | None) -> tuple[Path, float]:
    """Run ``grasp-deploy prune`` unless a plan with the very same arguments exists (an
    ablation variant that equals a table column shares its plan)."""
    cmd = ["prune", model, "--prune-ratio", str(ratio), "--calib", calib,
           "--num-samples", str(CALIB["num_samples"]), "--seq-len", str(CALIB["seq_len"]), *args]
    if "--calib" in args:  # the column brings its own calibration (self)
        i = cmd.index("--calib")
        del cmd[i:i + 2]
    if gisp_root is not None:
        cmd += ["--from-trajectory", str(gisp_root)]
    if "--align" not in args:  # the table's columns were measured at --align 1 (then the default)
        cmd += ["--align", "1"]
    # The key covers what the named recipes and the refit's defaults mean today, so changing
    # one re-runs its cells.
    from dataclasses import asdict

    from grasp_deploy.methods.grasp import RECIPES
    from grasp_deploy.methods.reconstruct import ReconstructSettings
    from grasp_deploy.methods.structprune import StructPruneSettings

    meaning = [cmd, RECIPES, asdict(ReconstructSettings()), asdict(StructPruneSettings())]
    key = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:10]
    work = WORK / f"{cell_name(column, ratio)}-{key}"
    plan = work / "plan"
    if (plan / "plan.json").is_file() and (work / "command.json").is_file():
        print(f"[reuse] {plan}", flush=True)
        return plan, json.loads((work / "command.json").read_text())["wall_seconds"]
    for other in WORK.glob(f"*-{key}"):
        if (other / "plan" / "plan.json").is_file() and (other / "command.json").is_file():
            print(f"[reuse] {other / 'plan'}", flush=True)
            return other / "plan", json.loads((other / "command.json").read_text())["wall_seconds"]
    seconds, _ = run([*cli(), *cmd, "--out", str(plan), "--force", "--quiet"])
    (work / "command.json").write_text(json.dumps({"command": cmd, "wall_seconds": seconds}) + "\n")
    return plan, seconds


def export(model: str, plan: Path) -> tuple[Path, float]:
    ckpt = plan.parent / "ckpt"
    seconds, _ = run([*cli(), "export", model, str(plan), "--out", str(ckpt), "--dtype", "float32",
                      "--force"])
    return ckpt, seconds


def evaluate(model: str, max_windows: int | None) -> dict:
    cmd = [*cli(), "eval", model, "--data", f"file:{WIKI / 'wiki.test.raw'}", "--json",
           "--dtype", "float32"]
    if max_windows:
        cmd += ["--max-windows", str(max_windows)]
    _, out = run(cmd)
    return json.loads(out.strip().splitlines()[-1])


def plan_figures(plan_dir: Path) -> dict:
    plan = json.loads((plan_dir / "plan.json").read_text())
    shape, b = plan["source"]["shape"], plan["budget"]
    kv = [len(l["kv_keep"]) for l in plan["layers"]]
    dense_kv = [l["num_key_value_heads"] for l in shape["layers"]]
    per_head = 2 * shape["head_dim"] * 2  # keys + values, bf16 bytes
    return {"params": b["model_pruned"], "params_dense": b["model_dense"],
            "removed_prunable": b["achieved_ratio"], "removed_model": b["model_reduction"],
            "kv_bytes_per_token_bf16": per_head * sum(kv),
            "kv_bytes_per_token_bf16_dense": per_head * sum(dense_kv),
            "settings": plan["settings"], "calibration": plan["calibration"]}


def run_cell(kind: str, column: str, args: list[str] | None, ratio: float | None, opts) -> None:
    name = cell_name(column, ratio)
    directory = CELLS if kind == "table" else CELLS / "ablation"
    if kind == "table" and opts.max_windows:  # a quick look never fills the full-test table
        directory = CELLS / f"first{opts.max_windows}"
    path = directory / f"{name}.json"
    if path.is_file() and not opts.force:
        print(f"[skip] {kind} {name}: done", flush=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    print(f"[cell] {kind} {name}", flush=True)
    record: dict = {"cell": name, "method": column, "ratio": ratio, "model": opts.model}
    plan, prune_s, gisp_root = None, 0.0, None
    if args is not None:
        # GISP runs once, at the table's largest ratio, even when this run asks for fewer ratios.
        gisp_top = max([*RATIOS, *opts.ratios])
        if column == "gisp" and ratio != gisp_top:
            roots = sorted(WORK.glob(f"{cell_name('gisp', gisp_top)}-*/plan/trajectory.json"))
            gisp_root = roots[0].parent if roots else None
            if gisp_root is None:
                print(f"[wait] {name}: needs the gisp run at {gisp_top:g} first "
                      f"(--methods gisp --ratios {gisp_top:g})", flush=True)
                return
        plan, prune_s = prune(column, args, ratio, opts.model, opts.calib, gisp_root)
        record.update(plan_figures(plan))
        run_info = json.loads((plan / "run.json").read_text())
        # A plan cut from GISP's trajectory costs nothing more: its time is the one run's.
        trajectory_run = run_info if gisp_root is None else json.loads((gisp_root / "run.json").read_text())
        # the method and, with --reconstruct, the refit after it (its own entry in run.json)
        record["prune_seconds"] = (trajectory_run["seconds"]["prune"]
                                   + run_info["seconds"].get("reconstruct", 0.0))
        record["prune_wall_seconds"] = prune_s
        record["stages"] = {k: {"steps": v["steps"], "seconds": v["seconds"]}
                            for k, v in run_info.get("stages", {}).items()}
    target = opts.model
    if plan is not None:
        ckpt, record["export_wall_seconds"] = export(opts.model, plan)
        target = str(ckpt)
    t0 = time.perf_counter()
    record["eval"] = evaluate(target, opts.max_windows if kind == "table" else opts.ablation_windows)
    record["eval_wall_seconds"] = time.perf_counter() - t0
    if plan is not None:
        shutil.rmtree(ckpt)
    record["perplexity"] = record["eval"]["perplexity"]
    record["machine"], record["versions"] = machine(), package_versions()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    print(f"[done] {name}: perplexity {record['perplexity']:.3f}", flush=True)


# -- report ----------------------------------------------------------------------------------
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
           "commands": {"table": "python -m bench.quality", "ablation": "python -m bench.quality --ablation"},
           "machine": machine(), "versions": package_versions()}
    (RESULTS / "quality.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "quality.md").write_text(markdown(out, columns))
    plot(out, columns, RESULTS / "quality.png")
    print(f"report: {RESULTS / 'quality.md'}", flush=True)


def _at(out: dict, column: str, ratio: float) -> dict | None:
    """The finished cell of ``column`` at ``ratio`` in the report, or None."""
    return out["cells"].get(column, {}).get(f"{ratio:g}")


def _ppl(cell: dict | None) -> str:
    return "-" if not cell else f"{cell['perplexity']:.2f}"


def markdown(out: dict, columns: list[str]) -> str:
    dense = out["dense"]
    lines = [
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
        "within each layer chosen by StructPrune's ADMM pass, then the refit with a bias; both "
        "leave position 0 of every block, an attention sink, out of their least squares). "
        "`grasp-best-kv0.5`: with "
        "`--kv-ratio 0.5` (KV cache at most half the dense model's) besides the parameter "
        "budget. Every column at `--align 1`, which is what the default `--align auto` "
        "gives on a CPU.",
        "",
        f"Dense: perplexity {_ppl(dense)}"
        + (f" ({dense['eval']['windows']} windows)." if dense else "."),
        "",
        "| method | " + " | ".join(f"r={r:g}" for r in RATIOS) + " |",
        "|---|" + "---:|" * len(RATIOS),
    ]
    for c in columns:
        lines.append(f"| {c} | " + " | ".join(_ppl(_at(out, c, r)) for r in RATIOS) + " |")
    done = {c: sum(1 for r in RATIOS if _at(out, c, r)) for c in METHODS}
    total = sum(done.values())
    if total == len(METHODS) * len(RATIOS):
        lines += ["", "All cells measured.", ""]
    else:
        partial = [f"`{c}` {n} of {len(RATIOS)}" for c, n in done.items() if n < len(RATIOS)]
        lines += ["", f"Cells measured: {total} of {len(METHODS) * len(RATIOS)} "
                  f"(not complete: {', '.join(partial)}).", ""]
    lines += standings(out, columns)
    lines += ["", f"Zero-shot: {ZERO_SHOT}"]
    lines += ["", "Per cell: parameters (whole model), KV-cache bytes per token (bf16), prune time "
              "(wall-clock seconds of `grasp-deploy prune` on this 2-core CPU; a few ran while "
              "other work shared the CPU, so read them as indicative).", "",
              "| method | ratio | perplexity | params | removed (model) | KV B/token | prune s | windows |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
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
    lines += ["", "Notes on single cells:", "", *notes] if notes else []
    if out["ablation"]:
        lines += ["", "## GRASPrune variants (ratio 0.5, first "
                  f"{next(iter(out['ablation'].values()))['eval']['windows']} test windows)", "",
                  "Each variant changes one switch of the paper's method; `best` is the "
                  "`--recipe best` combination.", "",
                  "| variant | perplexity | prune s |", "|---|---:|---:|"]
        for name, cell in out["ablation"].items():
            lines.append(f"| {cell['method']} | {_ppl(cell)} | {_seconds(cell['prune_seconds'])} |")
    m = out["machine"]
    lines += ["", f"Machine: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs; "
              f"torch {out['versions'].get('torch')}, transformers {out['versions'].get('transformers')}.",
              "", "Reproduce: `.venv/bin/python -m bench.quality` (cells are cached in "
              "`bench/results/quality-cells/`; re-running skips finished ones) and "
              "`.venv/bin/python -m bench.quality --ablation`.", ""]
    return "\n".join(lines)


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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over, the data
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated columns among {', '.join(METHODS)}")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    ap.add_argument("--calib", default=f"file:{WIKI / 'wiki.valid.tokens'}")
    ap.add_argument("--max-windows", type=int, default=None,
                    help="evaluate only the first N windows (not for the committed table)")
    ap.add_argument("--ablation", action="store_true", help="run the GRASPrune variants at 0.5")
    ap.add_argument("--ablation-windows", type=int, default=16)
    ap.add_argument("--report", action="store_true", help="only rebuild the report")
    ap.add_argument("--force", action="store_true",
                    help="redo the finished cells of --methods at --ratios (not the dense one)")
    opts = ap.parse_args()
    opts.ratios = sorted(float(r) for r in opts.ratios.split(","))
    if not (WIKI / "wiki.test.raw").is_file():
        sys.exit(f"error: {WIKI} is missing; the benchmark reads ../shared/data/wikitext-2")
    if not opts.report:
        if opts.ablation:
            for name, args in ABLATION.items():
                run_cell("ablation", name, ["--method", "grasp", *args], 0.5, opts)
        else:
            methods = [m for m in opts.methods.split(",") if m]
            unknown = [m for m in methods if m not in METHODS]
            if unknown:
                sys.exit(f"error: unknown method(s) {unknown}; use {', '.join(METHODS)}")
            # gisp's largest ratio first: the others come from its trajectory
            for ratio in sorted(opts.ratios, reverse=True):
                for m in methods:
                    run_cell("table", m, METHODS[m], ratio, opts)
            # last: the method cells matter more; --force redoes those, never the dense one
            run_cell("table", "dense", None, None, argparse.Namespace(**{**vars(opts),
                                                                         "force": False}))
    report(opts)


if __name__ == "__main__":
    main()
