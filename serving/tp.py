"""Tensor-parallel compatibility of per-layer head counts (no vLLM import: testable anywhere)."""

from __future__ import annotations


def tp_problems(kv_heads: list[int], query_per_kv: int, tp: int) -> list[str]:
    """Why each layer cannot be split over ``tp`` ranks (empty when all can).

    vLLM shards query heads evenly, and KV heads evenly when there are at least ``tp`` of
    them, or replicates them when ``tp`` is a multiple of their count.
    """
    problems = []
    for i, kv in enumerate(kv_heads):
        q = kv * query_per_kv
        kv_ok = kv % tp == 0 if kv >= tp else tp % kv == 0
        if q % tp or not kv_ok:
            problems.append(f"layer {i} ({kv} KV / {q} query heads)")
    return problems


def check_tp(kv_heads: list[int], query_per_kv: int, tp: int) -> None:
    if tp <= 1:
        return
    bad = tp_problems(kv_heads, query_per_kv, tp)
    if bad:
        raise ValueError(
            f"tensor parallel size {tp} cannot split {len(bad)} layer(s): {', '.join(bad[:4])}"
            f"{' ...' if len(bad) > 4 else ''}; serve with a tensor parallel size that divides "
            f"every layer's heads, or re-prune with 'grasp-deploy prune --tp {tp}'")
