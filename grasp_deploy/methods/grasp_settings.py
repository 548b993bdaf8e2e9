"""GRASPrune's settings and its named recipes (the method is ``grasp``, the training ``gates``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..core.checks import check_number
from ..core.errors import GraspError
from ..core.projection import TieBreak
from .base import MethodSettings, flag

RANKINGS = ("score", "cost")  # what the projection ranks units by
INITS = ("zero", "taylor")
LOSSES = ("ce", "kd", "ce+kd")

# Named recipes: the paper's (faithful) and ours, built from the "past the paper" list and kept
# only where it measurably helped (bench/results/quality.md records every variant tried:
# Taylor initial scores are the big win, rank tie-breaking helps alone, distillation did not).
# Both calibrate on 512 blocks of 512 tokens (the prune job's defaults).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(epochs=4, tau=1.5, lr=1e-2, tie_break="index", projection="score",
                  init="zero", loss="ce"),
    "best": dict(epochs=4, tau=1.5, lr=1e-2, tie_break="rank", projection="score",
                 init="taylor", loss="ce"),
}
DEFAULT_RECIPE = "best"


@dataclass(frozen=True)
class GraspSettings(MethodSettings):
    """GRASPrune's settings. The defaults are the ``best`` recipe, as on the command line."""

    epochs: int = flag(4, "Passes over the blocks in stage A.", short="-e",
                       default_text="the recipe's, 4")
    scale_epochs: int = flag(1, "Passes of stage B (per-unit scales, on held-out blocks); 0 "
                                "skips it.")
    lr: float = flag(1e-2, "AdamW learning rate.", default_text="the recipe's, 0.01")
    tau: float = flag(1.5, "Temperature of the keep probability sigmoid(score / tau).",
                      default_text="the recipe's, 1.5")
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    batch_size: int = 1
    tie_break: TieBreak = flag(
        "rank", "Order of equal scores in the projection: rank (a near-uniform first mask) or "
                "index (flat unit order, as a stable sort of the reference gives).",
        choices=("rank", "index"), default_text="paper: index, best: rank")
    projection: str = flag("score", "Rank units by keep probability (score) or by probability "
                                    "per parameter (cost: greedy knapsack).",
                           choices=RANKINGS, default_text="the recipe's, score")
    init: str = flag(
        "taylor",
        "Initial gate scores: zero, or from first-order Taylor importance.",
        choices=INITS,
        default_text="paper: zero, best: taylor",
    )
    loss: str = flag("ce", "Gate loss: LM cross-entropy, KL to the dense logits, or both.",
                     choices=LOSSES, default_text="the recipe's, ce")
    init_samples: int = 32  # calibration blocks the Taylor initial scores average over
    recipe: str = flag(
        DEFAULT_RECIPE, "The named settings these start from: paper (4 epochs of 512 x 512, tau "
                        "1.5, lr 1e-2, score ranking, zero init, LM loss, index tie-break) or "
                        "best (ours: the same with Taylor-informed initial scores and rank "
                        "tie-break; bench/results/quality.md). The options of this group "
                        "override single settings.", choices=tuple(RECIPES))
    scale_samples: int | None = flag(None, "Held-out blocks for stage B.",
                                     default_text="--num-samples")

    def __post_init__(self) -> None:
        counts: tuple[tuple[str, int, int], ...] = (
            ("--epochs", self.epochs, 1), ("--scale-epochs", self.scale_epochs, 0),
            ("batch size", self.batch_size, 1), ("init samples", self.init_samples, 1))
        for name, count, least in counts:
            check_number(name, count, low=least, integer=True)
        for name, rate in (("--lr", self.lr), ("--tau", self.tau), ("eps", self.eps)):
            check_number(name, rate, low=0, low_open=True)
        for beta in self.betas:
            check_number("betas", beta, low=0, high=1, high_open=True)
        for name, word, allowed in (("--projection", self.projection, RANKINGS),
                                    ("--init", self.init, INITS), ("--loss", self.loss, LOSSES),
                                    ("--tie-break", self.tie_break, ("rank", "index")),
                                    ("--recipe", self.recipe, tuple(RECIPES))):
            if word not in allowed:
                raise GraspError(f"{name} {word!r} is not one of {', '.join(allowed)}")
        if self.scale_samples is not None:
            check_number("--scale-samples", self.scale_samples, low=0, integer=True)

    @classmethod
    def from_recipe(cls, recipe: str = DEFAULT_RECIPE, **overrides: Any) -> GraspSettings:
        """A named recipe with single settings overridden (``None`` means: the recipe's)."""
        if recipe not in RECIPES:
            raise GraspError(f"--recipe {recipe!r} is unknown; use one of {', '.join(RECIPES)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**RECIPES[recipe], **given, "recipe": recipe})

    @classmethod
    def from_options(cls, **given: Any) -> GraspSettings:
        return cls.from_recipe(given.pop("recipe", DEFAULT_RECIPE), **given)

    def held_out(self, num_samples: int) -> int:
        if self.scale_epochs == 0:
            return 0
        return num_samples if self.scale_samples is None else self.scale_samples

    def record(self, num_samples: int) -> dict[str, Any]:
        return {**asdict(self), "betas": list(self.betas),
                "scale_samples": self.held_out(num_samples)}
