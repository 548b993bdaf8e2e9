"""The export job: a plan replayed on a freshly loaded source model, written as a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import format as fmt
from ..checkpoint import quant
from ..checkpoint.card import model_card
from ..checkpoint.read import expected_shapes, read_checkpoint, verify_checkpoint, weight_files
from ..checkpoint.write import copy_files, seal, write_checkpoint, write_weights
from ..core.dtypes import dtype_from_config, dtype_name
from ..core.errors import GraspError
from ..core.fsutil import DirKind, atomic_dir, check_target, sha256_file
from ..core.plan import load_plan
from ..core.shape import LayerShape, ModelShape
from ..core.slicing import materialize
from ..core.versions import package_versions
from ..sources import models, text
from ..sources.device import resolve_dtype
from . import loading
from .calibration import Blocks

CHECKPOINT_DIR = DirKind("checkpoint", fmt.MANIFEST)

_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
               "B": 1}


@dataclass(frozen=True)
class ExportConfig:
    plan_dir: Path
    out: Path
    model: str | None = None  # default: the plan's source model
    format: str = "safetensors"
    dtype: str = "source"  # "source" keeps the source checkpoint's dtype
    max_shard_size: str = "5GB"
    force: bool = False
    quantize: str | None = None  # checkpoint.quant.SCHEMES
    calib: str | None = None  # w4a16: round by GPTQ on this text (else to nearest)
    num_samples: int = 128  # GPTQ's calibration blocks
    seq_len: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in ("safetensors", "onnx"):
            raise GraspError(f"--format {self.format!r} is unknown; use safetensors or onnx")
        parse_size(self.max_shard_size)
        if self.quantize is not None:
            quant.check_scheme(self.quantize)
            if self.format == "onnx":
                raise GraspError("--quantize writes a compressed-tensors checkpoint for vLLM and "
                                 "transformers, not ONNX; drop --format onnx or --quantize")
        if self.calib is not None:
            if self.quantize != "w4a16":
                raise GraspError(f"--calib chooses w4a16's rounding (GPTQ); --quantize "
                                 f"{self.quantize} rounds to nearest and takes none: drop --calib")
            text.parse_source(self.calib, allow_self=False)
            if self.num_samples < 1 or self.seq_len < 2:
                raise GraspError(f"--num-samples {self.num_samples} / --seq-len {self.seq_len}: "
                                 "GPTQ needs at least one block of at least 2 tokens")


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    onnx: dict[str, Any] | None = None


def parse_size(text: str) -> int:
    t = text.strip().upper()
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            number = t[: -len(unit)].strip()
            break
    else:
        unit, number = "B", t
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):  # not a number, nan, inf
        value = 0
    if value <= 0:
        raise GraspError(f"--max-shard-size {text!r} is not a size; use e.g. 2GB or 500MB")
    return value


def _dtype(config: ExportConfig, source_config: Any) -> torch.dtype:
    if config.dtype != "source":
        return resolve_dtype(config.dtype)
    return dtype_from_config(getattr(source_config, "dtype", None)
                             or getattr(source_config, "torch_dtype", None))


def pruned_shape(plan: Any) -> ModelShape:
    """The shape of the checkpoint a plan exports to: its source's, with the kept widths."""
    return replace(plan.source.shape, layers=tuple(LayerShape(**w) for w in plan.widths()))


def _save_beside(directory: Path, tokenizer: Any, model: Any) -> None:
    """The tokenizer and the generation config, as the source model has them."""
    tokenizer.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)


def run_dense_export(config: ExportConfig) -> ExportResult:
    """The source model itself, quantized (``export MODEL --dense --quantize S``): the baseline
    a pruned model is measured against, through the same quantizer. A plain checkpoint of the
    source's architecture (vLLM's own model serves it) with a manifest of every file's sha256."""
    if not config.quantize:
        raise GraspError("--dense without --quantize would copy the model unchanged; "
                         "add --quantize int8, or serve the model as it is")
    check_target(Path(config.out), config.force, CHECKPOINT_DIR)
    source = models.resolve_source(config.model or str(config.plan_dir))
    source_config = loading.load_config(source)
    dtype = _dtype(config, source_config)
    tokenizer = models.load_tokenizer(source)
    model = loading.load_model(source, dtype=torch.float32 if config.calib else dtype,
                               device="cpu")
    identity = models.fingerprint(model)  # before GPTQ rounds the model's weights in place
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    quantized = _quantize(config, tensors, model, tokenizer)
    cfg = source_config.to_dict()
    for key in ("_name_or_path", "auto_map"):
        cfg.pop(key, None)
    cfg.update(dtype=dtype_name(dtype), quantization_config=quantized.config)
    with atomic_dir(Path(config.out), config.force, CHECKPOINT_DIR) as tmp:
        files = write_weights(quantized.tensors, tmp, parse_size(config.max_shard_size))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        _save_beside(tmp, tokenizer, model)
        params = models.count_parameters(model)
        manifest = seal(tmp, {
            "format": fmt.MANIFEST_FORMAT, "method": "none",
            "source": {"model": source.spec, "fingerprint": identity},
            "parameters": {"dense": params, "pruned": params, "reduction": 0.0},
            "quantization": quantized.record, "versions": package_versions(),
            "weights": {name: sha256_file(tmp / name) for name in files}})
    return ExportResult(Path(config.out), manifest)


