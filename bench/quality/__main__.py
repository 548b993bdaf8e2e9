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

from bench import harness
from bench.harness import WIKI, run
from bench.quality.columns import ABLATION, CALIB, CELLS, METHODS, RATIOS, WORK, cell_name
from bench.quality.report import report


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

    from grasp_deploy.methods.grasp_settings import RECIPES
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
    seconds, _ = run([*harness.grasp_deploy(), *cmd, "--out", str(plan), "--force", "--quiet"])
    (work / "command.json").write_text(json.dumps({"command": cmd, "wall_seconds": seconds}) + "\n")
    return plan, seconds


def export(model: str, plan: Path) -> tuple[Path, float]:
    ckpt = plan.parent / "ckpt"
    seconds, _ = run(
        [*harness.grasp_deploy(), "export", model, str(plan), "--out", str(ckpt), "--dtype",
         "float32", "--force"]
    )
    return ckpt, seconds


def evaluate(model: str, max_windows: int | None) -> dict:
    cmd = [
        *harness.grasp_deploy(),
        "eval",
        model,
        "--data",
        f"file:{WIKI / 'wiki.test.raw'}",
        "--json",
        "--dtype",
        "float32",
    ]
    if max_windows:
        cmd += ["--max-windows", str(max_windows)]
    _, out = run(cmd)
    return json.loads(out.strip().splitlines()[-1])


def plan_figures(plan_dir: Path) -> dict:
    plan = json.loads((plan_dir / "plan.json").read_text())
    shape, b = plan["source"]["shape"], plan["budget"]
    kv = [len(layer["kv_keep"]) for layer in plan["layers"]]
    dense_kv = [layer["num_key_value_heads"] for layer in shape["layers"]]
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
        trajectory_run = (
            run_info if gisp_root is None else json.loads((gisp_root / "run.json").read_text())
        )
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
    record["eval"] = evaluate(
        target, opts.max_windows if kind == "table" else opts.ablation_windows
    )
    record["eval_wall_seconds"] = time.perf_counter() - t0
    if plan is not None:
        shutil.rmtree(ckpt)
    record["perplexity"] = record["eval"]["perplexity"]
    record.update({k: v for k, v in harness.stamp().items() if k in ("machine", "versions",
                                                                       "commit")})
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    print(f"[done] {name}: perplexity {record['perplexity']:.3f}", flush=True)



def main() -> None:
    ap = harness.parser(__doc__, ".")
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
