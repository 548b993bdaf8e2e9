"""The bench job: both models checked and located, then the A/B load test (``loadtest.ab``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..core.fsutil import check_target
from ..loadtest.ab import BenchConfig, run_ab
from ..loadtest.soak import run_soak
from .serve import servable


def resolve(config: BenchConfig, verify: bool = True) -> BenchConfig:
    """``config`` with both models at the locations vLLM opens and the dense vocabulary size
    (prompts draw token ids from it); a model that cannot be served fails here."""
    pruned, _, _ = servable(config.pruned, verify)
    dense, _, dense_config = servable(config.dense, verify)
    return replace(config, pruned=pruned, dense=dense, vocab_size=int(dense_config.vocab_size))


def run_bench(config: BenchConfig, force: bool = False, say: Callable[[str], None] = print,
              verify: bool = True) -> dict[str, Any]:
    check_target(Path(config.out), force, kind="bench")
    if config.duration is not None:
        return run_soak(resolve(config, verify), say=say)
    return run_ab(resolve(config, verify), say=say)
