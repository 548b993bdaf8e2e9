"""Layer-wise reconstruction: refit the kept columns of ``o_proj`` and ``down_proj``.

After a method has chosen what to keep, walk the decoder layers in order over calibration
blocks. Layer i sees the hidden states that the already-reconstructed layers before it
produce (the pruned path). Its attention output should match what the *dense* layer i would
output on those same inputs; the kept columns of ``o_proj`` are replaced by the ridge
least-squares solution

    W = Y^T H (H^T H + lambda I)^-1,   lambda = ridge x mean(diag(H^T H)),

where H holds the pruned attention's inputs to ``o_proj`` (kept query heads only) and Y the
dense attention's outputs (minus any fixed bias). Then, with the new ``o_proj`` in place, the
same for the MLP: H = the kept channels of ``act(gate) * up`` (without stage-B scales: the
solution absorbs them), Y = the dense MLP on the pruned path's post-attention states. Only
one layer's inputs and Gram matrices are held at a time; the layers run one after another on
inputs kept from the previous one, so the cost is about three forward passes of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core.checks import check_number
from ..core.masking import Multipliers, decoder_layers, multiplied
from ..core.plan import Plan
from ..core.shape import FFN, KV, ModelShape
from .base import PostInput, PostStep, flag
from .layerwise import (
    ATTN,
    DEFAULT_RIDGE,
    DEFAULT_SINK_SKIP,
    MLP,
    RIDGE,
    SINK_SKIP,
    ModelLayers,
    call_layer,
    device_of,
    initial_states,
    input_of,
    shared,
    tensor_name,
)
from .ridge import Gram
from .structprune import StructPruneSettings, choose_and_refit


@dataclass(frozen=True)
class ReconstructSettings:
    ridge: float = shared(DEFAULT_RIDGE, RIDGE)  # lambda = ridge x mean diagonal of the Gram matrix
    batch_blocks: int = 4  # calibration blocks per forward (memory vs speed)
    reselect: bool = flag(
        False, "Keep each layer's FFN width and KV-head count as the method chose them, but "
               "choose which channels and heads by ADMM on the layer's reconstruction "
               "objective on the pruned path (StructPrune's pass 2), then refit with a bias "
               "(implies --reconstruct; bench/results/quality.md: grasp-best+reselect).",
        enables=True)
    # With --reselect: positions at the start of every calibration block left out of pass 2
    skip: int = shared(DEFAULT_SINK_SKIP, SINK_SKIP)

    def __post_init__(self) -> None:
        check_number("--reconstruct-ridge", self.ridge, low=0, low_open=True)
        check_number("--sink-skip", self.skip, low=0, integer=True)

    def unused(self) -> dict[str, str]:
        if self.reselect:
            return {}
        return {"skip": "applies with --reselect or --method structprune, not with "
                        "--reconstruct alone"}

    def to_json(self) -> dict[str, Any]:
        record = {"ridge": self.ridge, "target": "dense layer on the pruned path's inputs"}
        if not self.reselect:  # plans made before the option keep their keys
            return {**record, "ffn_scales": "absorbed into down_proj"}
        return {**record, "ffn_scales": "dropped: the units are chosen anew, then refitted",
                "reselect": "per-layer counts kept, units chosen by ADMM (structprune pass 2)",
                "skip": self.skip}


def run(settings: ReconstructSettings, plan: Plan, inp: PostInput) -> Plan:
    """The post-step: ``plan`` with o_proj/down_proj refitted on every calibration block the
    run has (GRASPrune's stage-B blocks too: more blocks refit better,
    bench/results/reconstruct-smollm2-r50). With ``reselect``, the plan's per-layer counts
    with the units chosen anew by StructPrune's pass 2 before the same kind of refit."""
    if not settings.reselect:
        return reconstruct_plan(plan, inp.model, inp.blocks, settings, progress=inp.progress)
    counts = {(i, kind): len(keep) for i, lp in enumerate(plan.layers)
              for kind, keep in ((FFN, lp.ffn_keep), (KV, lp.kv_keep))}
    pass2 = StructPruneSettings(ridge=settings.ridge, skip=settings.skip)
    chosen = choose_and_refit(ModelLayers(inp.model), inp.shape, inp.layout, counts, inp.blocks,
                              pass2, inp.progress)
    return inp.make_plan(chosen)


STEP = PostStep(
    "reconstruct", "--reconstruct",
    "After the method (any method): refit the kept columns of o_proj and down_proj layer by "
    "layer, by ridge least squares, so each pruned layer matches the dense layer on the "
    "pruned path's calibration states (all calibration blocks, grasp's stage-B ones too; "
    "absorbs the FFN stage-B scales; about three forward passes).",
    ReconstructSettings, run, refits=True)


