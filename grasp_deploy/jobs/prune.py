"""The prune job: model + calibration data + budget -> PLAN_DIR/plan.json.

Everything that can be checked cheaply (ratio, sources, output path, context length, budget,
calibration length) is checked before the model's weights are loaded. The method itself is a
registry entry (``methods``); this module finds its inputs and writes what it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..core.align import resolve_align
from ..core.dtypes import dtype_name
from ..core.errors import GraspError
from ..core.fsutil import atomic_dir, check_target, write_json
from ..core.plan import PLAN_DIR, Plan, SourceModel, budget_report, layers_from_mask
from ..core.projection import UnitLayout, check_budget, keep_budget, kv_keep_budget
from ..core.versions import package_versions
from ..methods import MethodInput, MethodResult, PostInput, StageLog, get_method
from ..methods.base import StepFn
from ..sources import models, text
from ..sources.device import resolve_device, resolve_dtype
from ..sources.stream import LayerStream
from . import loading
from .calibration import Blocks, sampled_calibration, text_calibration
from .prune_config import PruneConfig, post_step_of
from .resume import ResumeStore, run_key

RUN_FILE = "run.json"
__all__ = ["PruneConfig", "PruneResult", "run_prune"]


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
    check_target(out, config.force, PLAN_DIR)
    calib = text.parse_source(config.calib) if config.uses_calibration else None
    source = models.resolve_source(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    hf_config = loading.load_config(source)  # fetches the default model once
    shape = loading.model_shape(hf_config)
    _check_context(config, hf_config)
    align = resolve_align(config.align_value, shape, device.type, config.width_multiple)
    settings = config.settings_record(align, device.type)
    layout = UnitLayout.from_shape(shape, align=align, tp=config.tp)
    budget = keep_budget(config.prune_ratio, layout.total_cost())
    check_budget(layout, budget)
    kv_budget = kv_keep_budget(config.kv_ratio, layout)
    tokenizer = models.load_tokenizer(source)
    want = Blocks(config.num_samples, config.held_out, config.seq_len, config.seed,
                  config.progress)
    calibration = text_calibration(want, calib, tokenizer)  # before the weights: fail early

    t0 = time.perf_counter()
    model, stream, fp, dense_params = _open(config, source, hf_config, dtype, device)
    times["load"] = time.perf_counter() - t0
    if calib is not None and calib.is_model_sampled:
        t0 = time.perf_counter()
        calibration = sampled_calibration(want, calib, model, tokenizer)
        times["sample"] = time.perf_counter() - t0

    store = ResumeStore(out, run_key({"fp": fp, "ratio": config.prune_ratio, "kv": config.kv_ratio,
                                      "settings": settings,
                                      "calib": calibration.description, "seed": config.seed,
                                      "device": str(device)}))
    t0 = time.perf_counter()
    result = get_method(config.method).run(MethodInput(
        model=model, shape=shape, layout=layout, budget=budget, prune_ratio=config.prune_ratio,
        blocks=calibration.stage_a, held_out=calibration.stage_b,
        settings=config.settings, seed=config.seed, progress=config.progress,
        store=store, save_every=config.checkpoint_every, on_step=on_step, layers=stream,
        kv_budget=kv_budget, kv_ratio=config.kv_ratio, fingerprint=fp))
    times["prune"] = time.perf_counter() - t0

    description = result.calibration or calibration.description
    # A local model is recorded by its absolute path, so export works from any directory.
    name = source.location if source.kind in ("local", "gguf") else source.spec
    make_plan = partial(_make_plan, config, settings, layout=layout, calibration=description,
                        source=SourceModel(name, fp, shape), dense_params=dense_params)
    plan = make_plan(result)
    if config.post_steps:
        post = PostInput(model, shape, layout, calibration.all_blocks(), make_plan, config.progress)
        plan = _post_steps(config, plan, post, times)
    times["total"] = time.perf_counter() - t_all
    _write(out, config, plan, result, {"seconds": times, "device": str(device),
                                       "dtype": dtype_name(dtype)})
    store.clear()
    return PruneResult(plan, out, times, result.stages)


def _check_context(config: PruneConfig, hf_config: Any) -> None:
    limit = getattr(hf_config, "max_position_embeddings", None)
    if config.uses_calibration and limit is not None and config.seq_len > limit:
        raise GraspError(f"--seq-len {config.seq_len} exceeds the model's context of {limit} "
                         "tokens; use a smaller --seq-len")


def _post_steps(config: PruneConfig, plan: Plan, post: PostInput,
                times: dict[str, float]) -> Plan:
    """The plan through each post-step in order (``--reconstruct``), each timed."""
    for settings in config.post_steps:
        t0 = time.perf_counter()
        step = post_step_of(settings)
        plan = step.run(settings, plan, post)
        times[step.name] = time.perf_counter() - t0
    return plan


def _open(config: PruneConfig, source, hf_config, dtype, device):
    """(model, stream, fingerprint, parameters): the whole model, or for a streaming method
    only its layer index (one layer is read at a time, never the whole model)."""
    if get_method(config.method).streams:
        stream = LayerStream(source, hf_config, dtype, device)
        return None, stream, stream.fingerprint(), stream.parameter_count()
    model = loading.load_model(source, dtype=dtype, device=device)
    return model, None, models.fingerprint(model), models.count_parameters(model)


def _make_plan(config: PruneConfig, settings: dict[str, Any], result: MethodResult,
               layout: UnitLayout, source: SourceModel, calibration: dict[str, Any],
               dense_params: int) -> Plan:
    layers, added = layers_from_mask(layout, result.mask, result.scales), 0
    if result.biases is not None:
        layers = tuple(replace(lp, o_bias=tuple(float(x) for x in b["o"]),
                               down_bias=tuple(float(x) for x in b["down"]))
                       for lp, b in zip(layers, result.biases, strict=True))
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
           run: dict[str, Any]) -> None:
    with atomic_dir(out, config.force, PLAN_DIR) as tmp:
        plan.save(tmp)
        for name, content in result.files.items():  # the method's own records
            write_json(tmp / name, content)
        write_json(tmp / RUN_FILE, {**run, "stages": {
            k: {"steps": v.steps, "seconds": v.seconds, "losses": v.losses}
            for k, v in result.stages.items()}})
