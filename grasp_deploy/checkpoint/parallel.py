"""Whether a model's layers split over vLLM's tensor- and pipeline-parallel ranks.

Stdlib and the format only: the vLLM adapter checks inside the server, and ``serve`` checks
before it starts one. vLLM's rules (``vllm/model_executor/layers/linear.py`` and the Llama
attention): every rank takes an equal share of a layer's query heads and FFN channels; KV heads
are shared out evenly when there are at least as many as ranks, else each is replicated, which
needs the rank count to be a multiple of theirs. Pipeline stages take whole layers.
"""

from __future__ import annotations

from typing import Any

from .format import layer_config


def layer_sizes(config: Any) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, FFN width) of every layer: a pruned checkpoint's own per layer,
    a dense model's the same in each."""
    sizes = []
    for i in range(config.num_hidden_layers):
        layer = layer_config(config, i)
        sizes.append((int(layer.num_attention_heads), int(layer.num_key_value_heads),
                      int(layer.intermediate_size)))
    return sizes


def tp_problems(sizes: list[tuple[int, int, int]], tp: int) -> list[str]:
    """Why each layer cannot be split over ``tp`` ranks (empty when all can)."""
    problems = []
    for i, (query, kv, ffn) in enumerate(sizes):
        kv_ok = kv % tp == 0 if kv >= tp else tp % kv == 0
        if query % tp or not kv_ok or ffn % tp:
            problems.append(f"layer {i} ({query} query / {kv} KV heads, FFN {ffn})")
    return problems


def parallel_problem(config: Any, tp: int = 1, pp: int = 1) -> str | None:
    """Why ``config`` cannot be served at tensor-parallel size ``tp`` and pipeline-parallel
    size ``pp``, in one sentence; None when it can."""
    layers = config.num_hidden_layers
    if pp > layers:
        return (f"pipeline parallel size {pp} exceeds the model's {layers} layers; use at most "
                f"{layers}")
    if tp <= 1:
        return None
    bad = tp_problems(layer_sizes(config), tp)
    if not bad:
        return None
    shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    again = (f", or re-prune with 'grasp-deploy prune --tp {tp}'"
             if getattr(config, "is_heterogeneous", False) else "")
    return (f"tensor parallel size {tp} cannot split {len(bad)} of {layers} layers: {shown}; "
            f"serve with a size that divides every layer's query heads and FFN width (and its "
            f"KV heads, or is a multiple of them){again}")
