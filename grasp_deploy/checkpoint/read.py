"""Reading a checkpoint directory: its config and manifest, verification, the inspect report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.dtypes import DTYPES
from ..core.errors import GraspError
from ..core.fsutil import sha256_file
from ..core.shape import ModelShape
from . import format as fmt
from . import quant


@dataclass(frozen=True)
class CheckpointInfo:
    directory: Path
    config: dict[str, Any]  # config.json as written
    manifest: dict[str, Any] | None
    shape: ModelShape


def shape_of(config: Any) -> ModelShape:
    """The shape of a pruned checkpoint's config (per-layer widths) or of a dense config."""
    if fmt.is_pruned_config(config):
        return ModelShape.from_config(
            config, group_size=getattr(config, fmt.GROUP_SIZE_FIELD, 0) or 0
        )
    return ModelShape.from_config(config)


def read_checkpoint(directory: Path) -> CheckpointInfo:
    from transformers import AutoConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise GraspError(f"{directory} has no config.json: not a checkpoint directory")
    try:
        raw = json.loads((directory / "config.json").read_text())
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise GraspError(f"cannot read {directory}/config.json: {err}") from err
    manifest = None
    if (directory / fmt.MANIFEST).is_file():
        manifest = _json_object(directory / fmt.MANIFEST)
    return CheckpointInfo(directory, raw, manifest, shape_of(config))


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GraspError(f"{path} is not valid JSON ({err}); re-export the checkpoint") from err
    if not isinstance(data, dict):
        raise GraspError(f"{path} holds a JSON {type(data).__name__}, not an object; "
                         "re-export the checkpoint")
    return data


def weight_files(directory: Path) -> list[str]:
    """The weight files, by name; an index may only name plain files inside ``directory``."""
    index = directory / fmt.INDEX_FILE
    if not index.is_file():
        return [fmt.SINGLE_FILE] if (directory / fmt.SINGLE_FILE).is_file() else []
    weight_map = _json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise GraspError(
            f"{index} has no weight_map of tensor -> file names; re-export the checkpoint"
        )
    for name in weight_map.values():
        if Path(name).name != name or name in ("", ".", ".."):
            raise GraspError(f"{index} points at {name!r}, outside the checkpoint directory; "
                             "refusing to load it")
    return sorted(set(weight_map.values()))


