"""The model card (README.md) written into every checkpoint, from its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .format import GROUP_SIZE_FIELD


def _kv_asked(budget: dict[str, Any]) -> str:
    if budget.get("kv_ratio") is None:
        return ""
    return (
        f" (and KV cache at most {budget['kv_ratio']:.2%} of dense, kept"
        f" {budget['kv_achieved']:.2%})"
    )


def weights_note(manifest: dict[str, Any]) -> str:
    """What was done to the kept weights beyond slicing, from the plan's settings."""
    settings = manifest.get("settings", {})
    rec = settings.get("reconstruct")
    if rec and "reselect" in rec:
        return ("The method set each layer's widths; the units within each layer were then "
                "chosen by ADMM on the layer's reconstruction objective, and `o_proj`/`down_proj` "
                "refitted with a bias, layer by layer on the calibration text (`--reselect`).")
    if rec:
        return ("`o_proj` and `down_proj` were refitted layer by layer on the calibration text "
                "(`--reconstruct`); FFN stage-B scales, if any, are absorbed in them.")
    if manifest.get("method") == "structprune":
        return ("The units within each layer were chosen by ADMM and `o_proj`/`down_proj` "
                "refitted with a bias, layer by layer on the calibration text.")
    if settings.get("scale_epochs"):
        return "Stage-B scales are folded into the weights."
    return ""


def quantization_note(manifest: dict[str, Any]) -> str:
    q = manifest.get("quantization")
    if not q:
        return ""
    return (f"\n\nEvery decoder projection is quantized: `{q['scheme']}` (compressed-tensors "
            f"preset {q['preset']}, format `{q['format']}`; {q['weight_bytes']:,} bytes of "
            "weights in all). vLLM runs it with its own kernels; transformers needs the "
            "`compressed-tensors` package and decompresses it on load." + _rounding(q))


def _rounding(q: dict[str, Any]) -> str:
    if q.get("rounding") != "gptq":
        return ""
    c = q["calibration"]
    return (f" The 4-bit weights were chosen by GPTQ on {c['num_samples']} blocks of "
            f"{c['seq_len']} tokens of `{c['source']}`.")


def healing_note(manifest: dict[str, Any]) -> str:
    """What healing did (``grasp-deploy heal``), from the manifest's record."""
    h = manifest.get("healing")
    if not h:
        return ""
    kl = h["held_out_kl"]
    return (f"\n\nHealed after pruning: {h['steps']} steps ({h['seconds'] / 60:.1f} min, "
            f"{h['tokens']:,} tokens of {h['data']}) of distillation from the dense teacher "
            f"`{h['teacher']['model']}` ({h['teacher']['fingerprint']}), training {h['train']}; "
            f"KL to the teacher on {kl['blocks']} held-out blocks {kl['before']:.4f} before, "
            f"{kl['after']:.4f} after.")


def model_card(manifest: dict[str, Any]) -> str:
    p, kv, b = manifest["parameters"], manifest["kv_cache_bytes_per_token"], manifest["budget"]
    ffn = [layer["intermediate_size"] for layer in manifest["layers"]]
    heads = [layer["num_key_value_heads"] for layer in manifest["layers"]]
    dense = manifest["dense_layer"]
    calib = manifest["calibration"]
    calib_text = (
        "no calibration data"
        if not calib.get("source")
        else f"{calib.get('num_samples')} x {calib.get('seq_len')} tokens of {calib['source']}"
    )
    name, method = Path(manifest["source"]["model"]).name, manifest["method"]
    notes = weights_note(manifest) + healing_note(manifest) + quantization_note(manifest)
    kv_ratio = kv["pruned"] / kv["dense"]
    return f"""# {name}, pruned with grasp-deploy ({method})

Structured pruning of `{manifest['source']['model']}` ({manifest['source']['fingerprint']}):
{b['achieved_ratio']:.2%} of the prunable parameters (FFN channels and KV head groups) removed,
asked {b['prune_ratio']:.2%}{_kv_asked(b)}; calibration: {calib_text}; seed {manifest['seed']}.

| | dense | pruned | ratio |
|---|---:|---:|---:|
| parameters | {p['dense']:,} | {p['pruned']:,} | {p['pruned'] / p['dense']:.3f} |
| KV cache bytes / token ({kv['dtype']}) | {kv['dense']:,} | {kv['pruned']:,} | {kv_ratio:.3f} |
| FFN width per layer | {dense['intermediate_size']} | {min(ffn)}..{max(ffn)} | |
| KV heads per layer | {dense['num_key_value_heads']} | {min(heads)}..{max(heads)} | |

Each layer has its own FFN width and KV-head count (`per_layer_config` in `config.json`); query
heads per layer = KV heads x {dense[GROUP_SIZE_FIELD]}. {notes}

Load with plain transformers (no grasp-deploy needed):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)
```

or serve it with `grasp-deploy serve PATH` (vLLM). `grasp_manifest.json` records the plan's
provenance, package versions and the sha256 of every weight file.
"""
