"""The plan: the only thing that passes from pruning to export.

A small, frozen, JSON-serialisable record of which units each layer keeps and their stage-B
scales, with the budget, the method and where it came from. Any method that writes a plan is
exported, served and benchmarked the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import GraspError
from .fsutil import DirKind
from .masking import Multipliers
from .projection import UnitLayout
from .shape import FFN, KV, ModelShape
from .spill import serialized, sha256_of

PLAN_FILE = "plan.json"
PLAN_FORMAT = 1
RECONSTRUCTION_FILE = "reconstruction.safetensors"  # refitted o_proj/down_proj, beside plan.json
PLAN_DIR = DirKind("plan", PLAN_FILE)


@dataclass(frozen=True)
class LayerPlan:
    ffn_keep: tuple[int, ...]  # kept FFN channel ids, ascending
    kv_keep: tuple[int, ...]  # kept KV group ids, ascending
    ffn_scale: tuple[float, ...] | None = None  # stage-B gamma per kept channel
    kv_scale: tuple[float, ...] | None = None  # stage-B gamma per kept KV group
    # Compensation biases (FLAP): added to o_proj / down_proj outputs; length hidden_size.
    o_bias: tuple[float, ...] | None = None
    down_bias: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("ffn_keep", "kv_keep"):
            ids = getattr(self, name)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"{name} holds a value that is not an integer unit id")
        for name in ("ffn_scale", "kv_scale", "o_bias", "down_bias"):
            values = getattr(self, name)
            if values is not None and not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in values):
                raise ValueError(f"{name} holds a value that is not a finite number")


@dataclass(frozen=True)
class BudgetReport:
    prune_ratio: float  # asked: the fraction of prunable parameters to remove
    prunable_dense: int
    prunable_kept: int
    model_dense: int  # every parameter of the model (tied weights once)
    model_pruned: int  # including any compensation biases a method adds
    added: int = 0  # compensation bias parameters added (FLAP); not part of the prunable budget
    kv_ratio: float | None = None  # asked (--kv-ratio): KV bytes per token at most this x dense
    kv_heads_dense: int = 0  # KV heads of all layers (0 in plans written before KV budgets)
    kv_heads_kept: int = 0

    @property
    def achieved_ratio(self) -> float:
        return 1.0 - self.prunable_kept / self.prunable_dense

    @property
    def kv_achieved(self) -> float | None:
        """KV bytes per token kept, as a fraction of the dense model's (what --kv-ratio bounds)."""
        return self.kv_heads_kept / self.kv_heads_dense if self.kv_heads_dense else None

    @property
    def model_reduction(self) -> float:
        return 1.0 - self.model_pruned / self.model_dense


@dataclass(frozen=True)
class SourceModel:
    name: str  # as the user named it (path, hub id or default name)
    fingerprint: str  # see models.fingerprint
    shape: ModelShape


