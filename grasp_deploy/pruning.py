"""The prune job: model + calibration data + budget -> PLAN_DIR/plan.json.

Everything that can be checked cheaply (ratio, sources, output path, context length, budget,
calibration length) is checked before the model's weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import data, models
from .arch import ModelShape
from .baselines import (GispStep, flap_biases, flap_scores, gisp_trajectory, keep_top,
                        magnitude_scores, mask_at, uniform_counts, wanda_sp_scores)
from .errors import GraspError
from .fsutil import atomic_dir, check_target, write_json
from .grasp import (GraspSettings, StageLog, StepFn, initial_scores, train_gates,
                    train_scales)
from .importance import collect_activations, mean_gradients, taylor_importance
from .plan import Plan, SourceModel, budget_report, layers_from_mask
from .projection import UnitLayout, check_budget, project
from .versions import package_versions

METHODS = ("grasp", "magnitude", "wanda-sp", "flap", "taylor", "gisp")
RUN_FILE = "run.json"
TRAJECTORY_FILE = "trajectory.json"  # GISP: the nested removal order, one entry per step


@dataclass(frozen=True)
class PruneConfig:
    prune_ratio: float
    out: Path
    model: str | None = None
    method: str = "grasp"
    calib: str = "wikitext2"
    num_samples: int = 512
    seq_len: int = 512
    grasp: GraspSettings = field(default_factory=GraspSettings)
    scale_samples: int | None = None  # stage-B blocks; default: num_samples
    align: int = 1
    tp: int = 1
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    force: bool = False
    checkpoint_every: int = 50
    progress: bool = True
    recipe: str | None = None  # recorded in the plan; GraspSettings already hold its values
    gisp_step: float = 0.025  # GISP: prune-ratio increment per step
    gisp_blocks: int = 16  # GISP: calibration blocks per step's gradient
    from_trajectory: Path | None = None  # GISP: an earlier run's PLAN_DIR to take a nested plan from

    def __post_init__(self) -> None:
        if not (isinstance(self.prune_ratio, (int, float)) and 0.0 < self.prune_ratio < 1.0):
            raise GraspError(f"--prune-ratio {self.prune_ratio} is outside (0, 1); give the "
                             "fraction of prunable parameters to remove, e.g. 0.3")
        if self.method not in METHODS:
            raise GraspError(f"--method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        for flag, value in (("--num-samples", self.num_samples), ("--seq-len", self.seq_len),
                            ("--align", self.align), ("--tp", self.tp)):
            if value < 1:
                raise GraspError(f"{flag} {value} must be a positive integer")
        if self.seq_len < 2:
            raise GraspError(f"--seq-len {self.seq_len} is too short; use at least 2")
        if self.scale_samples is not None and self.scale_samples < 0:
            raise GraspError(f"--scale-samples {self.scale_samples} must be >= 0")
        if not 0.0 < self.gisp_step < 1.0 or self.gisp_blocks < 1:
            raise GraspError(f"--gisp-step {self.gisp_step} must be in (0, 1) and --gisp-blocks "
                             f"{self.gisp_blocks} positive")

    @property
    def uses_calibration(self) -> bool:
        return self.method != "magnitude" and self.from_trajectory is None

    @property
    def needs_gradients(self) -> bool:
        return self.method in ("taylor", "gisp") or (self.method == "grasp" and self.grasp.init == "taylor")

    @property
    def stage_b_samples(self) -> int:
        if self.method != "grasp" or self.grasp.scale_epochs == 0:
            return 0
        return self.num_samples if self.scale_samples is None else self.scale_samples


@dataclass
class PruneResult:
    plan: Plan
    plan_dir: Path
    seconds: dict[str, float]
    stages: dict[str, StageLog]


def _settings(config: PruneConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"align": config.align, "tp": config.tp}
    if config.uses_calibration:
        settings.update(num_samples=config.num_samples, seq_len=config.seq_len, dtype=config.dtype)
    if config.method == "grasp":
        settings.update(config.grasp.to_json(), recipe=config.recipe,
                        scale_samples=config.stage_b_samples)
    if config.method == "gisp":
        settings.update(gisp_step=config.gisp_step, gisp_blocks=config.gisp_blocks)
    return settings


def run_prune(config: PruneConfig, on_step: StepFn | None = None) -> PruneResult:
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    out = Path(config.out)
    check_target(out, config.force, flag="--out")
    calib = data.parse_source(config.calib) if config.uses_calibration else None
    source = models.resolve_source(config.model)
    device = models.resolve_device(config.device)
    dtype = models.resolve_dtype(config.dtype, device)

    hf_config = models.load_config(source)  # fetches the default model once
    shape = ModelShape.from_config(hf_config)
    limit = getattr(hf_config, "max_position_embeddings", None)
    if config.uses_calibration and limit is not None and config.seq_len > limit:
        raise GraspError(f"--seq-len {config.seq_len} exceeds the model's context of {limit} "
                         "tokens; use a smaller --seq-len")
    layout = UnitLayout.from_shape(shape, align=config.align, tp=config.tp)
    budget = math.floor((1.0 - config.prune_ratio) * layout.total_cost())
    check_budget(layout, budget)

    tokenizer = models.load_tokenizer(source)
    blocks_a = blocks_b = None
    calib_desc: dict[str, Any] = {"source": None}
    if calib is not None and not calib.is_model_sampled:
        ids = data.tokenize(tokenizer, data.load_text(calib))
        blocks_a, blocks_b = data.cut_blocks(ids, config.seq_len,
                                             (config.num_samples, config.stage_b_samples),
                                             config.seed)
        calib_desc = data.describe(calib, tokens=int(ids.numel()))

    t0 = time.perf_counter()
    model = models.load_model(source, dtype=dtype, device=device)
    times["load"] = time.perf_counter() - t0
    fp = models.fingerprint(model)
    if calib is not None and calib.is_model_sampled:
        t0 = time.perf_counter()
        sampled = data.sample_from_model(model, tokenizer, config.num_samples + config.stage_b_samples,
                                         config.seq_len, config.seed, progress=config.progress)
        blocks_a, blocks_b = sampled[: config.num_samples], sampled[config.num_samples:]
        times["sample"] = time.perf_counter() - t0
        calib_desc = {**data.describe(calib), "sampling": "temperature 1, top_p 0.95, from BOS"}
    if calib is not None:
        calib_desc.update(num_samples=config.num_samples, seq_len=config.seq_len,
                          scale_samples=config.stage_b_samples, seed=config.seed)

    stages: dict[str, StageLog] = {}
    scales, biases, trajectory, added = None, None, None, 0
    t0 = time.perf_counter()
    if config.method == "grasp":
        init = None
        if config.grasp.init == "taylor":
            grads = mean_gradients(model, shape, blocks_a[:config.grasp.init_samples],
                                   progress=config.progress,
                                   desc="  init")
            init = initial_scores(taylor_importance(model, shape, layout, grads) /
                                  layout.unit_costs(), layout, config.grasp.tau)
            del grads
        resume = _Resume(out, _run_key(config, fp, calib_desc))
        mask, scales, stages = _grasp(model, shape, layout, blocks_a, blocks_b, budget, config,
                                      resume, on_step, init)
    elif config.method == "gisp" and config.from_trajectory is not None:
        trajectory, calib_desc = _load_trajectory(Path(config.from_trajectory), fp)
        mask = mask_at(layout, trajectory, config.prune_ratio)
    elif config.method == "gisp":
        trajectory = gisp_trajectory(model, shape, layout, blocks_a, config.prune_ratio,
                                     config.gisp_step, config.gisp_blocks, config.progress)
        mask = mask_at(layout, trajectory, config.prune_ratio)
    else:
        mask, biases = _one_shot(model, shape, layout, blocks_a, config)
        if biases is not None:
            added = sum(shape.hidden_size for _ in biases) * (int(not shape.attention_bias)
                                                               + int(not shape.mlp_bias))
    times["prune"] = time.perf_counter() - t0

    layers = layers_from_mask(layout, mask, scales)
    if biases is not None:
        layers = tuple(replace(lp, o_bias=tuple(float(x) for x in b["o"]),
                               down_bias=tuple(float(x) for x in b["down"]))
                       for lp, b in zip(layers, biases))
    plan = Plan(
        method=config.method, settings=_settings(config),
        source=SourceModel(source.spec, fp, shape),
        budget=budget_report(layout, mask, config.prune_ratio, models.count_parameters(model),
                             added),
        layers=layers, calibration=calib_desc,
        seed=config.seed, versions=package_versions(),
    )
    times["total"] = time.perf_counter() - t_all
    with atomic_dir(out, config.force) as tmp:
        plan.save(tmp)
        if trajectory is not None:
            write_json(tmp / TRAJECTORY_FILE, {
                "step": config.gisp_step, "fingerprint": fp,
                "steps": [{"target": t.target, "removed": list(t.removed)} for t in trajectory]})
        write_json(tmp / RUN_FILE, {
            "seconds": times, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "stages": {k: {"steps": v.steps, "seconds": v.seconds, "losses": v.losses}
                       for k, v in stages.items()}})
    if config.method == "grasp":
        resume.clear()
    return PruneResult(plan, out, times, stages)


def _load_trajectory(plan_dir: Path, fingerprint: str) -> tuple[list[GispStep], dict[str, Any]]:
    """An earlier GISP run's steps and calibration, checked against the model."""
    path = plan_dir / TRAJECTORY_FILE
    if not path.is_file():
        raise GraspError(f"--from-trajectory {plan_dir} has no {TRAJECTORY_FILE}; pass the PLAN_DIR "
                         "of an earlier 'grasp-deploy prune --method gisp' run")
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != fingerprint:
        raise GraspError(f"--from-trajectory {plan_dir} was made for another model "
                         f"({saved.get('fingerprint')}, this one is {fingerprint})")
    steps = [GispStep(float(s["target"]), tuple(s["removed"])) for s in saved["steps"]]
    calibration = json.loads((plan_dir / "plan.json").read_text()).get("calibration", {})
    return steps, {**calibration, "from_trajectory": str(plan_dir)}


