"""The prune job: model + calibration data + budget -> PLAN_DIR/plan.json.

Everything that can be checked cheaply (ratio, sources, output path, context length, budget,
calibration length) is checked before the model's weights are loaded. The method itself is a
registry entry (``methods``); this module finds its inputs and writes what it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.align import AUTO, parse_align, resolve_align
from ..core.dtypes import dtype_name
from ..core.checks import check_number
from ..core.errors import GraspError
from ..core.fsutil import atomic_dir, check_target, write_json
from ..core.plan import Plan, SourceModel, budget_report, layers_from_mask
from ..core.projection import UnitLayout, check_budget, keep_budget, kv_keep_budget
from ..core.shape import ModelShape
from ..core.versions import package_versions
from ..methods import MethodInput, MethodResult, StageLog, get_method
from ..methods.base import StepFn
from ..methods.gisp import GispSettings
from ..methods.grasp import DEFAULT_RECIPE, GraspSettings
from ..methods.reconstruct import ModelLayers, ReconstructSettings, reconstruct_plan
from ..methods.structprune import StructPruneSettings, choose_and_refit, segment_counts
from ..sources import models, text
from ..sources.stream import LayerStream
from ..sources.device import resolve_device, resolve_dtype
from . import loading
from .calibration import Calibration, sampled_calibration, text_calibration
from .resume import ResumeStore, run_key
from .trajectory import TRAJECTORY_FILE, load_trajectory, trajectory_calibration, trajectory_record

RUN_FILE = "run.json"


@dataclass(frozen=True)
class PruneConfig:
    prune_ratio: float
    out: Path
    kv_ratio: float | None = None  # KV bytes per token at most this x dense; None: no KV budget
    model: str | None = None
    method: str = "grasp"
    calib: str = "wikitext2"
    num_samples: int = 512
    seq_len: int = 512
    grasp: GraspSettings = field(default_factory=GraspSettings)
    scale_samples: int | None = None  # stage-B blocks; default: num_samples
    align: int | str = AUTO  # FFN width multiple, or "auto" (core.align)
    tp: int = 1
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    force: bool = False
    checkpoint_every: int = 50
    progress: bool = True
    recipe: str | None = DEFAULT_RECIPE  # recorded in the plan; ``grasp`` holds its values
    gisp_step: float = 0.025  # GISP: prune-ratio increment per step
    gisp_blocks: int = 16  # GISP: calibration blocks per step's gradient
    from_trajectory: Path | None = None  # GISP: an earlier run's PLAN_DIR to take a nested plan from
    reconstruct: ReconstructSettings | None = None  # refit o_proj/down_proj layer by layer
    structprune: StructPruneSettings = field(default_factory=StructPruneSettings)

    def __post_init__(self) -> None:
        if not (isinstance(self.prune_ratio, (int, float)) and 0.0 < self.prune_ratio < 1.0):  # nan too
            raise GraspError(f"--prune-ratio {self.prune_ratio} is outside (0, 1); give the "
                             "fraction of prunable parameters to remove, e.g. 0.3")
        if self.kv_ratio is not None and not (isinstance(self.kv_ratio, (int, float))
                                              and 0.0 < self.kv_ratio <= 1.0):
            raise GraspError(f"--kv-ratio {self.kv_ratio} is outside (0, 1]; give the fraction "
                             "of the dense model's KV-cache bytes per token to keep, e.g. 0.5")
        get_method(self.method)
        object.__setattr__(self, "align", parse_align(self.align))  # "64" -> 64, "AUTO" -> "auto"
        for flag, value in (("--num-samples", self.num_samples), ("--seq-len", self.seq_len),
                            ("--tp", self.tp)):
            if value < 1:
                raise GraspError(f"{flag} {value} must be a positive integer")
        if self.seq_len < 2:
            raise GraspError(f"--seq-len {self.seq_len} is too short; use at least 2")
        if self.scale_samples is not None:
            check_number("--scale-samples", self.scale_samples, low=0, integer=True)
        check_number("--checkpoint-every", self.checkpoint_every, low=0, integer=True)
        check_number("--seed", self.seed, integer=True)
        GispSettings(self.gisp_step, self.gisp_blocks)
        if self.from_trajectory is not None and self.method != "gisp":
            raise GraspError("--from-trajectory only applies to --method gisp")
        if self.reconstruct is not None:
            check_number("--reconstruct-ridge", self.reconstruct.ridge, low=0, low_open=True)
            if self.method == "structprune":  # its pass 2 ends with this refit anyway
                object.__setattr__(self, "structprune",
                                   replace(self.structprune, ridge=self.reconstruct.ridge))
                object.__setattr__(self, "reconstruct", None)
        if self.method == "structprune":
            self.structprune.check()
            if self.calib == "self":
                raise GraspError("--calib self samples text from the whole model, which "
                                 "--method structprune never loads; give a text source "
                                 "(file:PATH or wikitext2)")
            if self.from_trajectory is not None:
                raise GraspError("--reconstruct needs calibration blocks; --from-trajectory takes "
                                 "a plan without them: drop one of the two")

    @property
    def uses_calibration(self) -> bool:
        return ((get_method(self.method).uses_calibration or self.reconstruct is not None)
                and self.from_trajectory is None)

    @property
    def stage_b_samples(self) -> int:
        if self.method != "grasp" or self.grasp.scale_epochs == 0:
            return 0
        return self.num_samples if self.scale_samples is None else self.scale_samples

    def settings_record(self, align: int, device_type: str) -> dict[str, Any]:
        """What the plan records of the settings (the same keys in the same order, always);
        ``align`` is the FFN multiple used: ``self.align`` resolved for the model and device."""
        rule = f"auto ({device_type})" if self.align == AUTO else "given"
        settings: dict[str, Any] = {"align": align, "align_rule": rule, "tp": self.tp}
        if self.uses_calibration:
            settings.update(num_samples=self.num_samples, seq_len=self.seq_len, dtype=self.dtype)
        if self.method == "grasp":
            settings.update(self.grasp.to_json(), recipe=self.recipe,
                            scale_samples=self.stage_b_samples)
        if self.method == "gisp":
            settings.update(gisp_step=self.gisp_step, gisp_blocks=self.gisp_blocks)
        if self.method == "structprune":
            settings.update(structprune=self.structprune.to_json())
        if self.reconstruct is not None:
            settings.update(reconstruct=self.reconstruct.to_json())
        return settings


@dataclass
class PruneResult:
    plan: Plan
    plan_dir: Path
    seconds: dict[str, float]
    stages: dict[str, StageLog]


def run_prune(config: PruneConfig, on_step: StepFn | None = None) -> PruneResult:
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    out = Path(config.out)
    check_target(out, config.force, flag="--out")
    calib = text.parse_source(config.calib) if config.uses_calibration else None
    source = models.resolve_source(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    hf_config = loading.load_config(source)  # fetches the default model once
    shape = loading.model_shape(hf_config)
    limit = getattr(hf_config, "max_position_embeddings", None)
    if config.uses_calibration and limit is not None and config.seq_len > limit:
        raise GraspError(f"--seq-len {config.seq_len} exceeds the model's context of {limit} "
                         "tokens; use a smaller --seq-len")
    align = resolve_align(config.align, shape, device.type)
    settings = config.settings_record(align, device.type)
    layout = UnitLayout.from_shape(shape, align=align, tp=config.tp)
    budget = keep_budget(config.prune_ratio, layout.total_cost())
    check_budget(layout, budget)
    kv_budget = kv_keep_budget(config.kv_ratio, layout)
    tokenizer = models.load_tokenizer(source)
    calibration = text_calibration(config, calib, tokenizer)  # before the weights: fail early

    t0 = time.perf_counter()
    model, stream, fp, dense_params = _open(config, source, hf_config, dtype, device)
    times["load"] = time.perf_counter() - t0
    if calib is not None and calib.is_model_sampled:
        t0 = time.perf_counter()
        calibration = sampled_calibration(config, calib, model, tokenizer)
        times["sample"] = time.perf_counter() - t0

    store = ResumeStore(out, run_key({"fp": fp, "ratio": config.prune_ratio, "kv": config.kv_ratio,
                                      "settings": settings,
                                      "calib": calibration.description, "seed": config.seed,
                                      "device": str(device)}))
    t0 = time.perf_counter()
    result = get_method(config.method).run(MethodInput(
        model=model, shape=shape, layout=layout, budget=budget, prune_ratio=config.prune_ratio,
        blocks=calibration.stage_a, held_out=calibration.stage_b,
        settings=_method_settings(config, fp), seed=config.seed, progress=config.progress,
        store=store, save_every=config.checkpoint_every, on_step=on_step, layers=stream,
        kv_budget=kv_budget))
    times["prune"] = time.perf_counter() - t0

    description = calibration.description
    if config.from_trajectory is not None:
        description = trajectory_calibration(Path(config.from_trajectory))
    # A local model is recorded by its absolute path, so export works from any directory.
    name = source.location if source.kind == "local" else source.spec
    make_plan = partial(_make_plan, config, settings, layout=layout, calibration=description,
                        source=SourceModel(name, fp, shape), dense_params=dense_params)
    plan = _planned(result, shape, layout, model, calibration, config, times, make_plan)
    times["total"] = time.perf_counter() - t_all
    _write(out, config, plan, result, {"seconds": times, "device": str(device),
                                       "dtype": dtype_name(dtype)}, fp)
    store.clear()
    return PruneResult(plan, out, times, result.stages)


def _open(config: PruneConfig, source, hf_config, dtype, device):
    """(model, stream, fingerprint, parameters): the whole model, or for a streaming method
    only its layer index (one layer is read at a time, never the whole model)."""
    if get_method(config.method).streams:
        stream = LayerStream(source, hf_config, dtype, device)
        return None, stream, stream.fingerprint(), stream.parameter_count()
    model = loading.load_model(source, dtype=dtype, device=device)
    return model, None, models.fingerprint(model), models.count_parameters(model)


def _planned(result: MethodResult, shape: ModelShape, layout: UnitLayout, model,
             calibration: Calibration, config: PruneConfig, times: dict[str, float],
             make_plan: Callable[[MethodResult], Plan]) -> Plan:
    """The method's plan; with --reconstruct, with o_proj/down_proj refitted on every
    calibration block the run has (GRASPrune's stage-B blocks too: 32 blocks gave -8.5%
    perplexity at 0.5 on the default model, 64 gave -16.8%,
    bench/results/reconstruct-smollm2-r50). With --reselect, the plan's per-layer counts with
    the units chosen anew by StructPrune's pass 2 (ADMM on each layer's reconstruction
    objective) before the same kind of refit."""
    if config.reconstruct is None:
        return make_plan(result)
    t0 = time.perf_counter()
    blocks = calibration.stage_a
    if calibration.stage_b is not None and len(calibration.stage_b):
        blocks = torch.cat([blocks, calibration.stage_b])
    if config.reconstruct.reselect:
        chosen = choose_and_refit(
            ModelLayers(model), shape, layout, segment_counts(layout, result.mask),
            blocks, StructPruneSettings(ridge=config.reconstruct.ridge,
                                        skip=config.reconstruct.reselect_skip), config.progress)
        plan = make_plan(chosen)
    else:
        plan = reconstruct_plan(make_plan(result), model, blocks, config.reconstruct,
                                progress=config.progress)
    times["reconstruct"] = time.perf_counter() - t0
    return plan


def _method_settings(config: PruneConfig, fingerprint: str) -> Any:
    if config.method == "grasp":
        return config.grasp
    if config.method == "structprune":
        return config.structprune
    if config.method == "gisp":
        steps = None
        if config.from_trajectory is not None:
            steps = tuple(load_trajectory(Path(config.from_trajectory), fingerprint,
                                          config.kv_ratio))
        return GispSettings(config.gisp_step, config.gisp_blocks, steps)
    return None


def _make_plan(config: PruneConfig, settings: dict[str, Any], result: MethodResult,
               layout: UnitLayout, source: SourceModel, calibration: dict[str, Any],
               dense_params: int) -> Plan:
    layers, added = layers_from_mask(layout, result.mask, result.scales), 0
    if result.biases is not None:
        layers = tuple(replace(lp, o_bias=tuple(float(x) for x in b["o"]),
                               down_bias=tuple(float(x) for x in b["down"]))
                       for lp, b in zip(layers, result.biases))
        # Biases the architecture lacks are new parameters (a hidden-size vector per layer).
        shape = source.shape
        added = shape.hidden_size * len(result.biases) * (int(not shape.o_proj_bias)
                                                           + int(not shape.mlp_bias))
    plan = Plan(method=config.method, settings=settings, source=source,
                budget=budget_report(layout, result.mask, config.prune_ratio, dense_params, added,
                                     config.kv_ratio),
                layers=layers, calibration=calibration, seed=config.seed,
                versions=package_versions())
    if result.replaced is not None:  # the method refitted weights itself (structprune)
        plan = plan.with_reconstruction(result.replaced, result.reconstruction or {})
    return plan


def _write(out: Path, config: PruneConfig, plan: Plan, result: MethodResult,
           run: dict[str, Any], fingerprint: str) -> None:
    with atomic_dir(out, config.force) as tmp:
        plan.save(tmp)
        if result.trajectory is not None:
            write_json(tmp / TRAJECTORY_FILE, trajectory_record(
                config.gisp_step, fingerprint, config.kv_ratio, result.trajectory))
        write_json(tmp / RUN_FILE, {**run, "stages": {
            k: {"steps": v.steps, "seconds": v.seconds, "losses": v.losses}
            for k, v in result.stages.items()}})
