"""Export check: a plan applied as masks vs the exported checkpoint, same windows, same run.

Runs the real CLI: ``grasp-deploy export``, ``inspect --json`` and ``eval --json`` twice
(``MODEL --plan PLAN`` and ``CKPT``), then writes ``bench/results/<name>.json`` / ``.md``.

    .venv/bin/python -m bench.export_check --plan runs/quick-smollm2-r30-grasp \
        --name export-smollm2-r30
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import harness
from bench.harness import ROOT, WIKI, run


def main() -> None:
    ap = harness.parser(__doc__, ".")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--plan", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint dir (default runs/<name>)")
    ap.add_argument("--data", default=f"file:{WIKI / 'wiki.test.raw'}")
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--name", default="export-smollm2-r30")
    args = ap.parse_args()
    ckpt = args.ckpt or ROOT / "runs" / args.name
    cli = harness.grasp_deploy()
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
        "export_seconds": export_s,
    }
    p, kv = result["parameters"], result["kv_cache_bytes_per_token"]
    md = [
        f"# {args.name}: plan as masks vs exported checkpoint",
        "",
        (
            f"Perplexity on the first {masked['windows']} windows x {masked['seq_len']} of "
            f"{Path(args.data).name} ({masked['dtype']}):"
        ),
        "",
        "| | masked (`eval MODEL --plan`) | exported (`eval CKPT`) | relative difference |",
        "|---|---:|---:|---:|",
        f"| perplexity | {masked['perplexity']:.4f} | {exported['perplexity']:.4f} | {rel:.2e} |",
        "",
        "| | dense | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| parameters | {p['dense']:,} | {p['pruned']:,} | {p['pruned'] / p['dense']:.3f} |",
        (
            f"| KV cache bytes / token ({kv['dtype_bytes']} B per value) | {kv['dense']:,} | "
            f"{kv['pruned']:,} | {kv['pruned'] / kv['dense']:.3f} |"
        ),
        "",
        f"Export took {export_s:.1f} s.",
    ]
    print(harness.write(args.out, args.name, result, "\n".join(md), args.note).read_text())


if __name__ == "__main__":
    main()
