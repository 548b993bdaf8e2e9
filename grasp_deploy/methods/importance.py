"""Calibration statistics and unit importances for the baseline methods (and GRASPrune's
informed initial scores).

Two kinds of evidence come from the calibration blocks:

* activations: per input column of ``o_proj`` (attention output, one column per query-head
  dimension) and of ``down_proj`` (one column per FFN channel): sum, sum of squares, count;
* gradients of the loss with respect to every projection weight, averaged over the blocks.

A unit's importance is then a sum over the weights it owns (``unit_totals``): an FFN channel
owns row j of ``gate_proj``/``up_proj`` and column j of ``down_proj``; a KV group owns its KV
head's rows of ``k_proj``/``v_proj``, its query heads' rows of ``q_proj`` and their columns of
``o_proj``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.masking import Multipliers, decoder_layers, multiplied
from ..core.projection import UnitLayout
from ..core.shape import FFN, KV, ModelShape

# The seven projection weights a decoder layer's units own, by HF short name.
WEIGHT_NAMES = ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj")
MLP_WEIGHTS = ("gate_proj", "up_proj", "down_proj")


def projection_weights(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Per layer: the seven projection weights by short name."""
    out = []
    for layer in decoder_layers(model):
        mlp, attn = layer.mlp, layer.self_attn
        out.append({name: getattr(mlp if name in MLP_WEIGHTS else attn, name).weight
                    for name in WEIGHT_NAMES})
    return out


@torch.no_grad()
def unit_totals(values: list[dict[str, torch.Tensor]], shape: ModelShape,
                layout: UnitLayout) -> np.ndarray:
    """Flat per-unit sums of element-wise ``values`` (one tensor per projection weight)."""
    totals = np.zeros(layout.num_units, dtype=np.float64)
    h, g = shape.head_dim, shape.group_size
    for i, v in enumerate(values):
        ffn = v["gate_proj"].sum(1) + v["up_proj"].sum(1) + v["down_proj"].sum(0)
        kv = (
            v["k_proj"].sum(1).view(-1, h).sum(1)
            + v["v_proj"].sum(1).view(-1, h).sum(1)
            + v["q_proj"].sum(1).view(-1, g * h).sum(1)
            + v["o_proj"].sum(0).view(-1, g * h).sum(1)
        )
        for kind, t in ((FFN, ffn), (KV, kv)):
            seg = layout.segment(i, kind)
            totals[seg.start:seg.stop] = t.double().cpu().numpy()
    return totals


# -- activations ----------------------------------------------------------------------------
@dataclass
class ActivationStats:
    """Per layer, per input column of o_proj ("o") and down_proj ("down"): moments in float64."""

    sums: dict[str, list[torch.Tensor]]
    squares: dict[str, list[torch.Tensor]]
    count: int  # tokens seen

    def mean(self, name: str, layer: int) -> torch.Tensor:
        return self.sums[name][layer] / self.count

    def norm(self, name: str, layer: int) -> torch.Tensor:
        """L2 norm of the column over all calibration tokens."""
        return self.squares[name][layer].sqrt()

    def variance(self, name: str, layer: int) -> torch.Tensor:
        """Sample variance of the column over all calibration tokens (FLAP's fluctuation)."""
        n = self.count
        mean = self.sums[name][layer] / n
        return ((self.squares[name][layer] - n * mean * mean) / max(n - 1, 1)).clamp_min(0.0)


@torch.no_grad()
def collect_activations(model: torch.nn.Module, shape: ModelShape, blocks: torch.Tensor,
                        progress: bool = True, desc: str = "activations") -> ActivationStats:
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    sums: dict[str, list[Any]] = {"o": [None] * len(layers), "down": [None] * len(layers)}
    squares: dict[str, list[Any]] = {"o": [None] * len(layers), "down": [None] * len(layers)}

    def hook(name: str, i: int):
        def pre(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            s, q = x.sum(0), (x * x).sum(0)
            sums[name][i] = s if sums[name][i] is None else sums[name][i] + s
            squares[name][i] = q if squares[name][i] is None else squares[name][i] + q
        return pre

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook("o", i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook("down", i)))
    count = 0
    try:
        for block in tqdm(
            blocks, desc=desc, unit="block", disable=not progress, dynamic_ncols=True
        ):
            model(input_ids=block[None].to(device))
            count += block.numel()
    finally:
        for handle in handles:
            handle.remove()
    return ActivationStats(sums, squares, count)


# -- gradients ------------------------------------------------------------------------------
def mean_gradients(model: torch.nn.Module, shape: ModelShape, blocks: Iterable[torch.Tensor],
                   mult: Multipliers | None = None, progress: bool = True,
                   desc: str = "gradients", resume: dict[str, Any] | None = None,
                   save: Callable[[dict[str, Any]], None] | None = None,
                   save_every: int = 0) -> list[dict[str, torch.Tensor]]:
    """The LM loss's gradient w.r.t. every projection weight, averaged over ``blocks``.

    Only these weights get ``requires_grad`` for the duration; everything is restored after.
    With ``mult`` the gradient is taken on the masked model (removed units are zero). Every
    ``save_every`` blocks ``save`` gets the running sums (``{"done", "grads"}``); passing that
    back as ``resume`` continues where it stopped, with the same result.
    """
    device = next(model.parameters()).device
    weights = projection_weights(model)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    flat = [w for layer in weights for w in layer.values()]
    for w in flat:
        w.requires_grad_(True)
        w.grad = None
    blocks = list(blocks)
    start = 0 if resume is None else int(resume["done"])
    if resume is not None:
        for w, g in zip(flat, resume["grads"], strict=True):
            w.grad = g.to(device=w.device, dtype=w.dtype).clone()
    try:
        with multiplied(model, shape, mult or Multipliers.empty(shape.num_layers)):
            for i in tqdm(range(start, len(blocks)), desc=desc, unit="block", disable=not progress,
                          dynamic_ncols=True, leave=False, initial=start, total=len(blocks)):
                batch = blocks[i][None].to(device)
                loss = model(input_ids=batch, labels=batch).loss / len(blocks)
                loss.backward()
                done = i + 1
                if (
                    save is not None
                    and save_every > 0
                    and done % save_every == 0
                    and done < len(blocks)
                ):
                    save({"done": done, "grads": [_grad(w).clone() for w in flat]})
        grads = [{name: _grad(w).float() for name, w in layer.items()} for layer in weights]
    finally:
        for w in flat:
            w.grad = None
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    return grads


@torch.no_grad()
def taylor_importance(model: torch.nn.Module, shape: ModelShape, layout: UnitLayout,
                      grads: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """First-order Taylor: sum over a unit's weights of |w * dL/dw| (LLM-Pruner's element-wise
    first-order salience, aggregated by sum over the coupled group)."""
    weights = projection_weights(model)
    values = [{name: (w.float() * g[name]).abs() for name, w in layer.items()}
              for layer, g in zip(weights, grads, strict=True)]
    return unit_totals(values, shape, layout)


def _grad(w: torch.Tensor) -> torch.Tensor:
    if w.grad is None:  # every weight is on the loss's path: a None would be a bug upstream
        raise ValueError("a projection weight got no gradient")
    return w.grad.detach()
