"""Writing a checkpoint directory: config.json, weights (sharded with an index), remote code,
manifest and model card. The caller owns the (temporary, atomic) directory."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from ..core.dtypes import dtype_name
from ..core.fsutil import sha256_file
from ..core.plan import Plan
from ..core.versions import package_versions
from . import format as fmt
from .card import model_card
from .quant import Quantized

HF_DIR = Path(__file__).with_name("hf")


def pruned_config(source_config: Any, plan: Plan, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the checkpoint: the source's fields, per-layer patches, auto_map, and the
    transformers version that wrote it (without one, transformers takes a local tokenizer for a
    pre-5.0 Mistral one and warns of an "incorrect regex pattern" on every load)."""
    import transformers

    cfg = source_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "auto_map", "transformers_version"):
        cfg.pop(key, None)
    shape = plan.source.shape
    kind = fmt.kind_of(shape.model_type)
    cfg.update(
        architectures=[kind.architecture], model_type=kind.model_type, auto_map=kind.auto_map,
        head_dim=shape.head_dim, dtype=dtype_name(dtype),
        transformers_version=transformers.__version__,
        **{fmt.PER_LAYER_FIELD: {str(i): w for i, w in enumerate(plan.widths())}},
        **{fmt.GROUP_SIZE_FIELD: shape.group_size},
    )
    # Projections that gain a bias the source architecture lacks (GraspLlamaConfig fields).
    has = plan.has_biases
    cfg.update({fmt.BIAS_FIELDS["o_proj"]: has["o_proj"] and not shape.o_proj_bias,
                fmt.BIAS_FIELDS["down_proj"]: has["down_proj"] and not shape.mlp_bias})
    return cfg


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def write_weights(
    tensors: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int
) -> list[str]:
    """Write safetensors (sharded with an index above ``max_shard_bytes``); return file names."""
    from safetensors.torch import save_file

    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(directory / fmt.SINGLE_FILE), metadata={"format": "pt"})
        return [fmt.SINGLE_FILE]
    names, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        name = fmt.weight_file_name(k, len(shards))
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({t: name for t in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / fmt.INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


def write_checkpoint(
    directory: Path,
    plan: Plan,
    source_config: Any,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    max_shard_bytes: int,
    dense_params: int,
    quantized: Quantized | None = None,
) -> dict[str, Any]:
    """Weights, config, remote code and model card; returns the manifest, which ``seal``
    writes once every other file (tokenizer, generation config, ONNX) is in place. With
    ``quantized``, its tensors are written instead of ``tensors`` (which still give the
    parameter count) and its configuration goes into config.json and the manifest."""
    files = write_weights(quantized.tensors if quantized else tensors, directory,
                          max_shard_bytes)
    cfg = pruned_config(source_config, plan, dtype)
    if quantized:
        cfg["quantization_config"] = quantized.config
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for name in fmt.kind_of(plan.source.shape.model_type).remote_code:
        shutil.copyfile(HF_DIR / name, directory / name)
    manifest = build_manifest(plan, tensors, files, directory, dtype, dense_params)
    if quantized:
        manifest["quantization"] = quantized.record
    (directory / fmt.CARD).write_text(model_card(manifest))
    return manifest


def rewrite_weights(source: Path, target: Path, updated: dict[str, torch.Tensor],
                    files: list[str]) -> None:
    """Every file of the checkpoint ``source`` copied into ``target`` (the manifest aside,
    which the caller writes), its weight ``files`` rewritten with the tensors of ``updated`` in
    place of theirs: same names, shapes, dtypes and shards, so the index stays true."""
    from safetensors.torch import load_file, save_file

    copy_files(source, target, skip={fmt.MANIFEST, *files})
    for file in files:
        tensors = load_file(str(source / file))
        for name, old in tensors.items():
            if name in updated:
                new = updated[name]
                if tuple(new.shape) != tuple(old.shape):
                    raise ValueError(f"{name}: shape {tuple(new.shape)} != {tuple(old.shape)}")
                tensors[name] = new.detach().to(old.dtype).contiguous()
        save_file(tensors, str(target / file), metadata={"format": "pt"})


def copy_files(source: Path, target: Path, skip: set[str]) -> None:
    """Every file of the checkpoint ``source`` into ``target``, but those named in ``skip``
    (paths relative to ``source``)."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and rel.as_posix() not in skip:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / rel)


def seal(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every file of the checkpoint (code, config, tokenizer, weights,
    index, card) in the manifest and write it: verification covers all of them."""
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != fmt.MANIFEST)
    manifest = {**manifest, "files": {name: sha256_file(directory / name) for name in files}}
    (directory / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def alignment_record(settings: dict[str, Any], widths: list[dict[str, int]]) -> dict[str, Any]:
    """The FFN multiple asked for (and how: ``auto`` or given) and what the widths achieve."""
    return {"ffn_multiple": settings.get("align", 1), "rule": settings.get("align_rule", "given"),
            "kv_multiple": settings.get("tp", 1),
            "ffn_widths_gcd": math.gcd(*(w["intermediate_size"] for w in widths))}


def build_manifest(plan: Plan, tensors: dict[str, torch.Tensor], files: list[str], directory: Path,
                   dtype: torch.dtype, dense_params: int) -> dict[str, Any]:
    shape = plan.source.shape
    widths = plan.widths()
    pruned_params = sum(t.numel() for t in tensors.values())
    nbytes = dtype.itemsize
    return {
        "format": fmt.MANIFEST_FORMAT,
        "source": {"model": plan.source.name, "fingerprint": plan.source.fingerprint},
        "method": plan.method, "settings": plan.settings,
        "budget": plan.to_json()["budget"],
        "parameters": {"dense": dense_params, "pruned": pruned_params,
                       "reduction": 1 - pruned_params / dense_params},
        "kv_cache_bytes_per_token": {
            "dtype": dtype_name(dtype),
            "dense": shape.kv_bytes_per_token(dtype_bytes=nbytes),
            "pruned": shape.kv_bytes_per_token([w["num_key_value_heads"] for w in widths], nbytes)},
        "layers": widths,
        "alignment": alignment_record(plan.settings, widths),
        "dense_layer": {"intermediate_size": shape.layers[0].intermediate_size,
                        "num_key_value_heads": shape.layers[0].num_key_value_heads,
                        fmt.GROUP_SIZE_FIELD: shape.group_size},
        "calibration": plan.calibration, "seed": plan.seed,
        "versions": package_versions(),
        "weights": {name: sha256_file(directory / name) for name in files},
    }
