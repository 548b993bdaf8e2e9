"""Materialise a plan into a smaller dense checkpoint: the one place that knows the format.

CKPT/
  config.json                   source Llama fields + per_layer_config + auto_map
  configuration_grasp_llama.py  \\ the transformers classes, so that stock transformers loads
  modeling_grasp_llama.py       /  it with trust_remote_code=True
  model.safetensors             (or model-0000i-of-0000n.safetensors + index)
  tokenizer files, generation_config.json, chat template
  grasp_manifest.json           provenance, counts, widths, sha256 per weight file
  README.md                     model card
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import models
from .arch import GROUP_SIZE_FIELD, ModelShape
from .errors import GraspError
from .fsutil import sha256_file
from .masking import decoder_layers
from .plan import Plan

ARCHITECTURE = "GraspLlamaForCausalLM"
MODEL_TYPE = "grasp_llama"
MANIFEST = "grasp_manifest.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HF_DIR = Path(__file__).with_name("hf")
REMOTE_CODE = ("configuration_grasp_llama.py", "modeling_grasp_llama.py")
AUTO_MAP = {
    "AutoConfig": "configuration_grasp_llama.GraspLlamaConfig",
    "AutoModelForCausalLM": "modeling_grasp_llama.GraspLlamaForCausalLM",
}


# -- slicing (pure tensor functions) -------------------------------------------------------
def _rows_of_heads(heads: list[int], rows_per_head: int) -> torch.Tensor:
    """Row ids of whole heads: head g owns rows g*rows_per_head ... (g+1)*rows_per_head-1."""
    ids = torch.tensor(heads, dtype=torch.long)
    return (ids[:, None] * rows_per_head + torch.arange(rows_per_head)).reshape(-1)


@torch.no_grad()
def materialize(model: torch.nn.Module, plan: Plan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pruned state dict, HF names, with stage-B scales folded in (in float32, then cast).

    FFN channel j -> rows j of gate/up, column j of down (times its scale).
    KV group g    -> rows of KV head g in k/v (times its scale), rows and o_proj columns of its
                     query heads. Embeddings, norms and the LM head are copied.
    """
    shape = plan.source.shape
    h, g = shape.head_dim, shape.group_size
    out: dict[str, torch.Tensor] = {}
    sliced_prefixes = set()
    has_bias = plan.has_biases
    for i, (layer, lp) in enumerate(zip(decoder_layers(model), plan.layers, strict=True)):
        pre = f"model.layers.{i}."
        mlp, attn = layer.mlp, layer.self_attn
        ch = torch.tensor(lp.ffn_keep, dtype=torch.long)
        ffn_s = torch.tensor(lp.ffn_scale if lp.ffn_scale is not None else [1.0] * len(ch))
        kv_rows, q_rows = _rows_of_heads(list(lp.kv_keep), h), _rows_of_heads(list(lp.kv_keep), g * h)
        kv_s = torch.tensor(lp.kv_scale if lp.kv_scale is not None else [1.0] * len(lp.kv_keep))
        kv_s = kv_s.repeat_interleave(h)[:, None]  # one factor per kept k/v row
        w = {
            "mlp.gate_proj.weight": mlp.gate_proj.weight.float()[ch],
            "mlp.up_proj.weight": mlp.up_proj.weight.float()[ch],
            "mlp.down_proj.weight": mlp.down_proj.weight.float()[:, ch] * ffn_s[None, :],
            "self_attn.q_proj.weight": attn.q_proj.weight.float()[q_rows],
            "self_attn.k_proj.weight": attn.k_proj.weight.float()[kv_rows] * kv_s,
            "self_attn.v_proj.weight": attn.v_proj.weight.float()[kv_rows] * kv_s,
            "self_attn.o_proj.weight": attn.o_proj.weight.float()[:, q_rows],
        }
        biases = {
            "mlp.gate_proj.bias": (mlp.gate_proj.bias, lambda b: b[ch]),
            "mlp.up_proj.bias": (mlp.up_proj.bias, lambda b: b[ch]),
            "mlp.down_proj.bias": (mlp.down_proj.bias, lambda b: b),
            "self_attn.q_proj.bias": (attn.q_proj.bias, lambda b: b[q_rows]),
            "self_attn.k_proj.bias": (attn.k_proj.bias, lambda b: b[kv_rows] * kv_s[:, 0]),
            "self_attn.v_proj.bias": (attn.v_proj.bias, lambda b: b[kv_rows] * kv_s[:, 0]),
            "self_attn.o_proj.bias": (attn.o_proj.bias, lambda b: b),
        }
        for name, (bias, take) in biases.items():
            if bias is not None:
                w[name] = take(bias.float())
        # Compensation biases (FLAP) add to the projection's own bias, or become it; once any
        # layer has one, every layer gets that bias (zeros where it has none): one config flag.
        for name, extra, proj, key in (("self_attn.o_proj.bias", lp.o_bias, attn.o_proj, "o_proj"),
                                       ("mlp.down_proj.bias", lp.down_bias, mlp.down_proj, "down_proj")):
            if has_bias[key]:
                base = w.get(name, torch.zeros(proj.out_features))
                w[name] = base if extra is None else base + torch.tensor(extra, dtype=torch.float32)
        for name, t in w.items():
            out[pre + name] = t.to(dtype).contiguous()
        sliced_prefixes.add(pre + "mlp.")
        sliced_prefixes.add(pre + "self_attn.")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if any(name.startswith(p) for p in sliced_prefixes) or "rotary_emb" in name:
            continue
        if tied and name == "lm_head.weight":
            continue
        out[name] = t.detach().to(dtype).contiguous().clone()
    return out


