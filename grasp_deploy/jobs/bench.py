"""The bench job: both models checked and located, then the A/B load test (``loadtest.ab``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checkpoint import format as fmt
from ..checkpoint.parallel import layer_sizes
from ..core.fsutil import DirKind, check_target
from ..loadtest.ab import run_ab
from ..loadtest.config import BenchConfig
from ..loadtest.report import RESULTS_FILE
from ..loadtest.soak import run_soak
from ..sources.text import parse_source
from .serve import check_parallel, check_quantized, servable

BENCH_DIR = DirKind("bench", RESULTS_FILE)


def resolve(config: BenchConfig, verify: bool = True) -> BenchConfig:
    """``config`` with both models at the locations vLLM opens and the dense vocabulary size
    (prompts draw token ids from it); a model that cannot be served fails here."""
    pruned, _, pruned_config = servable(config.pruned, verify)
    dense, _, dense_config = servable(config.dense, verify)
    for model, hf_config in ((config.pruned, pruned_config), (config.dense, dense_config)):
        check_parallel(model, hf_config, config.tensor_parallel, config.pipeline_parallel)
        check_quantized(model, hf_config, config.dtype)
    if config.prompts:
        check_prompts(config.prompts)
    return replace(config, pruned=pruned, dense=dense, vocab_size=int(dense_config.vocab_size),
                   tokenizer=dense,
                   labels={**config.labels,
                           **_width_labels(Path(pruned), pruned_config, dense_config)})


def check_prompts(spec: str) -> None:
    """A bad ``--prompts`` source is one error before any server starts."""
    parse_source(spec, default_split="test", allow_self=False, flag="--prompts")


def _width_labels(checkpoint: Path, pruned_config: Any, dense_config: Any) -> dict[str, Any]:
    """The FFN widths of both models (for the report and its hints when pruned is not faster),
    read per layer: either side may be a pruned checkpoint (two plans compared)."""
    if not (checkpoint / fmt.MANIFEST).is_file():
        return {}
    pruned = [size[2] for size in layer_sizes(pruned_config)]
    dense = [size[2] for size in layer_sizes(dense_config)]
    return {"FFN widths": {"dense": _widths_text(dense), "pruned": _widths_text(pruned),
                           "gcd": math.gcd(*pruned)}}


def _widths_text(widths: list[int]) -> str:
    if len(set(widths)) == 1:
        return f"{widths[0]} (all layers)"
    return f"{min(widths)}..{max(widths)}, gcd {math.gcd(*widths)}"


def run_bench(config: BenchConfig, force: bool = False, say: Callable[[str], None] = print,
              verify: bool = True) -> dict[str, Any]:
    check_target(Path(config.out), force, BENCH_DIR)
    if config.duration is not None:
        return run_soak(resolve(config, verify), say=say)
    return run_ab(resolve(config, verify), say=say)