def _one_shot(model, shape, layout, blocks, config: PruneConfig):
    """magnitude, wanda-sp, flap, taylor: (mask, FLAP's compensation biases or None)."""
    if config.method == "magnitude":
        scores = magnitude_scores(model, shape, layout)
    elif config.method == "taylor":
        grads = mean_gradients(model, shape, blocks, progress=config.progress)
        scores = taylor_importance(model, shape, layout, grads)
    else:
        stats = collect_activations(model, shape, blocks, progress=config.progress)
        if config.method == "flap":
            # Adaptive structure: one global ranking of standardised scores against the budget.
            budget = math.floor((1.0 - config.prune_ratio) * layout.total_cost())
            mask = project(flap_scores(model, shape, layout, stats), layout, budget)
            return mask, flap_biases(model, shape, layout, mask, stats)
        scores = wanda_sp_scores(model, shape, layout, stats)
    return keep_top(scores, layout, uniform_counts(layout, config.prune_ratio)), None


def _grasp(model, shape, layout, blocks_a, blocks_b, budget, config: PruneConfig,
           resume: "_Resume", on_step: StepFn | None, init=None):
    settings, every = config.grasp, config.checkpoint_every
    state = resume.load()
    stages: dict[str, StageLog] = {}
    if state.get("gates_done") is not None:
        done = state["gates_done"]
        mask, stages["gates"] = done["mask"], StageLog(done["steps"], done["seconds"], done["losses"])
    else:
        mask, _, stages["gates"] = train_gates(
            model, shape, layout, blocks_a, budget, settings, config.seed,
            resume=state.get("current"), save=lambda s: resume.save(current=s),
            save_every=every, on_step=on_step, progress=config.progress, init=init)
        log = stages["gates"]
        resume.save(gates_done={"mask": mask, "steps": log.steps, "seconds": log.seconds,
                                "losses": log.losses}, current=None)
        state = resume.load()
    if config.stage_b_samples == 0:
        return mask, None, stages
    gates_done = state["gates_done"]
    scales, stages["scales"] = train_scales(
        model, shape, layout, mask, blocks_b, settings, config.seed,
        resume=state.get("current"),
        save=lambda s: resume.save(gates_done=gates_done, current=s),
        save_every=every, progress=config.progress)
    return mask, scales, stages


def _run_key(config: PruneConfig, fingerprint: str, calib: dict[str, Any]) -> str:
    """Identity of a run: a checkpoint only resumes the very same run."""
    ident = {"fp": fingerprint, "ratio": config.prune_ratio, "settings": _settings(config),
             "calib": calib, "seed": config.seed, "device": config.device}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class _Resume:
    """Gate checkpoints beside PLAN_DIR (``.NAME.resume.pt``); removed when the plan is written."""

    def __init__(self, out: Path, key: str) -> None:
        self.path = out.parent / f".{out.name}.resume.pt"
        self.key = key
        self._state: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        if not self._state and self.path.is_file():
            try:
                saved = torch.load(self.path, weights_only=False)
            except Exception:  # a torn checkpoint is simply not resumed
                saved = {}
            if saved.get("key") == self.key:
                self._state = saved
        return dict(self._state)

    def save(self, **parts: Any) -> None:
        self._state = {**self._state, **parts, "key": self.key}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self._state, tmp)
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