def pruned_config(source_config: Any, plan: Plan, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the checkpoint: the source's fields, per-layer patches, auto_map."""
    cfg = source_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "auto_map", "transformers_version"):
        cfg.pop(key, None)
    shape = plan.source.shape
    cfg.update(
        architectures=[ARCHITECTURE], model_type=MODEL_TYPE, auto_map=dict(AUTO_MAP),
        head_dim=shape.head_dim, dtype=str(dtype).removeprefix("torch."),
        per_layer_config={str(i): w for i, w in enumerate(plan.widths())},
        **{GROUP_SIZE_FIELD: shape.group_size},
    )
    # Projections that gain a bias the source architecture lacks (GraspLlamaConfig fields).
    has = plan.has_biases
    cfg.update(o_proj_bias=has["o_proj"] and not shape.attention_bias,
               down_proj_bias=has["down_proj"] and not shape.mlp_bias)
    return cfg


# -- writing -------------------------------------------------------------------------------
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


def write_weights(tensors: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> list[str]:
    """Write safetensors (sharded with an index above ``max_shard_bytes``); return file names."""
    from safetensors.torch import save_file

    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata={"format": "pt"})
        return [SINGLE_FILE]
    names, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        names.append(name)
        weight_map.update({t: name for t in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


def copy_remote_code(directory: Path) -> None:
    for name in REMOTE_CODE:
        shutil.copyfile(HF_DIR / name, directory / name)


def weight_files(directory: Path) -> list[str]:
    index = directory / INDEX_FILE
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [SINGLE_FILE] if (directory / SINGLE_FILE).is_file() else []


# -- reading and checking a checkpoint ------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    directory: Path
    config: dict[str, Any]
    manifest: dict[str, Any] | None
    shape: ModelShape

    @property
    def is_grasp(self) -> bool:
        return self.config.get("model_type") == MODEL_TYPE


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
    if (directory / MANIFEST).is_file():
        manifest = json.loads((directory / MANIFEST).read_text())
    return CheckpointInfo(directory, raw, manifest, ModelShape.from_config(config))


def expected_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Projection weight shapes each layer must have, from the config alone."""
    d, h, g = shape.hidden_size, shape.head_dim, shape.group_size
    want: dict[str, tuple[int, ...]] = {}
    for i, l in enumerate(shape.layers):
        kv, ffn, pre = l.num_key_value_heads, l.intermediate_size, f"model.layers.{i}."
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
    """Check weight files against the manifest (sha256) and the config (shapes).

    Returns {"files": n, "parameters": count}. Raises GraspError on the first problem.
    """
    from safetensors import SafetensorError, safe_open

    directory, files = info.directory, weight_files(info.directory)
    if not files:
        raise GraspError(f"{directory} has no safetensors weights")
    recorded = (info.manifest or {}).get("weights", {})
    if hashes and info.manifest is not None:
        for name in files:
            want = recorded.get(name)
            if want is None:
                raise GraspError(f"{directory}/{name} is not listed in {MANIFEST}")
            if sha256_file(directory / name) != want:
                raise GraspError(f"{directory}/{name} is corrupted: its sha256 differs from "
                                 f"{MANIFEST}; re-export the checkpoint")
    want_shapes, count = expected_shapes(info.shape), 0
    for name in files:
        try:
            with safe_open(str(directory / name), framework="pt") as f:
                for key in f.keys():
                    shape = tuple(f.get_slice(key).get_shape())
                    count += int(torch.Size(shape).numel())
                    if key in want_shapes and shape != want_shapes[key]:
                        raise GraspError(f"{key} has shape {shape} but config.json's per-layer "
                                         f"patches say {want_shapes[key]}; the config and the "
                                         "weights disagree, re-export the checkpoint")
        except (SafetensorError, OSError) as err:
            raise GraspError(f"{directory}/{name} is unreadable or truncated ({err}); "
                             "re-export the checkpoint") from err
    return {"files": len(files), "parameters": count}


# -- the export job -------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportConfig:
    plan_dir: Path
    out: Path
    model: str | None = None  # default: the plan's source model
    format: str = "safetensors"
    dtype: str = "source"  # "source" keeps the source checkpoint's dtype
    max_shard_size: str = "5GB"
    force: bool = False

    def __post_init__(self) -> None:
        if self.format not in ("safetensors", "onnx"):
            raise GraspError(f"--format {self.format!r} is unknown; use safetensors or onnx")
        parse_size(self.max_shard_size)


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if t.endswith(unit):
            number = t[: -len(unit)].strip()
            break
    else:
        unit, number = "B", t
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value <= 0:
        raise GraspError(f"--max-shard-size {text!r} is not a size; use e.g. 2GB or 500MB")
    return value


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    onnx: dict[str, Any] | None = None



def _source_dtype(source_config: Any) -> torch.dtype:
    name = getattr(source_config, "dtype", None) or getattr(source_config, "torch_dtype", None)
    if isinstance(name, torch.dtype):
        return name
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def run_export(config: ExportConfig) -> ExportResult:
    from .evaluate import check_plan_matches
    from .plan import load_plan

    from .fsutil import atomic_dir, check_target

    check_target(Path(config.out), config.force)
    plan = load_plan(config.plan_dir)
    source = models.resolve_source(config.model or plan.source.name)
    source_config = models.load_config(source)
    dtype = _source_dtype(source_config) if config.dtype == "source" else models.resolve_dtype(config.dtype)
    max_shard = parse_size(config.max_shard_size)
    tokenizer = models.load_tokenizer(source)
    # Slice from float32 weights so that folding the scales loses nothing before the cast.
    model = models.load_model(source, dtype=torch.float32, device="cpu")
    check_plan_matches(plan, model, source.spec)
    tensors = materialize(model, plan, dtype)
    cfg = pruned_config(source_config, plan, dtype)
    with atomic_dir(Path(config.out), config.force) as tmp:
        files = write_weights(tensors, tmp, max_shard)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        copy_remote_code(tmp)
        tokenizer.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        manifest = build_manifest(plan, tensors, files, tmp, dtype, models.count_parameters(model))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(manifest))
        onnx_report = None
        if config.format == "onnx":
            from .onnx_export import export_onnx

            onnx_report = export_onnx(tmp)
            manifest["onnx"] = onnx_report
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(Path(config.out), manifest, onnx_report)


def build_manifest(plan: Plan, tensors: dict[str, torch.Tensor], files: list[str], directory: Path,
                   dtype: torch.dtype, dense_params: int) -> dict[str, Any]:
    from .versions import package_versions

    shape = plan.source.shape
    widths = plan.widths()
    pruned_params = sum(t.numel() for t in tensors.values())
    nbytes = torch.tensor([], dtype=dtype).element_size()
    return {
        "format": "grasp-deploy checkpoint v1",
        "source": {"model": plan.source.name, "fingerprint": plan.source.fingerprint},
        "method": plan.method, "settings": plan.settings,
        "budget": plan.to_json()["budget"],
        "parameters": {"dense": dense_params, "pruned": pruned_params,
                       "reduction": 1 - pruned_params / dense_params},
        "kv_cache_bytes_per_token": {
            "dtype": str(dtype).removeprefix("torch."),
            "dense": shape.kv_bytes_per_token(dtype_bytes=nbytes),
            "pruned": shape.kv_bytes_per_token([w["num_key_value_heads"] for w in widths], nbytes)},
        "layers": widths,
        "dense_layer": {"intermediate_size": shape.layers[0].intermediate_size,
                        "num_key_value_heads": shape.layers[0].num_key_value_heads,
                        "query_heads_per_kv_head": shape.group_size},
        "calibration": plan.calibration, "seed": plan.seed,
        "versions": package_versions(),
        "weights": {name: sha256_file(directory / name) for name in files},
    }


def model_card(manifest: dict[str, Any]) -> str:
    p, kv, b = manifest["parameters"], manifest["kv_cache_bytes_per_token"], manifest["budget"]
    ffn = [l["intermediate_size"] for l in manifest["layers"]]
    heads = [l["num_key_value_heads"] for l in manifest["layers"]]
    dense = manifest["dense_layer"]
    calib = manifest["calibration"]
    calib_text = ("no calibration data" if not calib.get("source") else
                  f"{calib.get('num_samples')} x {calib.get('seq_len')} tokens of {calib['source']}")
    return f"""# {Path(manifest['source']['model']).name}, pruned with grasp-deploy ({manifest['method']})

Structured pruning of `{manifest['source']['model']}` ({manifest['source']['fingerprint']}):
{b['achieved_ratio']:.2%} of the prunable parameters (FFN channels and KV head groups) removed,
asked {b['prune_ratio']:.2%}; calibration: {calib_text}; seed {manifest['seed']}.

| | dense | pruned | ratio |
|---|---:|---:|---:|
| parameters | {p['dense']:,} | {p['pruned']:,} | {p['pruned'] / p['dense']:.3f} |
| KV cache bytes / token ({kv['dtype']}) | {kv['dense']:,} | {kv['pruned']:,} | {kv['pruned'] / kv['dense']:.3f} |
| FFN width per layer | {dense['intermediate_size']} | {min(ffn)}..{max(ffn)} | |
| KV heads per layer | {dense['num_key_value_heads']} | {min(heads)}..{max(heads)} | |

Each layer has its own FFN width and KV-head count (`per_layer_config` in `config.json`); query
heads per layer = KV heads x {dense['query_heads_per_kv_head']}. Stage-B scales are folded into
the weights.

Load with plain transformers (no grasp-deploy needed):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH")
```

or serve it with `grasp-deploy serve PATH` (vLLM). `grasp_manifest.json` records the plan's
provenance, package versions and the sha256 of every weight file.
"""


def inspect_checkpoint(directory: Path) -> dict[str, Any]:
    """Widths, counts and KV bytes of a checkpoint, after verifying its weight files."""
    info = read_checkpoint(Path(directory))
    checked = verify_checkpoint(info, hashes=True)
    dtype = {"bfloat16": 2, "float16": 2, "float32": 4}.get(str(info.config.get("dtype")), 2)
    heads = [l.num_key_value_heads for l in info.shape.layers]
    report: dict[str, Any] = {
        "directory": str(info.directory), "architecture": (info.config.get("architectures") or ["?"])[0],
        "layers": [{"intermediate_size": l.intermediate_size, "num_key_value_heads": l.num_key_value_heads,
                    "num_attention_heads": l.num_key_value_heads * info.shape.group_size}
                   for l in info.shape.layers],
        "parameters": checked["parameters"], "weight_files": checked["files"],
        "kv_cache_bytes_per_token": info.shape.kv_bytes_per_token(heads, dtype),
        "kv_dtype_bytes": dtype,
        "verified_sha256": info.manifest is not None,
    }
    if info.manifest is not None:
        m = info.manifest
        report.update(source=m["source"], method=m["method"], dense_parameters=m["parameters"]["dense"],
                      dense_kv_cache_bytes_per_token=m["kv_cache_bytes_per_token"]["dense"],
                      dense_layer=m["dense_layer"], budget=m["budget"])
        if checked["parameters"] != m["parameters"]["pruned"]:
            raise GraspError(f"{directory} holds {checked['parameters']:,} parameters but its "
                             f"manifest says {m['parameters']['pruned']:,}; re-export it")
    return report
