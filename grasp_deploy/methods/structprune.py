"""StructPrune (Song, Bai, Zhao 2025, arXiv 2510.03246) as we read it and adapt it to SwiGLU
FFN channels and GQA KV groups under one global parameter budget; memory-bounded.

From the paper: global structured pruning split into per-module subproblems that each fit in
memory, ADMM for each, and a closed-form softmax allocation of sparsity over modules driven
by their energies. Ours (the paper's equations were not available): the energies, the
allocation's exact form, the ADMM splitting and the ridge refit (``ALGORITHM.md``).

The model is never whole in memory: ``MethodInput.layers`` hands out one decoder layer at a
time, and only that layer's calibration activations and Gram matrices are held.

- Pass 1 (dense path): unit energies, a channel's e_j = ||down[:, j]||^2 ||h_j||^2 and a KV
  group's e_g = trace(W_o[:, B] G_o[B, B] W_o[:, B]^T); a module's (one layer's attention or
  MLP) energy is the log-mean of its lowest cost-normalised unit energies at the target ratio.
- Allocation: the fraction removed from module m is proportional to exp(-eps_m / T), capped
  at min(0.9, ratio + 0.3) and water-filled to the budget. T = inf: uniform; T -> 0: the
  lowest-energy modules first (one global threshold).
- Pass 2 (pruned path): per module, ADMM on ||A W^T - A Z^T||^2 with a group-sparse Z
  (sparsity ramped cubically), then the kept columns refitted by ridge least squares to the
  dense layer's output on the same inputs (``reconstruct``'s local target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..core.checks import check_number
from ..core.errors import GraspError
from ..core.projection import Segment, UnitLayout
from ..core.shape import FFN, KV, ModelShape
from ..core.spill import SpilledTensors
from .allocation import allocate, kept_counts
from .base import LayerSource, MethodInput, MethodResult, MethodSettings, flag
from .layerwise import (
    ATTN,
    DEFAULT_RIDGE,
    DEFAULT_SINK_SKIP,
    MLP,
    RIDGE,
    SINK_SKIP,
    call_layer,
    initial_states,
    input_of,
    shared,
    tensor_name,
)
from .ridge import solve_ridge


@dataclass(frozen=True)
class StructPruneSettings(MethodSettings):
    temperature: float = flag(
        math.inf, "Temperature of the layer-wise sparsity allocation, exp(-module log-energy / "
                  "T); inf gives every module the same ratio (measured best: "
                  "bench/results/structprune-temperature-r50.md), small T approaches one "
                  "global threshold.")
    iterations: int = 20  # ADMM iterations per module
    ramp: int = 15  # iterations over which the sparsity ramps (cubically) to its target
    rho: float = 1.0  # ADMM penalty, on columns normalised by sqrt(diag G)
    ridge: float = shared(DEFAULT_RIDGE, RIDGE)  # refit ridge, a fraction of mean diag G
    intercept: bool = True  # the refit also fits a bias per output (FLAP's compensation, fitted)
    batch_blocks: int = 4  # calibration blocks per layer forward
    max_fraction: float = 0.9  # no module loses more than this ...
    max_over: float = 0.3  # ... or more than the ratio plus this
    # positions at the start of every calibration block left out of pass 2's least squares
    skip: int = shared(DEFAULT_SINK_SKIP, SINK_SKIP)

    def __post_init__(self) -> None:
        if not self.temperature > 0:  # inf is allowed (uniform), nan is not
            raise GraspError(f"--temperature {self.temperature} must be > 0 (or inf for a "
                             "uniform allocation)")
        check_number("--reconstruct-ridge", self.ridge, low=0, low_open=True)
        check_number("--sink-skip", self.skip, low=0, integer=True)

    def record(self, num_samples: int) -> dict[str, Any]:
        return {"structprune": self.to_json()}

    def to_json(self) -> dict[str, Any]:
        t = self.temperature if math.isfinite(self.temperature) else "inf"  # JSON has no inf
        return {"temperature": t, "iterations": self.iterations,
                "ramp": self.ramp, "rho": self.rho, "ridge": self.ridge,
                "intercept": self.intercept, "skip": self.skip}


def prune(inp: MethodInput) -> MethodResult:
    from tqdm.auto import tqdm

    s = inp.settings or StructPruneSettings()
    src, layout = inp.layers, inp.layout
    if src is None or inp.blocks is None:
        raise ValueError("structprune streams layers (MethodInput.layers) over calibration blocks")
    energy = np.zeros(layout.num_units)
    states = initial_states(src, inp.blocks, s.batch_blocks)
    for i in tqdm(range(src.num_layers), desc="structprune scores", unit="layer",
                  disable=not inp.progress):
        layer = src.layer(i)
        acts = [_activations(layer, x, kw[i]) for x, kw in states]
        for kind, seg_energy in _unit_energies(layer, inp.shape, acts).items():
            seg = layout.segment(i, kind)
            energy[seg.start:seg.stop] = seg_energy
        states = [(call_layer(layer, x, kw[i]), kw) for x, kw in states]
        del layer, acts
    fractions = allocate(layout, energy, inp.prune_ratio, s.temperature, s.max_fraction,
                         s.max_over)
    counts = kept_counts(layout, fractions, inp.budget, inp.kv_budget)
    return choose_and_refit(src, inp.shape, layout, counts, inp.blocks, s, inp.progress)


def choose_and_refit(src: LayerSource, shape: ModelShape, layout: UnitLayout,
                     counts: dict[tuple[int, str], int], blocks: torch.Tensor,
                     s: StructPruneSettings, progress: bool = True) -> MethodResult:
    """Pass 2 at given per-segment counts: layer by layer on the pruned path, choose the units
    by ADMM on the layer's reconstruction objective, refit, move on. StructPrune gets the
    counts from its allocation; ``--reselect`` from another method's plan."""
    from tqdm.auto import tqdm

    if not 0 <= s.skip < blocks.shape[1]:
        raise GraspError(f"--seq-len {blocks.shape[1]}: pass 2 leaves the first {s.skip} "
                         f"position(s) of every block out; it needs 0 <= skip < --seq-len")
    mask = np.zeros(layout.num_units, dtype=bool)
    weights = SpilledTensors()  # refitted matrices on disk: memory stays one layer's
    biases: list[dict[str, np.ndarray]] = []
    states = initial_states(src, blocks, s.batch_blocks)
    for i in tqdm(range(src.num_layers), desc="choose + refit", unit="layer",
                  disable=not progress):
        layer = src.layer(i)
        states = _prune_layer(layer, i, shape, layout, counts, states, s, mask, weights, biases)
        del layer
    record = {**s.to_json(), "target": "dense layer on the pruned path's inputs",
              "by": "structprune pass 2", "ffn_scales": "none",
              "blocks": int(blocks.shape[0]), "seq_len": int(blocks.shape[1])}
    return MethodResult(mask, replaced=weights, reconstruction=record,
                        biases=biases if s.intercept else None)


