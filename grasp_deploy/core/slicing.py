"""Slicing a plan into a smaller dense state dict: pure tensor functions, HF names.

FFN channel j -> rows j of gate/up, column j of down (times its stage-B scale).
KV group g    -> rows of KV head g in k/v (times its scale), rows and o_proj columns of its
                 query heads. Embeddings, norms and the LM head are copied.
A reconstructed plan brings its own o_proj and down_proj weights (already sliced).
"""

from __future__ import annotations

import torch

from .masking import DecoderLayer, decoder_layers
from .plan import LayerPlan, Plan

PROJECTIONS = (("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"),
               ("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
               ("self_attn", "o_proj"))


def rows_of_heads(heads: list[int], rows_per_head: int) -> torch.Tensor:
    """Row ids of whole heads: head g owns rows g*rows_per_head ... (g+1)*rows_per_head-1."""
    ids = torch.tensor(heads, dtype=torch.long)
    return (ids[:, None] * rows_per_head + torch.arange(rows_per_head)).reshape(-1)


@torch.no_grad()
def materialize(model: torch.nn.Module, plan: Plan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pruned state dict, with stage-B scales folded in (in float32, then cast)."""
    out: dict[str, torch.Tensor] = {}
    sliced: set[str] = set()  # every projection weight and bias, whether kept, replaced or new
    for i, (layer, lp) in enumerate(zip(decoder_layers(model), plan.layers, strict=True)):
        pre = f"model.layers.{i}."
        for name, t in _slice_layer(layer, lp, plan, i).items():
            out[pre + name] = t.to(dtype).contiguous()
        sliced.update(f"{pre}{group}.{proj}.{kind}" for group, proj in PROJECTIONS
                      for kind in ("weight", "bias"))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    # The rest as it is: embeddings, norms (Qwen3's per-head q_norm/k_norm too), the LM head.
    for name, t in model.state_dict().items():
        if name in sliced or "rotary_emb" in name:
            continue
        if tied and name == "lm_head.weight":
            continue
        out[name] = t.detach().to(dtype).contiguous().clone()
    return out


def _slice_layer(layer: DecoderLayer, lp: LayerPlan, plan: Plan,
                 index: int) -> dict[str, torch.Tensor]:
    """One decoder layer's sliced projections (float32), names relative to the layer."""
    shape = plan.source.shape
    h, g = shape.head_dim, shape.group_size
    mlp, attn = layer.mlp, layer.self_attn
    ch = torch.tensor(lp.ffn_keep, dtype=torch.long)
    ffn_s = torch.tensor(lp.ffn_scale if lp.ffn_scale is not None else [1.0] * len(ch))
    kv_rows, q_rows = rows_of_heads(list(lp.kv_keep), h), rows_of_heads(list(lp.kv_keep), g * h)
    kv_s = torch.tensor(lp.kv_scale if lp.kv_scale is not None else [1.0] * len(lp.kv_keep))
    kv_s = kv_s.repeat_interleave(h)[:, None]  # one factor per kept k/v row
    k_s = kv_s if shape.gate_keys else torch.ones_like(kv_s)  # values only where a norm follows
    w = {
        "mlp.gate_proj.weight": mlp.gate_proj.weight.float()[ch],
        "mlp.up_proj.weight": mlp.up_proj.weight.float()[ch],
        "mlp.down_proj.weight": mlp.down_proj.weight.float()[:, ch] * ffn_s[None, :],
        "self_attn.q_proj.weight": attn.q_proj.weight.float()[q_rows],
        "self_attn.k_proj.weight": attn.k_proj.weight.float()[kv_rows] * k_s,
        "self_attn.v_proj.weight": attn.v_proj.weight.float()[kv_rows] * kv_s,
        "self_attn.o_proj.weight": attn.o_proj.weight.float()[:, q_rows],
    }
    biases = {
        "mlp.gate_proj.bias": (mlp.gate_proj.bias, lambda b: b[ch]),
        "mlp.up_proj.bias": (mlp.up_proj.bias, lambda b: b[ch]),
        "mlp.down_proj.bias": (mlp.down_proj.bias, lambda b: b),
        "self_attn.q_proj.bias": (attn.q_proj.bias, lambda b: b[q_rows]),
        "self_attn.k_proj.bias": (attn.k_proj.bias, lambda b: b[kv_rows] * k_s[:, 0]),
        "self_attn.v_proj.bias": (attn.v_proj.bias, lambda b: b[kv_rows] * kv_s[:, 0]),
        "self_attn.o_proj.bias": (attn.o_proj.bias, lambda b: b),
    }
    if plan.replaced is not None:  # layer-wise reconstruction: refitted, already sliced
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            w[name] = plan.replaced[f"model.layers.{index}.{name}"].float()
    for name, (bias, take) in biases.items():
        if bias is not None:
            w[name] = take(bias.float())
    # Compensation biases (FLAP) add to the projection's own bias, or become it; once any
    # layer has one, every layer gets that bias (zeros where it has none): one config flag.
    has_bias = plan.has_biases
    for name, extra, proj, key in (
        ("self_attn.o_proj.bias", lp.o_bias, attn.o_proj, "o_proj"),
        ("mlp.down_proj.bias", lp.down_bias, mlp.down_proj, "down_proj"),
    ):
        if has_bias[key]:
            base = w.get(name, torch.zeros(proj.out_features))
            w[name] = base if extra is None else base + torch.tensor(extra, dtype=torch.float32)
    return w
