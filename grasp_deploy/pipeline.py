"""prune-and-serve: prune -> export -> (A/B bench) -> serve, reusing outputs whose inputs match.

WORK/
  inputs.json   what the plan and checkpoint were made from (the reuse key)
  plan/         grasp-deploy prune output
  ckpt/         grasp-deploy export output
  bench/        grasp-deploy bench output (with --bench)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from .export import ExportConfig, run_export
from .plan import PLAN_FILE
from .pruning import PruneConfig, run_prune

INPUTS = "inputs.json"


def prune_inputs(config: PruneConfig) -> dict[str, Any]:
    """The fields that decide the plan (not where it goes or how it is displayed)."""
    data = asdict(config)
    for key in ("out", "force", "progress", "checkpoint_every"):
        data.pop(key)
    data["model"] = config.model or "smollm2-135m"
    return json.loads(json.dumps(data, default=str))


def default_work_dir(config: PruneConfig, root: Path = Path("runs")) -> Path:
    inputs = prune_inputs(config)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]
    name = re.sub(r"[^\w.-]+", "-", Path(str(inputs["model"]).rstrip("/")).name)
    return root / f"{name}-{config.method}-r{config.prune_ratio:g}-{key}"


def prepare_checkpoint(config: PruneConfig, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Plan and checkpoint under ``work``, made anew only when the inputs changed."""
    work.mkdir(parents=True, exist_ok=True)
    inputs = prune_inputs(config)
    recorded = json.loads((work / INPUTS).read_text()) if (work / INPUTS).is_file() else None
    same = recorded == inputs
    plan_dir, ckpt = work / "plan", work / "ckpt"
    out: dict[str, Any] = {"work": str(work), "plan": str(plan_dir), "checkpoint": str(ckpt)}
    if same and (plan_dir / PLAN_FILE).is_file():
        say(f"reusing the plan in {plan_dir} (same model and settings)")
        out["pruned"] = False
    else:
        if not same:
            (work / INPUTS).unlink(missing_ok=True)
        result = run_prune(replace(config, out=plan_dir, force=True))
        out["pruned"], out["prune_result"] = True, result
    if out["pruned"] is False and (ckpt / "grasp_manifest.json").is_file():
        say(f"reusing the checkpoint in {ckpt}")
        out["exported"] = False
    else:
        run_export(ExportConfig(plan_dir=plan_dir, out=ckpt, model=config.model, force=True))
        out["exported"] = True
    (work / INPUTS).write_text(json.dumps(inputs, indent=2) + "\n")
    return out