def reconstruct_plan(plan: Plan, model: nn.Module, blocks: torch.Tensor,
                     settings: ReconstructSettings = ReconstructSettings(),
                     progress: bool = True) -> Plan:
    """``plan`` with o_proj/down_proj refitted layer by layer on ``blocks`` (n, seq_len); the
    kept units, and so the budget, are unchanged."""
    unscaled = replace(plan, layers=tuple(replace(lp, ffn_scale=None) for lp in plan.layers))
    weights = reconstruct(model, plan.source.shape, unscaled.multipliers(),
                          [list(lp.ffn_keep) for lp in plan.layers],
                          [plan.query_columns(i) for i in range(len(plan.layers))],
                          blocks, settings, progress=progress)
    return plan.with_reconstruction(weights, {**settings.to_json(), "blocks": int(blocks.shape[0]),
                                              "seq_len": int(blocks.shape[1])})


@torch.no_grad()
def reconstruct(model: nn.Module, shape: ModelShape, mult: Multipliers, ffn_keep: list[list[int]],
                q_cols: list[torch.Tensor], blocks: torch.Tensor,
                settings: ReconstructSettings = ReconstructSettings(),
                progress: bool = True) -> dict[str, torch.Tensor]:
    """The refitted ``o_proj``/``down_proj`` weights of every layer, in their sliced shapes
    (hidden x kept inputs), keyed like the checkpoint's tensors.

    ``mult`` is the plan's multipliers *without* FFN stage-B scales (masks only; KV scales and
    compensation biases as planned); ``mult.o_weight``/``mult.down_weight`` are filled in here
    layer by layer, so later layers see the reconstructed earlier ones."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    batches = initial_states(ModelLayers(model), blocks, settings.batch_blocks)
    out: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(layers), desc="reconstruct", unit="layer", disable=not progress)
    with multiplied(model, shape, mult):
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            cols = q_cols[i].to(device_of(model))
            # 1. o_proj: pruned attention inputs vs the dense attention's output
            gram = Gram()
            for x, kwargs in batches:
                kw = kwargs[i]
                normed = layer.input_layernorm(x)
                target = _dense(mult, i, attn, hidden_states=normed, **kw)[0]
                heads = input_of(attn.o_proj, attn, hidden_states=normed, **kw)
                gram.add(heads[..., cols], target - _fixed_bias(attn.o_proj, mult.bias("o", i)))
            w_o = gram.solve(settings.ridge)
            mult.o_weight[i] = (cols, w_o)
            out[tensor_name(i, ATTN)] = w_o.cpu()
            # 2. down_proj: pruned MLP inputs vs the dense MLP, after the new attention
            ch = torch.tensor(ffn_keep[i], dtype=torch.long, device=cols.device)
            gram = Gram()
            for x, kwargs in batches:
                kw = kwargs[i]
                h = x + attn(hidden_states=layer.input_layernorm(x), **kw)[0]
                z = layer.post_attention_layernorm(h)
                target = _dense(mult, i, mlp, z)
                channels = input_of(mlp.down_proj, mlp, z)
                gram.add(
                    channels[..., ch], target - _fixed_bias(mlp.down_proj, mult.bias("down", i))
                )
            w_down = gram.solve(settings.ridge)
            mult.down_weight[i] = (ch, w_down)
            out[tensor_name(i, MLP)] = w_down.cpu()
            # 3. the pruned path's input to the next layer
            batches = [(call_layer(layer, x, kwargs[i]), kwargs) for x, kwargs in batches]
            bar.update(1)
    bar.close()
    return out


def _dense(mult: Multipliers, i: int, run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``run(*args, **kwargs)`` with layer i's units and replacements switched off (the dense
    layer)."""
    saved = (mult.ffn[i], mult.kv[i], mult.o_weight[i], mult.down_weight[i],
             mult.o_bias[i], mult.down_bias[i])
    mult.ffn[i] = mult.kv[i] = mult.o_weight[i] = mult.down_weight[i] = None
    mult.o_bias[i] = mult.down_bias[i] = None
    try:
        return run(*args, **kwargs)
    finally:
        (mult.ffn[i], mult.kv[i], mult.o_weight[i], mult.down_weight[i],
         mult.o_bias[i], mult.down_bias[i]) = saved


def _fixed_bias(proj: nn.Linear, extra: torch.Tensor | None) -> torch.Tensor | float:
    """What is added after the refitted weight: the projection's own bias and any
    compensation bias; the fit targets the output minus these."""
    total: torch.Tensor | float = 0.0
    if proj.bias is not None:
        total = proj.bias.float()
    if extra is not None:
        total = total + extra.to(device=proj.weight.device, dtype=torch.float32)
    return total
