"""GISP's trajectory file: the nested removal order of an earlier run, and taking a plan
from it (``--from-trajectory``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import GraspError


@dataclass(frozen=True)
class GispStep:
    target: float  # prune ratio reached after this step
    removed: tuple[int, ...]  # flat unit ids removed in this step, least important first


TRAJECTORY_FILE = "trajectory.json"  # GISP: the nested removal order, one entry per step


def load_trajectory(plan_dir: Path, fingerprint: str, kv_ratio: float | None) -> list[GispStep]:
    """An earlier GISP run's steps, checked against the model and the KV budget (every step
    of a trajectory holds the KV budget it was made with)."""
    path = plan_dir / TRAJECTORY_FILE
    if not path.is_file():
        raise GraspError(
            f"--from-trajectory {plan_dir} has no {TRAJECTORY_FILE}; pass the PLAN_DIR "
            "of an earlier 'grasp-deploy prune --method gisp' run"
        )
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fingerprint:
        raise GraspError(f"--from-trajectory {plan_dir} was made for another model "
                         f"({saved.get('fingerprint')}, this one is {fingerprint})")
    if saved.get("kv_ratio") != kv_ratio:
        made = saved.get("kv_ratio")
        raise GraspError(
            f"--from-trajectory {plan_dir} was made with --kv-ratio {made}, not "
            f"{kv_ratio}; pass {'no --kv-ratio' if made is None else f'--kv-ratio {made}'}"
            " or re-run GISP"
        )
    return [GispStep(float(s["target"]), tuple(s["removed"])) for s in saved["steps"]]


def trajectory_record(step: float, fingerprint: str, kv_ratio: float | None,
                      steps: list[GispStep]) -> dict[str, Any]:
    """What TRAJECTORY_FILE holds: the grid step, the model, the KV budget and the steps."""
    return {"step": step, "fingerprint": fingerprint, "kv_ratio": kv_ratio,
            "steps": [{"target": t.target, "removed": list(t.removed)} for t in steps]}


def trajectory_calibration(plan_dir: Path) -> dict[str, Any]:
    """The calibration an earlier GISP run used, for a plan taken from its trajectory."""
    calibration = json.loads((plan_dir / "plan.json").read_text()).get("calibration", {})
    return {**calibration, "from_trajectory": str(plan_dir)}