@dataclass(frozen=True)
class Plan:
    method: str
    settings: dict[str, Any]
    source: SourceModel
    budget: BudgetReport
    layers: tuple[LayerPlan, ...]
    calibration: dict[str, Any]
    seed: int
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = PLAN_FORMAT
    # Layer-wise reconstruction: what was done (settings, file, sha256) and, in memory, the
    # refitted weights in their sliced shapes (model.layers.i.self_attn.o_proj.weight, ...).
    reconstruction: dict[str, Any] | None = None
    replaced: Mapping[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        shape = self.source.shape
        if not 0.0 < self.budget.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio {self.budget.prune_ratio} is outside (0, 1)")
        kv = self.budget.kv_ratio
        if kv is not None and not (isinstance(kv, (int, float)) and 0.0 < kv <= 1.0):
            raise ValueError(f"kv_ratio {kv} is outside (0, 1]")
        if not isinstance(self.seed, int) or not isinstance(self.settings, dict):
            raise ValueError("seed must be an integer and settings an object")
        if len(self.layers) != shape.num_layers:
            raise ValueError(f"plan has {len(self.layers)} layers, model {shape.num_layers}")
        for i, (lp, ls) in enumerate(zip(self.layers, shape.layers, strict=True)):
            for name, ids, size, scale in (
                (FFN, lp.ffn_keep, ls.intermediate_size, lp.ffn_scale),
                (KV, lp.kv_keep, ls.num_key_value_heads, lp.kv_scale),
            ):
                if not ids or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= size:
                    raise ValueError(f"layer {i} {name} ids must be ascending, unique, "
                                     f"non-empty and < {size}")
                if scale is not None and len(scale) != len(ids):
                    raise ValueError(f"layer {i} {name} has {len(scale)} scales for "
                                     f"{len(ids)} kept units")
            for name, bias in (("o_bias", lp.o_bias), ("down_bias", lp.down_bias)):
                if bias is not None and len(bias) != shape.hidden_size:
                    raise ValueError(f"layer {i} {name} has {len(bias)} entries, "
                                     f"not hidden_size {shape.hidden_size}")

        if self.replaced is not None:
            self._check_replaced()

    def _check_replaced(self) -> None:
        shape, d = self.source.shape, self.source.shape.hidden_size
        replaced = self.replaced or {}
        for i, lp in enumerate(self.layers):
            for key, inputs in ((f"model.layers.{i}.self_attn.o_proj.weight",
                                 len(lp.kv_keep) * shape.group_size * shape.head_dim),
                                (f"model.layers.{i}.mlp.down_proj.weight", len(lp.ffn_keep))):
                t = replaced.get(key)
                if t is None or tuple(t.shape) != (d, inputs):
                    raise ValueError(f"reconstructed {key} is "
                                     f"{'missing' if t is None else tuple(t.shape)}, "
                                     f"expected {(d, inputs)}")

    # -- derived ----------------------------------------------------------------------
    def widths(self) -> list[dict[str, int]]:
        return [{"intermediate_size": len(lp.ffn_keep), "num_key_value_heads": len(lp.kv_keep)}
                for lp in self.layers]

    @property
    def has_biases(self) -> dict[str, bool]:
        return {"o_proj": any(layer.o_bias is not None for layer in self.layers),
                "down_proj": any(layer.down_bias is not None for layer in self.layers)}

    def multipliers(self, with_scales: bool = True) -> Multipliers:
        """0 for removed units, the stage-B scale (or 1) for kept ones; compensation biases."""
        mult = Multipliers.empty(len(self.layers))
        for i, (lp, ls) in enumerate(zip(self.layers, self.source.shape.layers, strict=True)):
            for name, bias in (("o_bias", lp.o_bias), ("down_bias", lp.down_bias)):
                if bias is not None:
                    getattr(mult, name)[i] = torch.tensor(bias, dtype=torch.float32)
            for kind, ids, size, scale in (
                (FFN, lp.ffn_keep, ls.intermediate_size, lp.ffn_scale),
                (KV, lp.kv_keep, ls.num_key_value_heads, lp.kv_scale),
            ):
                m = torch.zeros(size, dtype=torch.float32)
                m[list(ids)] = torch.tensor(scale, dtype=torch.float32) if (
                    with_scales and scale is not None) else 1.0
                (mult.ffn if kind == FFN else mult.kv)[i] = m
            if self.replaced is not None:
                pre = f"model.layers.{i}."
                mult.o_weight[i] = (self.query_columns(i),
                                    self.replaced[pre + "self_attn.o_proj.weight"])
                mult.down_weight[i] = (torch.tensor(lp.ffn_keep, dtype=torch.long),
                                       self.replaced[pre + "mlp.down_proj.weight"])
        return mult

    def query_columns(self, layer: int) -> torch.Tensor:
        """Input ids of ``o_proj`` that the kept KV groups' query heads own."""
        shape = self.source.shape
        width = shape.group_size * shape.head_dim
        kv = torch.tensor(self.layers[layer].kv_keep, dtype=torch.long)
        return (kv[:, None] * width + torch.arange(width)).reshape(-1)

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, replaced=None))
        data.pop("replaced")
        if self.reconstruction is None:
            data.pop("reconstruction")  # plans without it read as before
        data["budget"].update(achieved_ratio=self.budget.achieved_ratio,
                              model_reduction=self.budget.model_reduction,
                              kv_achieved=self.budget.kv_achieved)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise GraspError(f"a plan is a JSON object, not a {type(data).__name__}; pass the "
                             "plan.json written by grasp-deploy prune")
        if data.get("format_version") != PLAN_FORMAT:
            raise GraspError(f"plan format {data.get('format_version')!r} is not supported "
                             f"(expected {PLAN_FORMAT}); re-run grasp-deploy prune")
        src = data["source"]
        budget = {k: v for k, v in data["budget"].items()
                  if k not in ("achieved_ratio", "model_reduction", "kv_achieved")}

        def tup(x):
            return None if x is None else tuple(x)

        layers = tuple(LayerPlan(tuple(layer["ffn_keep"]), tuple(layer["kv_keep"]),
                                 tup(layer.get("ffn_scale")), tup(layer.get("kv_scale")),
                                 tup(layer.get("o_bias")), tup(layer.get("down_bias")))
                       for layer in data["layers"])
        return cls(
            method=data["method"], settings=data["settings"],
            source=SourceModel(src["name"], src["fingerprint"], ModelShape.from_json(src["shape"])),
            budget=BudgetReport(**budget), layers=layers, calibration=data["calibration"],
            seed=data["seed"], versions=data.get("versions", {}),
            format_version=data["format_version"], reconstruction=data.get("reconstruction"),
        )

    def with_reconstruction(self, weights: Mapping[str, torch.Tensor],
                            info: dict[str, Any]) -> Plan:
        """This plan with refitted weights; the FFN stage-B scales are absorbed by them. A
        plain dict is taken into memory as float32; any other mapping (``SpilledTensors``)
        is read one tensor at a time, here and when saved."""
        if isinstance(weights, dict):
            weights = {k: v.detach().float().contiguous() for k, v in weights.items()}
        record = {**info, "file": RECONSTRUCTION_FILE, "sha256": sha256_of(serialized(weights))}
        layers = tuple(replace(lp, ffn_scale=None) for lp in self.layers)
        return replace(self, layers=layers, reconstruction=record, replaced=weights)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / PLAN_FILE
        if self.replaced is not None:
            target = Path(directory) / RECONSTRUCTION_FILE
            with target.open("wb") as f:
                digest = sha256_of(serialized(self.replaced), sink=f.write)
            if digest != (self.reconstruction or {}).get("sha256"):
                raise GraspError("the reconstructed weights changed after they were recorded")
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def load_plan(directory: str | Path) -> Plan:
    path = Path(directory)
    path = path / PLAN_FILE if path.is_dir() else path
    if not path.is_file():
        raise GraspError(f"no plan at {path}: pass the PLAN_DIR written by 'grasp-deploy prune'")
    try:
        plan = Plan.from_json(json.loads(path.read_text()))
        if plan.reconstruction is not None:
            plan = replace(plan, replaced=_load_reconstruction(path.parent, plan.reconstruction))
        return plan
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
            AttributeError) as err:
        raise GraspError(f"plan {path} is malformed ({err}); re-run grasp-deploy prune") from err


