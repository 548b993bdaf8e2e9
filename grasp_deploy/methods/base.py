"""What every pruning method and post-step takes and returns, and how each owns its settings.

A method is a function ``MethodInput -> MethodResult``: the model, its shape and unit layout,
calibration blocks, the budget and the method's own settings in; a keep-mask (and optional
stage-B scales and compensation biases) out. No printing: progress bars only when ``progress``
is set, and resumable state only through ``store``.

A method's settings are a frozen dataclass deriving from ``MethodSettings``; the fields made
with ``flag(...)`` are its command-line options (name, default and help come from the field,
so the CLI and the library cannot disagree). A post-step (``PostStep``: run after any method
on its plan, such as ``--reconstruct``) owns its settings the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..core.projection import UnitLayout
from ..core.shape import ModelShape

if TYPE_CHECKING:
    from ..core.plan import Plan

StepFn = Callable[[str, int, np.ndarray], None]  # (stage, step, hard mask) for tests/monitors


class StateStore(Protocol):
    """Where a long method keeps resumable state between runs (the job decides where)."""

    def load(self) -> dict[str, Any]: ...

    def save(self, **parts: Any) -> None: ...


class LayerSource(Protocol):
    """A model one decoder layer at a time (``sources.stream``), for memory-bounded methods."""

    num_layers: int

    def layer(self, i: int) -> torch.nn.Module: ...

    def embed(self, blocks: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """For token ids ``blocks`` (n, seq_len): the hidden states entering layer 0 and the
        keyword arguments each layer receives for them (RoPE, its attention mask)."""
        ...


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
    kv_ratio: float | None = None  # the --kv-ratio asked, for records that must match it
    fingerprint: str = ""  # the model's weights (models.fingerprint), for records tied to them

    @property
    def loaded(self) -> torch.nn.Module:
        """The whole model (every method but a streaming one has it)."""
        if self.model is None:
            raise ValueError("this method needs the whole model; it was given a layer stream")
        return self.model

    @property
    def calibration(self) -> torch.Tensor:
        """The calibration blocks (every method that uses calibration has them)."""
        if self.blocks is None:
            raise ValueError("this method needs calibration blocks; none were given")
        return self.blocks


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
    files: dict[str, Any] = field(default_factory=dict)  # more JSON files for PLAN_DIR, by name
    calibration: dict[str, Any] | None = (
        None  # when the plan descends from other data than this run's
    )
    # refitted o_proj/down_proj weights (sliced shapes) and their record, for the plan
    replaced: Mapping[str, torch.Tensor] | None = None
    reconstruction: dict[str, Any] | None = None


FLAG = "grasp_deploy.flag"  # dataclass field metadata key


@dataclass(frozen=True)
class Flag:
    """What makes a settings field a command-line option (see ``flag``)."""

    help: str
    name: str | None = None  # default: "--" and the field name with dashes
    short: str | None = None  # e.g. "-e"
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # for --help when the field's default is not what applies
    enables: bool = False  # giving it turns its part on (--reselect turns on the refit)


def flag(default: Any, help: str, **kw: Any) -> Any:
    """A settings field that is also a command-line option: ``epochs: int = flag(4, "...")``."""
    return field(default=default, metadata={FLAG: Flag(help, **kw)})


def option_name(f: dataclasses.Field) -> str:
    spec: Flag = f.metadata[FLAG]
    return spec.name or "--" + f.name.replace("_", "-")


def flag_fields(settings_type: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options, in order."""
    return [f for f in dataclasses.fields(settings_type) if FLAG in f.metadata]


class MethodSettings:
    """The base of every method's settings (a frozen dataclass in the method's module).

    Override what differs from "needs calibration, no held-out blocks, nothing to record"."""

    @classmethod
    def from_options(cls, **given: Any) -> Any:
        """The settings from the options given (fields not given keep their defaults)."""
        return cls(**given)

    def record(self, num_samples: int) -> dict[str, Any]:
        """What the plan's ``settings`` records of them (after the job's own keys)."""
        return {}

    def held_out(self, num_samples: int) -> int:
        """Calibration blocks wanted beside the ``num_samples`` ones (GRASPrune's stage B)."""
        return 0

    def without_calibration(self) -> str | None:
        """The option that makes this run take no calibration blocks, or None."""
        return None

    def unused(self) -> dict[str, str]:
        """Fields that have no effect given the others, each with what it needs instead (an
        option set explicitly but unused is an error)."""
        return {}


@dataclass(frozen=True)
class NoSettings(MethodSettings):
    """Settings of a method that has none of its own."""


@dataclass(frozen=True)
class Method:
    """A registry entry: adding a method is one module with its function and one entry."""

    name: str
    run: Callable[[MethodInput], MethodResult]
    summary: str  # one line for --help
    settings: type = NoSettings  # a MethodSettings dataclass
    uses_calibration: bool = True
    streams: bool = False  # reads one layer at a time (MethodInput.layers), never the whole model
    refits: bool = False  # ends with its own layer-wise refit: a refitting post-step adds nothing

    def default_settings(self) -> Any:
        return self.settings()


@dataclass(frozen=True)
class PostInput:
    """What a post-step gets besides the plan: the loaded model and the calibration blocks."""

    model: torch.nn.Module
    shape: ModelShape
    layout: UnitLayout
    blocks: torch.Tensor  # (n, seq_len): every calibration block the run has
    make_plan: Callable[[MethodResult], Plan]  # a plan from a result, as the job makes them
    progress: bool = True


@dataclass(frozen=True)
class PostStep:
    """A step any method's plan can go through (``--reconstruct``), with its own settings."""

    name: str  # the key its record has in the plan's settings
    switch: str  # the flag that turns it on, e.g. "--reconstruct"
    help: str
    settings: type
    run: Callable[[Any, Plan, PostInput], Plan]  # (settings, plan, input) -> new plan
    refits: bool = False  # refits the layers itself: not after a method that already does
