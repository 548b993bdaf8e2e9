"""What every pruning method takes and returns.

A method is a function ``MethodInput -> MethodResult``: the model, its shape and unit layout,
calibration blocks, the budget and the method's own settings in; a keep-mask (and optional
stage-B scales and compensation biases) out. No paths, no printing: progress bars only when
``progress`` is set, and resumable state only through ``store``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from ..core.projection import UnitLayout
from ..core.shape import ModelShape

StepFn = Callable[[str, int, np.ndarray], None]  # (stage, step, hard mask) for tests/monitors


class StateStore(Protocol):
    """Where a long method keeps resumable state between runs (the job decides where)."""

    def load(self) -> dict[str, Any]: ...

    def save(self, **parts: Any) -> None: ...


class LayerSource(Protocol):
    """A model one decoder layer at a time (``sources.stream``), for memory-bounded methods."""

    num_layers: int

    def layer(self, i: int) -> torch.nn.Module: ...

    def embed(self, blocks: torch.Tensor) -> torch.Tensor: ...

    def layer_kwargs(self, hidden: torch.Tensor) -> list[dict[str, Any]]: ...


class NoStore:
    """A store that keeps nothing: the method starts from scratch every time."""

    def load(self) -> dict[str, Any]:
        return {}

    def save(self, **parts: Any) -> None:
        return None


@dataclass(frozen=True)
class MethodInput:
    model: torch.nn.Module | None  # frozen, eval mode, on its device; None when streamed
    shape: ModelShape
    layout: UnitLayout
    budget: int  # parameters of the prunable units that may be kept
    prune_ratio: float  # the fraction asked (uniform methods spread it over layers)
    blocks: torch.Tensor | None = None  # (n, seq_len) calibration token ids
    held_out: torch.Tensor | None = None  # (m, seq_len) blocks for stage B (GRASPrune)
    settings: Any = None  # the method's own settings object
    seed: int = 0
    progress: bool = True
    store: StateStore = field(default_factory=NoStore)
    save_every: int = 0  # steps between saves to ``store``; 0: never
    on_step: StepFn | None = None
    layers: LayerSource | None = None  # the streamed model, for methods with ``streams``
    kv_budget: int | None = None  # KV heads that may be kept (--kv-ratio); None: no KV budget


@dataclass
class StageLog:
    """What a training stage did, for the run summary."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return float(np.mean(tail)) if tail else math.nan


@dataclass
class MethodResult:
    """The plan's content: which units stay, with what scale, and any compensation biases."""

    mask: np.ndarray  # flat keep-mask over the layout's units
    scales: np.ndarray | None = None  # flat per-unit stage-B scales
    biases: list[dict[str, np.ndarray]] | None = None  # per layer {"o": ..., "down": ...}
    stages: dict[str, StageLog] = field(default_factory=dict)
    trajectory: list[Any] | None = None  # GISP: the nested removal order
    # refitted o_proj/down_proj weights (sliced shapes) and their record, for the plan
    replaced: Mapping[str, torch.Tensor] | None = None
    reconstruction: dict[str, Any] | None = None


@dataclass(frozen=True)
class Method:
    """A registry entry: adding a method is one module with its function and one entry."""

    name: str
    run: Callable[[MethodInput], MethodResult]
    summary: str  # one line for --help
    uses_calibration: bool = True
    streams: bool = False  # reads one layer at a time (MethodInput.layers), never the whole model
