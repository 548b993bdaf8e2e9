"""Checkpoints for timing only: the shape of a pruned plan with one of its heterogeneities taken
away, at (nearly) the same parameter count, to find which one costs serving speed.

The channels and KV groups kept are drawn at random (seed 0) from the dense model, so the
weights say nothing about quality; a served A/B with ``ignore_eos`` times them all the same.
Variants of the plan in ``--like`` (its manifest's per-layer FFN widths W and KV heads K):

- ``hetffn-kv2``: every layer keeps 2 KV heads; W scaled so the parameters match.
- ``ffn-uniform-hetkv``: K as in the plan; every layer's FFN width the mean of W.
- ``hetffn128-kv2``: as ``hetffn-kv2``, each width rounded to a multiple of 128.

    python -m bench.width_variants --like runs/smollm2-r50-quick/ckpt --variant hetffn-kv2 \\
        --out runs/variants/hetffn-kv2
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import harness
from grasp_deploy.checkpoint import format as fmt
from grasp_deploy.core.plan import Plan, SourceModel, budget_report, layers_from_mask
from grasp_deploy.core.projection import UnitLayout
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.sources import models

VARIANTS = ("hetffn-kv2", "ffn-uniform-hetkv", "hetffn128-kv2")


def shape_of(variant: str, widths: list[int], kv: list[int], shape: ModelShape) -> tuple:
    """(FFN widths, KV heads) per layer for ``variant`` of the plan (widths, kv)."""
    layers, dense_ffn = len(widths), shape.layers[0].intermediate_size
    # one KV group: its query heads and its K head (q, k), the same again in (o, v)
    group_params = 2 * (shape.group_size + 1) * shape.head_dim * shape.hidden_size
    channels_per_group = group_params / (3 * shape.hidden_size)
    if variant == "ffn-uniform-hetkv":
        return [round(sum(widths) / layers)] * layers, kv
    freed = (sum(kv) - 2 * layers) * channels_per_group
    scaled = [min(dense_ffn, round(w * (sum(widths) + freed) / sum(widths))) for w in widths]
    if variant == "hetffn128-kv2":
        scaled = [max(128, min(dense_ffn, round(w / 128) * 128)) for w in scaled]
    return scaled, [2] * layers


def main() -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--like", required=True, help="a pruned checkpoint whose shape to follow")
    ap.add_argument("--variant", required=True, choices=VARIANTS)
    ap.add_argument("--model", default="smollm2-135m", help="the dense model to cut")
    args = ap.parse_args()
    like = json.loads((Path(args.like) / fmt.MANIFEST).read_text())["layers"]
    model = models.load_model(models.resolve_source(args.model))
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    widths, kv = shape_of(args.variant, [x["intermediate_size"] for x in like],
                          [x["num_key_value_heads"] for x in like], shape)
    rng = np.random.default_rng(0)
    mask = np.zeros(layout.num_units, dtype=bool)
    for i, (w, k) in enumerate(zip(widths, kv, strict=True)):
        ffn, groups = layout.segment(i, "ffn"), layout.segment(i, "kv")
        mask[ffn.start + np.sort(rng.choice(ffn.stop - ffn.start, w, replace=False))] = True
        mask[groups.start + np.arange(k)] = True
    plan = Plan(method="manual", settings={"variant": args.variant, "like": args.like},
                source=SourceModel(str(model.name_or_path), models.fingerprint(model), shape),
                budget=budget_report(layout, mask, 0.5, models.count_parameters(model)),
                layers=layers_from_mask(layout, mask), calibration={"source": None}, seed=0)
    (args.out / "plan").mkdir(parents=True, exist_ok=True)
    plan.save(args.out / "plan")
    run_export(ExportConfig(plan_dir=args.out / "plan", out=args.out / "ckpt", force=True))
    print(f"{args.variant}: {plan.budget.model_pruned:,} parameters, FFN {min(widths)}.."
          f"{max(widths)} ({len(set(widths))} distinct), KV heads {sorted(set(kv))}")


if __name__ == "__main__":
    main()
