"""What layer-wise reconstruction buys, and with which settings: one plan, several ridges and
calibration sizes, perplexity on the first test windows.

Loads the model once (float32), takes an existing PLAN_DIR (e.g. the 50% quick-recipe plan),
evaluates it as is, then reconstructs it with each (blocks, ridge) pair on calibration blocks
cut exactly as ``prune`` cuts them (same text, seq_len and seed), and evaluates each result
on the same windows. Times are wall seconds on this machine.

    python -m bench.reconstruct_sweep --plan PLAN_DIR --settings 32:1e-4,32:1e-3,32:1e-2,64:1e-3 \
        --out bench/results/reconstruct-smollm2-r50
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from bench import harness
from bench.harness import WIKI
from grasp_deploy.core.masking import multiplied
from grasp_deploy.core.plan import load_plan
from grasp_deploy.jobs.evaluate import perplexity
from grasp_deploy.methods.reconstruct import ReconstructSettings, reconstruct_plan
from grasp_deploy.sources import models, text


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--plan", type=Path, required=True)
    ap.add_argument("--calib", default=f"file:{WIKI / 'wiki.valid.tokens'}")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--settings", default="32:1e-4,32:1e-3,32:1e-2,64:1e-3",
                    help="BLOCKS:RIDGE pairs, comma-separated")
    ap.add_argument("--data", default=f"file:{WIKI / 'wiki.test.raw'}")
    ap.add_argument("--eval-seq-len", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=16)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    plan = load_plan(args.plan)
    source = models.resolve_source(plan.source.name)
    model = models.load_model(source, dtype=torch.float32)
    tokenizer = models.load_tokenizer(source)
    test_ids = text.tokenize(tokenizer, text.load_text(text.parse_source(args.data)))
    calib_ids = text.tokenize(tokenizer, text.load_text(text.parse_source(args.calib)))

    def ppl(p) -> float:
        with torch.no_grad(), multiplied(model, p.source.shape, p.multipliers()):
            nll, _ = perplexity(
                model, test_ids, args.eval_seq_len, args.max_windows, progress=False
            )
        return math.exp(nll)

    rows = [{"setting": "dense", "perplexity": _dense_ppl(model, test_ids, args)},
            {"setting": "plan as pruned", "perplexity": ppl(plan)}]
    print(rows, flush=True)
    for n, ridge in (
        (int(a), float(b)) for a, b in (x.split(":") for x in args.settings.split(","))
    ):
        blocks, _ = text.cut_blocks(calib_ids, args.seq_len, (n, 0), plan.seed)
        t0 = time.perf_counter()
        rebuilt = reconstruct_plan(plan, model, blocks, ReconstructSettings(ridge),
                                   progress=False)
        seconds = time.perf_counter() - t0
        rows.append({"setting": f"reconstruct, {n} x {args.seq_len} blocks, ridge {ridge:g}",
                     "blocks": n, "ridge": ridge, "seconds": seconds, "perplexity": ppl(rebuilt)})
        print(rows[-1], flush=True)
    result = {"plan": str(args.plan), "rows": rows, "windows": args.max_windows}
    print(harness.write(args.out, "sweep", result, _markdown(args, plan, rows),
                        args.note).read_text())


def _markdown(args, plan, rows: list[dict]) -> str:
    base = rows[1]["perplexity"]
    lines = ["# Layer-wise reconstruction: settings vs perplexity", "",
             f"Plan `{args.plan}` ({plan.method}, ratio {plan.budget.prune_ratio}); perplexity on "
             f"the first {args.max_windows} windows of {args.eval_seq_len} tokens of "
             f"`{args.data}`, float32; calibration blocks cut from `{args.calib}` as prune cuts "
             f"them (seed {plan.seed}).", "",
             "| setting | perplexity | vs plan | reconstruct seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        rel = f"{100 * (r['perplexity'] / base - 1):+.1f}%" if r["setting"] != "dense" else ""
        lines.append(f"| {r['setting']} | {r['perplexity']:.2f} | {rel} | "
                     f"{r.get('seconds', float('nan')):.0f} |".replace("| nan |", "| |"))
    return "\n".join(lines)


def _dense_ppl(model, ids, args) -> float:
    with torch.no_grad():
        nll, _ = perplexity(model, ids, args.eval_seq_len, args.max_windows, progress=False)
    return math.exp(nll)


if __name__ == "__main__":
    main()
