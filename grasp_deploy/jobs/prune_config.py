"""What the prune job is asked: the run's own settings, the method's settings object and the
post-steps' (composed, never branched on by name), checked before any weight loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.quant import SCHEMES, width_multiple
from ..core.align import AUTO, parse_align
from ..core.checks import check_number
from ..core.errors import GraspError
from ..methods import POST_STEPS, Method, PostStep, get_method
from ..methods.base import FLAG, option_name


@dataclass(frozen=True)
class PruneConfig:
    prune_ratio: float
    out: Path
    kv_ratio: float | None = None  # KV bytes per token at most this x dense; None: no KV budget
    model: str | None = None
    method: str = "grasp"
    calib: str = "wikitext2"
    num_samples: int = 512
    seq_len: int = 512
    method_settings: Any = None  # the method's settings dataclass; None: its defaults
    post_steps: tuple[Any, ...] = ()  # post-step settings (e.g. ReconstructSettings), in order
    align: int | str = AUTO  # FFN width multiple, or "auto" (core.align)
    tp: int = 1
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    force: bool = False
    checkpoint_every: int = 50
    progress: bool = True
    quantize: str | None = None  # the scheme the plan will be exported to (w4a16: widths x32)

    def __post_init__(self) -> None:
        if not (isinstance(self.prune_ratio, (int, float)) and 0.0 < self.prune_ratio < 1.0):
            raise GraspError(f"--prune-ratio {self.prune_ratio} is outside (0, 1); give the "
                             "fraction of prunable parameters to remove, e.g. 0.3")
        if self.kv_ratio is not None and not (isinstance(self.kv_ratio, (int, float))
                                              and 0.0 < self.kv_ratio <= 1.0):
            raise GraspError(f"--kv-ratio {self.kv_ratio} is outside (0, 1]; give the fraction "
                             "of the dense model's KV-cache bytes per token to keep, e.g. 0.5")
        method = get_method(self.method)
        if self.method_settings is not None and not isinstance(self.method_settings,
                                                               method.settings):
            raise GraspError(f"settings of type {type(self.method_settings).__name__} do not "
                             f"belong to --method {self.method} ({method.settings.__name__})")
        parse_align(self.align)
        self._check_quantize()
        for name, value in (("--num-samples", self.num_samples), ("--seq-len", self.seq_len),
                            ("--tp", self.tp)):
            if value < 1:
                raise GraspError(f"{name} {value} must be a positive integer")
        if self.seq_len < 2:
            raise GraspError(f"--seq-len {self.seq_len} is too short; use at least 2")
        check_number("--checkpoint-every", self.checkpoint_every, low=0, integer=True)
        check_number("--seed", self.seed, integer=True)
        self._check_post_steps(method)
        if method.streams and self.uses_calibration and self.calib == "self":
            raise GraspError(f"--calib self samples text from the whole model, which --method "
                             f"{self.method} never loads; give a text source (file:PATH or "
                             "wikitext2)")

    def _check_quantize(self) -> None:
        if self.quantize is None:
            return
        if self.quantize not in SCHEMES:  # prune-and-serve checks its own --quantize first
            raise GraspError(f"--for-quantize {self.quantize!r} is not a scheme export writes; "
                             f"use one of: {', '.join(SCHEMES)}")
        align, multiple = self.align_value, self.width_multiple
        if align != AUTO and align % multiple:
            raise GraspError(f"--align {align} leaves FFN widths that {self.quantize}'s kernel "
                             f"(vLLM's 4-bit CPU kernel) refuses: it needs multiples of "
                             f"{multiple}; use --align auto or a multiple of {multiple}")

    @property
    def width_multiple(self) -> int:
        """What every FFN width must be a multiple of for the quantization the plan is for."""
        return width_multiple(self.quantize)

    def _check_post_steps(self, method: Method) -> None:
        free = self.settings.without_calibration()
        for settings in self.post_steps:
            step, asked = post_step_of(settings), asked_as(settings)
            if step.refits and method.refits:
                raise GraspError(f"{asked} does not combine with --method {method.name}, which "
                                 "ends with its own layer-wise refit; drop it (--reconstruct-"
                                 "ridge and --sink-skip set that refit)")
            if method.streams:
                raise GraspError(f"{asked} needs the whole model, which --method {method.name} "
                                 "never loads (it reads one layer at a time); drop it")
            if free is not None:
                raise GraspError(f"{asked} needs calibration blocks; {free} takes a plan "
                                 "without them: drop one of the two")

    @property
    def settings(self) -> Any:
        """The method's settings: as given, or its defaults."""
        if self.method_settings is not None:
            return self.method_settings
        return get_method(self.method).default_settings()

    @property
    def align_value(self) -> int | str:
        return parse_align(self.align)  # "64" -> 64, "AUTO" -> "auto"

    @property
    def uses_calibration(self) -> bool:
        if self.settings.without_calibration() is not None:
            return False
        return get_method(self.method).uses_calibration or bool(self.post_steps)

    @property
    def held_out(self) -> int:
        """Calibration blocks the method wants beside --num-samples (GRASPrune's stage B)."""
        return self.settings.held_out(self.num_samples)

    def settings_record(self, align: int, device_type: str) -> dict[str, Any]:
        """What the plan records of the settings (the same keys in the same order, always);
        ``align`` is the FFN multiple used: ``self.align`` resolved for the model and device."""
        rule = f"auto ({device_type})" if self.align_value == AUTO else "given"
        if self.width_multiple > 1:
            rule += f", for {self.quantize}"
        record: dict[str, Any] = {"align": align, "align_rule": rule, "tp": self.tp}
        if self.uses_calibration:
            record.update(num_samples=self.num_samples, seq_len=self.seq_len, dtype=self.dtype)
        record.update(self.settings.record(self.num_samples))
        for settings in self.post_steps:
            record[post_step_of(settings).name] = settings.to_json()
        return record


def post_step_of(settings: Any) -> PostStep:
    """The registered post-step whose settings type ``settings`` is."""
    for step in POST_STEPS.values():
        if type(settings) is step.settings:
            return step
    raise GraspError(f"{type(settings).__name__} is not the settings of any post-step "
                     f"({', '.join(POST_STEPS)})")


def asked_as(settings: Any) -> str:
    """The flag that turned a post-step on: the first of its own flags that implies it and is
    set, else its switch (for messages that name what the user typed)."""
    for f in dataclasses.fields(settings):
        if FLAG in f.metadata and f.metadata[FLAG].enables and getattr(settings, f.name):
            return option_name(f)
    return post_step_of(settings).switch
