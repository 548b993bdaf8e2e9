"""Refit an existing plan's o_proj/down_proj (layer-wise reconstruction) without re-running
its method: what `prune --reconstruct` would have done after the same run.

A long GRASPrune run (the paper's 512 x 512 recipe: about 2 hours on this CPU) need not be
repeated to see what the refit adds. The calibration blocks are cut again exactly as the run
cut them, from the plan's own record (text, num_samples, seq_len, scale_samples, seed), and
the refit sees all of them (stage A and stage B), as `--reconstruct` does. The model is loaded
in the job's dtype (auto: bfloat16 on a CPU with it). The kept units, and so the budget, do
not change. Export and evaluate the result like any plan:

    python -m bench.refit_plan --plan runs/full-best-r50 --out runs/full-best-r50-rec
    grasp-deploy export smollm2-135m runs/full-best-r50-rec --out CKPT --dtype float32
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench import harness
from grasp_deploy.core.fsutil import atomic_dir
from grasp_deploy.core.plan import PLAN_DIR, load_plan
from grasp_deploy.methods.reconstruct import ReconstructSettings, reconstruct_plan
from grasp_deploy.sources import models, text


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)  # --out: the refitted PLAN_DIR (new)
    ap.add_argument("--plan", type=Path, required=True, help="an existing PLAN_DIR")
    ap.add_argument("--ridge", type=float, default=ReconstructSettings().ridge)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                    help="the model's dtype during the refit (the prune job's, by default)")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: --out {args.out} exists; give a new directory")
    plan = load_plan(args.plan)
    calib = plan.calibration
    if plan.reconstruction:
        raise SystemExit(f"error: --plan {args.plan} is already refitted")
    if not calib.get("source") or calib.get("sampling"):
        raise SystemExit(f"error: --plan {args.plan} has no text calibration to cut again")
    source = models.resolve_source(plan.source.name)
    tokenizer = models.load_tokenizer(source)
    ids = text.tokenize(tokenizer, text.load_text(text.parse_source(calib["source"])))
    if int(ids.numel()) != calib["tokens"]:
        raise SystemExit(f"error: {calib['source']} tokenizes to {ids.numel()} tokens, the plan "
                         f"recorded {calib['tokens']}: not the text the plan was cut from")
    a, b = text.cut_blocks(ids, calib["seq_len"], (calib["num_samples"], calib["scale_samples"]),
                           calib["seed"])
    blocks = a if b is None or not len(b) else torch.cat([a, b])
    model = models.load_model(source, dtype=getattr(torch, args.dtype))
    t0 = time.perf_counter()
    refitted = reconstruct_plan(plan, model, blocks, ReconstructSettings(args.ridge))
    seconds = time.perf_counter() - t0
    with atomic_dir(args.out, False, PLAN_DIR) as tmp:
        refitted.save(tmp)
        (tmp / "refit.json").write_text(json.dumps({
            "from_plan": str(args.plan), "blocks": int(blocks.shape[0]),
            "seq_len": int(blocks.shape[1]), "ridge": args.ridge, "dtype": args.dtype,
            "seconds": seconds, **harness.stamp(argv)},
            indent=1) + "\n")
    print(f"refitted {args.plan} on {blocks.shape[0]} x {blocks.shape[1]} blocks in "
          f"{seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