def segment_counts(layout: UnitLayout, mask: np.ndarray) -> dict[tuple[int, str], int]:
    """Kept units per (layer, kind) segment of ``mask``."""
    return {(g.layer, g.kind): int(mask[g.start:g.stop].sum()) for g in layout.segments}


def _activations(layer, x: torch.Tensor, kw: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense layer's inputs to o_proj (all query heads) and to down_proj on ``x``."""
    box: dict[str, torch.Tensor] = {}
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
                 lambda _m, a: box.__setitem__("o", a[0].detach())),
             layer.mlp.down_proj.register_forward_pre_hook(
                 lambda _m, a: box.__setitem__("down", a[0].detach()))]
    try:
        call_layer(layer, x, kw)
    finally:
        for h in hooks:
            h.remove()
    return box["o"], box["down"]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).double()


def _gram(parts: list[torch.Tensor]) -> torch.Tensor:
    total: torch.Tensor | None = None
    for p in parts:
        f = _flat(p)
        total = f.T @ f if total is None else total + f.T @ f
    if total is None:
        raise ValueError("no activations to build a Gram matrix from")
    return total


@torch.no_grad()
def _unit_energies(layer, shape: ModelShape, acts) -> dict[str, np.ndarray]:
    """Single-unit removal energies of one dense layer (see the module docstring)."""
    gh = shape.group_size * shape.head_dim
    g_o = _gram([a for a, _ in acts])
    w_o = layer.self_attn.o_proj.weight.double()
    kv = [float(((w_o[:, b] @ g_o[b, b]) * w_o[:, b]).sum())
          for b in (slice(g * gh, (g + 1) * gh) for g in range(w_o.shape[1] // gh))]
    h_sq = sum(_flat(h).pow(2).sum(0) for _, h in acts)
    ffn = layer.mlp.down_proj.weight.double().pow(2).sum(0) * h_sq
    return {KV: np.asarray(kv), FFN: ffn.cpu().numpy()}


def admm_keep(weight: torch.Tensor, gram: torch.Tensor, groups: torch.Tensor, keep: int,
              s: StructPruneSettings) -> torch.Tensor:
    """The ``keep`` column groups (rows of ``groups``, sorted) ADMM leaves nonzero in
    min ||A W^T - A Z^T||^2 subject to Z having that many nonzero groups."""
    n = groups.shape[0]
    d = gram.diagonal().clamp_min(1e-12 * float(gram.diagonal().max()) + 1e-30).sqrt()
    g = (gram / d[:, None] / d[None, :]).float()
    w = (weight.double() * d[None, :]).float()
    b = w @ g
    inv = torch.linalg.inv(g + s.rho * torch.eye(g.shape[0], dtype=g.dtype, device=g.device))
    z, u = w.clone(), torch.zeros_like(w)
    top = torch.arange(n, device=g.device)
    for it in range(1, s.iterations + 1):
        w_k = (b + s.rho * (z - u)) @ inv
        v = w_k + u
        k = n - int(round((n - keep) * (1.0 - (1.0 - min(it / s.ramp, 1.0)) ** 3)))
        top = torch.topk(v[:, groups].pow(2).sum(dim=(0, 2)), k).indices
        cols = groups[top].reshape(-1)
        z = torch.zeros_like(v)
        z[:, cols] = v[:, cols]
        u = u + w_k - z
    return torch.sort(top[:keep]).values


def _refit(weight: torch.Tensor, gram: torch.Tensor, sums: torch.Tensor, n: int,
           cols: torch.Tensor, s: StructPruneSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept columns ``cols`` refitted by ridge least squares (with a bias when
    ``s.intercept``) to the dense output A W^T; (weight, bias)."""
    w = weight.double()
    intercept = (sums[cols], sums @ w.T, n) if s.intercept else None
    new_w, bias = solve_ridge(gram[cols][:, cols], gram[cols] @ w.T, s.ridge, intercept)
    return new_w, bias if bias is not None else torch.zeros(w.shape[0])


def _sums(parts: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    total = sum(_flat(p).sum(0) for p in parts)  # (a tensor: there is at least one part)
    return cast(torch.Tensor, total), sum(_flat(p).shape[0] for p in parts)


def _segment_groups(seg: Segment, width: int, device) -> torch.Tensor:
    return torch.arange(seg.size * width, device=device).view(seg.size, width)


@torch.no_grad()
def _prune_layer(layer, i: int, shape: ModelShape, layout: UnitLayout, counts, states,
                 s: StructPruneSettings, mask: np.ndarray, weights: SpilledTensors,
                 biases: list) -> list[tuple]:
    """Choose and refit layer ``i``'s units on the pruned path; the next layer's states."""
    attn, mlp = layer.self_attn, layer.mlp
    heads = [input_of(attn.o_proj, attn, hidden_states=layer.input_layernorm(x), **kw[i])
             for x, kw in states]  # attention only: the MLP's output is not needed here
    seg = layout.segment(i, KV)
    w_o = attn.o_proj.weight
    groups = _segment_groups(seg, shape.group_size * shape.head_dim, w_o.device)
    fit = [a[:, s.skip:] for a in heads]
    gram = _gram(fit)
    kept = admm_keep(w_o, gram, groups, counts[(i, KV)], s)
    mask[seg.start + kept.cpu().numpy()] = True
    cols = groups[kept].reshape(-1)
    new_o, b_o = _refit(w_o, gram, *_sums(fit), cols, s)
    del fit
    weights.put(tensor_name(i, ATTN), new_o)
    del gram

    mid, channels = [], []
    for (x, _kw), a in zip(states, heads, strict=True):
        h = x + _linear(a[..., cols], new_o, _plus(attn.o_proj.bias, b_o))
        z = layer.post_attention_layernorm(h)
        mid.append(h)
        channels.append(input_of(mlp.down_proj, mlp, z))
    seg = layout.segment(i, FFN)
    w_d = mlp.down_proj.weight
    groups = _segment_groups(seg, 1, w_d.device)
    fit = [c[:, s.skip:] for c in channels]
    gram = _gram(fit)
    kept = admm_keep(w_d, gram, groups, counts[(i, FFN)], s)
    mask[seg.start + kept.cpu().numpy()] = True
    new_d, b_d = _refit(w_d, gram, *_sums(fit), kept, s)
    del fit
    weights.put(tensor_name(i, MLP), new_d)
    biases.append({"o": b_o.double().cpu().numpy(), "down": b_d.double().cpu().numpy()})
    return [(h + _linear(c[..., kept], new_d, _plus(mlp.down_proj.bias, b_d)), kw)
            for h, c, (_, kw) in zip(mid, channels, states, strict=True)]


def _plus(bias: torch.Tensor | None, extra: torch.Tensor) -> torch.Tensor:
    return extra if bias is None else bias.float() + extra.to(bias.device)


def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.float() @ w.to(x.device).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
