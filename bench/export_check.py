"""Export check: a plan applied as masks vs the exported checkpoint, same windows, same run.

Runs the real CLI: ``grasp-deploy export``, ``inspect --json`` and ``eval --json`` twice
(``MODEL --plan PLAN`` and ``CKPT``), then writes ``bench/results/<name>.json`` / ``.md``.

    .venv/bin/python -m bench.export_check --plan runs/quick-smollm2-r30-grasp \
        --name export-smollm2-r30
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench.quick_quality import ROOT, WIKI, run

from grasp_deploy.core.versions import machine, package_versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--plan", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="checkpoint dir (default runs/<name>)")
    ap.add_argument("--data", default=f"file:{WIKI / 'wiki.test.raw'}")
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--name", default="export-smollm2-r30")
    args = ap.parse_args()
    ckpt = args.out or ROOT / "runs" / args.name
    cli = [str(Path(sys.executable).with_name("grasp-deploy"))]
    export_s, _ = run(cli + ["export", args.model, str(args.plan), "--out", str(ckpt), "--force"])
    _, out = run(cli + ["inspect", str(ckpt), "--json"])
    report = json.loads(out)
    ev = ["--data", args.data, "--max-windows", str(args.max_windows), "--json", "-q"]
    _, out = run(cli + ["eval", args.model, "--plan", str(args.plan)] + ev)
    masked = json.loads(out)
    _, out = run(cli + ["eval", str(ckpt)] + ev)
    exported = json.loads(out)
    rel = abs(exported["perplexity"] - masked["perplexity"]) / masked["perplexity"]
    result = {
        "name": args.name, "model": args.model, "plan": str(args.plan),
        "perplexity": {"masked": masked["perplexity"], "exported": exported["perplexity"],
                       "relative_difference": rel, "windows": masked["windows"],
                       "seq_len": masked["seq_len"], "dtype": masked["dtype"]},
        "parameters": {"dense": report["dense_parameters"], "pruned": report["parameters"]},
        "kv_cache_bytes_per_token": {"dtype_bytes": report["kv_dtype_bytes"],
                                     "dense": report["dense_kv_cache_bytes_per_token"],
                                     "pruned": report["kv_cache_bytes_per_token"]},
        "export_seconds": export_s, "machine": machine(), "versions": package_versions(),
        "command": shlex.join(["python", "-m", "bench.export_check"] + sys.argv[1:]),
    }
    out_dir = ROOT / "bench" / "results"
    (out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    p, kv = result["parameters"], result["kv_cache_bytes_per_token"]
    md = [f"# {args.name}: plan as masks vs exported checkpoint", "",
          f"Perplexity on the first {masked['windows']} windows x {masked['seq_len']} of "
          f"{Path(args.data).name} ({masked['dtype']}):", "",
          "| | masked (`eval MODEL --plan`) | exported (`eval CKPT`) | relative difference |",
          "|---|---:|---:|---:|",
          f"| perplexity | {masked['perplexity']:.4f} | {exported['perplexity']:.4f} | {rel:.2e} |", "",
          "| | dense | pruned | ratio |", "|---|---:|---:|---:|",
          f"| parameters | {p['dense']:,} | {p['pruned']:,} | {p['pruned'] / p['dense']:.3f} |",
          f"| KV cache bytes / token ({kv['dtype_bytes']} B per value) | {kv['dense']:,} | "
          f"{kv['pruned']:,} | {kv['pruned'] / kv['dense']:.3f} |", "",
          f"Export took {export_s:.1f} s. Machine: {result['machine'].get('Model name', '?')}, "
          f"{result['machine'].get('CPU(s)', '?')} CPUs.", "",
          f"Command: `{result['command']}`", ""]
    (out_dir / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