def expected_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Projection weight shapes each layer must have, from the config alone."""
    d, h, g = shape.hidden_size, shape.head_dim, shape.group_size
    want: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(shape.layers):
        kv, ffn, pre = layer.num_key_value_heads, layer.intermediate_size, f"model.layers.{i}."
        want.update({
            pre + "self_attn.q_proj.weight": (kv * g * h, d),
            pre + "self_attn.k_proj.weight": (kv * h, d),
            pre + "self_attn.v_proj.weight": (kv * h, d),
            pre + "self_attn.o_proj.weight": (d, kv * g * h),
            pre + "mlp.gate_proj.weight": (ffn, d),
            pre + "mlp.up_proj.weight": (ffn, d),
            pre + "mlp.down_proj.weight": (d, ffn),
        })
    return want


def verify_checkpoint(info: CheckpointInfo, hashes: bool = True) -> dict[str, Any]:
    """Check every file against the manifest (sha256; nothing missing, nothing added) and the
    weights against the config (shapes). ``hashes=False`` (``--no-verify``) checks shapes only.

    Returns {"files": weight files, "parameters": count, "verified": bool}. Raises GraspError
    on the first problem.
    """
    directory = info.directory
    if hashes:
        check_files(directory, info.manifest)
    files = weight_files(directory)
    if not files:
        raise GraspError(f"{directory} has no safetensors weights")
    want_shapes, count = expected_shapes(info.shape), 0
    for name in files:
        count += _check_shapes(directory / name, want_shapes)
    return {"files": len(files), "parameters": count, "verified": hashes}


def check_files(directory: Path, manifest: dict[str, Any] | None) -> None:
    """Every file of the checkpoint has the sha256 its manifest records, and no file was added."""
    if manifest is None:
        raise GraspError(f"{directory} has no {fmt.MANIFEST}, so its files (code included) cannot "
                         "be verified; re-export it, or pass --no-verify if you trust it")
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        raise GraspError(f"{directory}/{fmt.MANIFEST} records no sha256 for its code and config "
                         "(an older grasp-deploy wrote it); re-export it, or pass --no-verify")
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*")
               if (p.is_file() or p.is_symlink()) and p.name != fmt.MANIFEST}
    added = sorted(present - set(recorded))
    if added:
        raise GraspError(f"{directory}/{added[0]} is not listed in {fmt.MANIFEST} (added after "
                         "export); remove it or re-export the checkpoint")
    for name, want in sorted(recorded.items()):
        path = directory / name
        if name not in present or path.is_symlink():
            raise GraspError(f"{path} is missing (or a link) but listed in {fmt.MANIFEST}; "
                             "re-export the checkpoint")
        if sha256_file(path) != want:
            raise GraspError(f"{path} was modified or corrupted: its sha256 differs from "
                             f"{fmt.MANIFEST}; re-export the checkpoint")


def needs_verification(info: CheckpointInfo) -> bool:
    """Pruned checkpoints (ours) are verified; a plain dense model directory has no manifest."""
    return fmt.is_pruned_config(info.config) or info.manifest is not None


def _check_shapes(path: Path, want_shapes: dict[str, tuple[int, ...]]) -> int:
    """Parameters in one weight file, after checking its projection shapes against the config."""
    from safetensors import SafetensorError, safe_open

    count = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = tuple(f.get_slice(key).get_shape())
                if key.endswith(".weight_packed"):  # 4-bit: the shape stored beside it
                    key = key.removesuffix("_packed")
                    shape = tuple(int(n) for n in f.get_tensor(key + "_shape").tolist())
                if not key.endswith(quant.AUXILIARIES):  # a quantized weight's scales
                    count += int(torch.Size(shape).numel())
                if key in want_shapes and shape != want_shapes[key]:
                    raise GraspError(f"{key} has shape {shape} but config.json's per-layer "
                                     f"patches say {want_shapes[key]}; the config and the "
                                     "weights disagree, re-export the checkpoint")
    except (SafetensorError, OSError) as err:
        raise GraspError(f"{path} is unreadable or truncated ({err}); "
                         "re-export the checkpoint") from err
    return count


def inspect_checkpoint(directory: Path, verify: bool = True) -> dict[str, Any]:
    """Widths, counts and KV bytes of a checkpoint, after verifying its files."""
    info = read_checkpoint(Path(directory))
    checked = verify_checkpoint(info, hashes=verify and needs_verification(info))
    name = str(info.config.get("dtype"))
    dtype = DTYPES[name].itemsize if name in DTYPES else 2
    heads = [layer.num_key_value_heads for layer in info.shape.layers]
    report: dict[str, Any] = {
        "directory": str(info.directory),
        "architecture": (info.config.get("architectures") or ["?"])[0],
        "layers": [
            {
                "intermediate_size": layer.intermediate_size,
                "num_key_value_heads": layer.num_key_value_heads,
                "num_attention_heads": layer.num_key_value_heads * info.shape.group_size,
            }
            for layer in info.shape.layers
        ],
        "parameters": checked["parameters"],
        "weight_files": checked["files"],
        "kv_cache_bytes_per_token": info.shape.kv_bytes_per_token(heads, dtype),
        "kv_dtype_bytes": dtype,
        "verified_sha256": checked["verified"],
    }
    if info.manifest is not None and info.manifest.get("method") == "none":  # export --dense
        m = info.manifest
        report.update(source=m.get("source"), method="none",
                      quantization=m.get("quantization"))
    elif info.manifest is not None:
        m = info.manifest
        if m.get("quantization"):
            report["quantization"] = m["quantization"]
        if m.get("healing"):
            report["healing"] = {k: v for k, v in m["healing"].items() if k != "loss_curve"}
        try:
            report.update(source=m["source"], method=m["method"],
                          dense_parameters=int(m["parameters"]["dense"]),
                          dense_kv_cache_bytes_per_token=int(m["kv_cache_bytes_per_token"]["dense"]),
                          dense_layer=m["dense_layer"], budget=m["budget"])
        except (KeyError, TypeError, ValueError) as err:
            raise GraspError(f"{directory}/{fmt.MANIFEST} is malformed (field {err}); "
                             "re-export the checkpoint") from err
        if checked["parameters"] != m["parameters"]["pruned"]:
            raise GraspError(f"{directory} holds {checked['parameters']:,} parameters but its "
                             f"manifest says {m['parameters']['pruned']:,}; re-export it")
    return report
