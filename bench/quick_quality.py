"""Quick quality check: GRASPrune vs magnitude at one ratio, dense as the reference.

Runs the real CLI (``grasp-deploy prune`` / ``eval``) as subprocesses, times each command, and
writes ``bench/results/<name>.json`` and ``.md`` with the commands, the machine and the package
versions. Example (the recipe of issue 2):

    .venv/bin/python -m bench.quick_quality --ratio 0.3 --num-samples 32 --seq-len 256 \
        --epochs 1 --max-windows 8 --name quick-smollm2-r30
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from grasp_deploy.core.versions import machine, package_versions

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2"


def run(cmd: list[str]) -> tuple[float, str]:
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--calib", default=f"file:{WIKI / 'wiki.valid.tokens'}")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default=f"file:{WIKI / 'wiki.test.raw'}")
    ap.add_argument("--eval-seq-len", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--methods", default="grasp,magnitude")
    ap.add_argument("--work", type=Path, default=ROOT / "runs")
    ap.add_argument("--name", default="quick-smollm2-r30")
    ap.add_argument("--extra", default="", help="extra flags for grasp prune")
    ap.add_argument("--runs", default=None,
                    help="';'-separated 'METHOD [FLAGS]' entries (overrides --methods and "
                         "--extra), e.g. 'structprune --temperature 0.5;flap'")
    args = ap.parse_args()

    cli = [str(Path(sys.executable).with_name("grasp-deploy"))]
    ev = ["eval", args.model, "--data", args.data, "--seq-len", str(args.eval_seq_len),
          "--max-windows", str(args.max_windows), "--json", "-q"]
    rows = []
    seconds, out = run(cli + ev)
    dense = json.loads(out)
    rows.append({"method": "dense", "perplexity": dense["perplexity"], "prune_seconds": 0.0,
                 "eval_seconds": seconds, "removed_prunable": 0.0, "removed_model": 0.0})
    runs = ([shlex.split(r) for r in args.runs.split(";")] if args.runs else
            [[m] + (shlex.split(args.extra) if m == "grasp" else []) for m in args.methods.split(",")])
    for method, *flags in runs:
        label = shlex.join([method, *flags])
        plan_dir = args.work / f"{args.name}-{'_'.join([method, *flags]).replace('-', '')}"
        cmd = cli + ["prune", args.model, "--prune-ratio", str(args.ratio), "--method", method,
                     "--calib", args.calib, "--num-samples", str(args.num_samples),
                     "--seq-len", str(args.seq_len), "--epochs", str(args.epochs),
                     "--out", str(plan_dir), "--force", "-q"]
        if "--align" not in flags:  # as measured before --align auto
            cmd += ["--align", "1"]
        cmd += flags
        prune_s, _ = run(cmd)
        plan = json.loads((plan_dir / "plan.json").read_text())
        eval_s, out = run(cli + ev + ["--plan", str(plan_dir)])
        res = json.loads(out)
        rows.append({"method": label, "perplexity": res["perplexity"], "prune_seconds": prune_s,
                     "eval_seconds": eval_s, "removed_prunable": plan["budget"]["achieved_ratio"],
                     "removed_model": plan["budget"]["model_reduction"],
                     "model_params": plan["budget"]["model_pruned"],
                     "command": shlex.join(["grasp-deploy"] + cmd[1:])})
    result = {
        "name": args.name, "model": args.model, "ratio": args.ratio,
        "recipe": {"calib": args.calib, "num_samples": args.num_samples, "seq_len": args.seq_len,
                   "epochs": args.epochs},
        "eval": {"data": args.data, "seq_len": args.eval_seq_len, "windows": dense["windows"],
                 "dtype": dense["dtype"]},
        "rows": rows, "machine": machine(), "versions": package_versions(),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.quick_quality"] + sys.argv[1:]),
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.name}: {args.model}, prune ratio {args.ratio}", "",
             f"Calibration {args.calib.replace(str(ROOT.parent), '..')}: {args.num_samples} x "
             f"{args.seq_len} tokens, {args.epochs} epoch(s). Evaluation: first "
             f"{dense['windows']} windows x {args.eval_seq_len} of {Path(args.data).name}, "
             f"{dense['dtype']}.", "",
             "| method | perplexity | removed (prunable) | removed (model) | prune s | eval s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['perplexity']:.2f} | {r['removed_prunable']:.2%} | "
                     f"{r['removed_model']:.2%} | {r['prune_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    lines += ["", f"Machine: {result['machine'].get('Model name', '?')}, "
              f"{result['machine'].get('CPU(s)', '?')} CPUs; torch {result['versions'].get('torch')}, "
              f"transformers {result['versions'].get('transformers')}.", "",
              "Command: `" + result["command"].replace(str(ROOT.parent), "..") + "`", ""]
    (out_dir / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
