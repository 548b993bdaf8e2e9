"""GPTQ for ``export --quantize w4a16 --calib TEXT``: the model run one decoder layer at a time
on calibration blocks; each layer's projections rounded by ``checkpoint.gptq`` against the Gram
matrix of the inputs they receive, then the layer run again with its rounded weights, so that
every later layer is calibrated on what the quantized model actually feeds it (GPTQ's sequential
order). One layer's Gram matrices are held at a time."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint.gptq import gptq, prepare
from ..checkpoint.quant import PROJECTIONS, group_size, weight_args
from ..methods.layerwise import (
    ModelLayers,
    call_layer,
    initial_states,
    tensor_name,
)
from ..sources import text
from .calibration import Blocks, text_calibration

BATCH = 4  # calibration blocks per forward


def calibration_blocks(spec: str, tokenizer: Any, want: Blocks) -> tuple[torch.Tensor,
                                                                          dict[str, Any]]:
    """``want.num_samples`` blocks of the text ``spec`` (cut as prune cuts its calibration), and
    the description the manifest records."""
    calib = text_calibration(want, text.parse_source(spec, allow_self=False), tokenizer)
    description = {k: v for k, v in calib.description.items() if k != "scale_samples"}
    return calib.all_blocks(), description


def _projections(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: mod for name, mod in layer.named_modules()
            if name.split(".")[-1] in PROJECTIONS and isinstance(mod, nn.Linear)
            and mod.weight.numel()}


def _grams(layer: nn.Module, mods: dict[str, nn.Linear], states: list, index: int
           ) -> dict[str, torch.Tensor]:
    """X^T X of what each projection receives over every calibration batch, every position
    included: unlike the layer-wise refits, GPTQ keeps the attention sink's outsized first
    position (leaving it out cost the dense model 29.47 -> 32.32 against 27.06 with it,
    bench/results/gptq-smollm2/). Projections fed the same tensor (q/k/v, gate/up) share one
    matrix: the same object under each name."""
    grams: dict[str, torch.Tensor] = {}
    # this forward: id of an input -> (the first projection it fed, the input itself, held so
    # that its id cannot be reused by a later tensor)
    seen: dict[int, tuple[str, torch.Tensor]] = {}

    def hook(name: str):
        def add(_mod, args):
            first, _ = seen.setdefault(id(args[0]), (name, args[0]))
            if first != name:
                grams[name] = grams[first]
                return
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            if name in grams:
                grams[name] += x.T @ x  # in place: the projections sharing it see the sum
            else:
                grams[name] = x.T @ x
        return add

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    try:
        for x, kwargs in states:
            seen.clear()
            call_layer(layer, x, kwargs[index])
    finally:
        for h in handles:
            h.remove()
    return grams


def gptq_rounding(model: nn.Module, blocks: torch.Tensor, dtype: torch.dtype,
                  progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every decoder projection of ``model`` (float32) rounded to w4a16 by GPTQ on ``blocks``:
    tensor name -> (weight on the 4-bit grid, float32; its scales in ``dtype``). The model's
    projection weights are left rounded."""
    src = ModelLayers(model)
    shapes = {tensor_name(i, f"{name}.weight"): tuple(m.weight.shape)
              for i in range(src.num_layers) for name, m in _projections(src.layer(i)).items()}
    args = weight_args("w4a16", group_size(shapes))
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        states = initial_states(src, blocks, BATCH)
        for i in tqdm(range(src.num_layers), desc="GPTQ", unit="layer", disable=not progress):
            layer = src.layer(i)
            mods = _projections(layer)
            grams = _grams(layer, mods, states, i)
            hessians = {id(g): prepare(g) for g in grams.values()}  # once per shared input
            for name, mod in mods.items():
                weight, scale = gptq(mod.weight.data, hessians[id(grams[name])], args,
                                     scale_dtype=dtype)
                mod.weight.data.copy_(weight)
                out[tensor_name(i, f"{name}.weight")] = (weight, scale)
            states = [(call_layer(layer, x, kwargs[i]), kwargs) for x, kwargs in states]
    return out