def _load_reconstruction(directory: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    path = directory / record["file"]
    if not path.is_file():
        raise GraspError(f"plan {directory} was reconstructed but {path.name} is missing; "
                         "copy the whole PLAN_DIR or re-run grasp-deploy prune --reconstruct")
    data = path.read_bytes()
    if sha256_of([data]) != record["sha256"]:
        raise GraspError(f"{path} does not match the sha256 in plan.json (corrupted or edited); "
                         "re-run grasp-deploy prune --reconstruct")
    return load(data)


def layers_from_mask(layout: UnitLayout, mask: np.ndarray,
                     scales: np.ndarray | None = None) -> tuple[LayerPlan, ...]:
    """Turn a flat keep-mask (and optional flat per-unit scales) into per-layer plans."""
    mask = np.asarray(mask, dtype=bool)
    per_layer: dict[int, dict[str, Any]] = {}
    for seg in layout.segments:
        local = mask[seg.start:seg.stop]
        ids = tuple(int(i) for i in np.flatnonzero(local))
        scale = None
        if scales is not None:
            scale = tuple(float(x) for x in np.asarray(scales[seg.start:seg.stop])[local])
        per_layer.setdefault(seg.layer, {})[seg.kind] = (ids, scale)
    return tuple(LayerPlan(d[FFN][0], d[KV][0], d[FFN][1], d[KV][1])
                 for _, d in sorted(per_layer.items()))


def budget_report(layout: UnitLayout, mask: np.ndarray, prune_ratio: float,
                  model_dense: int, added: int = 0, kv_ratio: float | None = None) -> BudgetReport:
    dense, kept = layout.total_cost(), layout.kept_cost(mask)
    return BudgetReport(prune_ratio, dense, kept, model_dense, model_dense - (dense - kept) + added,
                        added, kv_ratio, layout.kv_heads(), layout.kept_kv_heads(mask))