def _quantize(config: ExportConfig, tensors: dict[str, torch.Tensor],
              model: torch.nn.Module | None, tokenizer: Any) -> quant.Quantized:
    """``tensors`` quantized as ``config`` asks: w4a16 with --calib rounds by GPTQ on ``model``
    (float32; its projections are left rounded), everything else to nearest."""
    assert config.quantize is not None
    if config.calib is None or model is None:
        return quant.quantize(tensors, config.quantize)
    from .gptq import calibration_blocks, gptq_rounding

    want = Blocks(config.num_samples, 0, config.seq_len, seed=0, progress=config.progress)
    blocks, description = calibration_blocks(config.calib, tokenizer, want)
    dtype = next(t.dtype for k, t in tensors.items() if quant.is_projection(k))
    rounded = gptq_rounding(model, blocks, dtype, config.progress)
    return quant.quantize(tensors, config.quantize, rounded, description)


def run_export(config: ExportConfig) -> ExportResult:
    check_target(Path(config.out), config.force, CHECKPOINT_DIR)
    if config.calib is not None:
        raise GraspError(f"--calib (GPTQ) rounds a model as it will be served: export the plan "
                         f"first, then `grasp-deploy export CKPT_DIR --quantize w4a16 --calib "
                         f"{config.calib}`")
    plan = load_plan(config.plan_dir)
    source = models.resolve_source(config.model or plan.source.name)
    source_config = loading.load_config(source)
    loading.check_plan_shape(plan, source_config, source.spec)
    if config.quantize == "w4a16":  # widths the 4-bit kernel refuses: before any weights load
        quant.group_size(expected_shapes(pruned_shape(plan)))
    dtype = _dtype(config, source_config)
    max_shard = parse_size(config.max_shard_size)
    tokenizer = models.load_tokenizer(source)
    # Slice from float32 weights so that folding the scales loses nothing before the cast.
    model = loading.load_model(source, dtype=torch.float32, device="cpu")
    loading.check_plan_matches(plan, model, source.spec)
    tensors = materialize(model, plan, dtype)
    bad = next((name for name, t in tensors.items() if not torch.isfinite(t).all()), None)
    if bad is not None:
        raise GraspError(f"{bad} has non-finite values after slicing (plan {config.plan_dir}); "
                         "re-run grasp-deploy prune")
    quantized = quant.quantize(tensors, config.quantize) if config.quantize else None
    with atomic_dir(Path(config.out), config.force, CHECKPOINT_DIR) as tmp:
        manifest = write_checkpoint(tmp, plan, source_config, tensors, dtype, max_shard,
                                    models.count_parameters(model), quantized)
        _save_beside(tmp, tokenizer, model)
        onnx_report = None
        if config.format == "onnx":
            from .onnx import export_onnx

            onnx_report = export_onnx(tmp)
            manifest["onnx"] = onnx_report
        manifest = seal(tmp, manifest)
    return ExportResult(Path(config.out), manifest, onnx_report)


def run_checkpoint_export(config: ExportConfig) -> ExportResult:
    """An exported checkpoint (a healed one, say) quantized as it stands
    (``export CKPT_DIR --quantize S``): its weights compressed, every other file copied, the
    manifest extended with the scheme."""
    from safetensors.torch import load_file

    source = Path(config.plan_dir)
    if not config.quantize:
        raise GraspError(f"{source} is a checkpoint already: export rewrites one only to "
                         "quantize it; add --quantize int8 or w4a16")
    if config.format != "safetensors" or config.dtype != "source":
        raise GraspError("a checkpoint is quantized in its own dtype, as safetensors; drop "
                         "--format and --dtype")
    check_target(Path(config.out), config.force, CHECKPOINT_DIR)
    info = read_checkpoint(source)
    manifest = info.manifest or {}
    if manifest.get("method") in (None, "none") or manifest.get("quantization"):
        raise GraspError(f"{source} is not an unquantized pruned checkpoint of grasp-deploy; "
                         "export a plan, or quantize the checkpoint it came from")
    verify_checkpoint(info)
    if config.quantize == "w4a16":  # widths the 4-bit kernel refuses: before any weights load
        quant.group_size(expected_shapes(info.shape))
    old_files = weight_files(source)
    tensors: dict[str, torch.Tensor] = {}
    for name in old_files:
        tensors.update(load_file(str(source / name)))
    model = tokenizer = None
    if config.calib is not None:  # GPTQ runs the checkpoint itself (its files verified above)
        as_source = models.resolve_source(str(source))
        model = loading.load_model(as_source, dtype=torch.float32, verify=False)
        tokenizer = models.load_tokenizer(as_source)
    quantized = _quantize(config, tensors, model, tokenizer)
    skip = {fmt.MANIFEST, fmt.INDEX_FILE, "config.json", fmt.CARD, *old_files}
    with atomic_dir(Path(config.out), config.force, CHECKPOINT_DIR) as tmp:
        copy_files(source, tmp, skip)
        files = write_weights(quantized.tensors, tmp, parse_size(config.max_shard_size))
        cfg = {**info.config, "quantization_config": quantized.config}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        new = {**manifest, "quantization": quantized.record,
               "weights": {name: sha256_file(tmp / name) for name in files}}
        (tmp / fmt.CARD).write_text(model_card(new))
        new = seal(tmp, new)
    return ExportResult(Path(config.out), new)
