import numpy as np
import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.projection import UnitLayout, check_budget, project
from grasp_deploy.core.shape import FFN, KV, ModelShape

from conftest import tiny_config


def layout_for(layers=4, ffn=96, kv=2, heads=4, align=1, tp=1):
    shape = ModelShape.from_config(tiny_config(num_hidden_layers=layers, intermediate_size=ffn,
                                               num_key_value_heads=kv, num_attention_heads=heads))
    return UnitLayout.from_shape(shape, align=align, tp=tp)


def kept_counts(layout, mask):
    return {(s.layer, s.kind): int(mask[s.start:s.stop].sum()) for s in layout.segments}


@pytest.mark.parametrize("align,tp,kv,heads", [(1, 1, 2, 4), (8, 1, 2, 4), (1, 2, 4, 4),
                                               (16, 2, 4, 8), (1, 1, 4, 4)])
@pytest.mark.parametrize("keep", [0.15, 0.4, 0.7, 0.95])
def test_budget_minimum_and_alignment_hold_for_random_scores(align, tp, kv, heads, keep):
    layout = layout_for(align=align, tp=tp, kv=kv, heads=heads)
    # at the smallest budgets, sit just above the per-layer minimum
    budget = max(int(keep * layout.total_cost()), layout.mandatory_cost() + 500)
    rng = np.random.default_rng(int(keep * 100) + align)
    for _ in range(20):
        mask = project(rng.random(layout.num_units), layout, budget)
        assert layout.kept_cost(mask) <= budget
        for (layer, kind), n in kept_counts(layout, mask).items():
            multiple = align if kind == FFN else tp
            assert n >= multiple and n % multiple == 0, (layer, kind, n)


def test_longest_prefix_is_kept():
    layout = layout_for()
    rng = np.random.default_rng(0)
    scores = rng.random(layout.num_units)
    budget = int(0.5 * layout.total_cost())
    mask = project(scores, layout, budget)
    costs = layout.unit_costs()
    # Every dropped unit ranks below the worst kept non-reserved unit, or did not fit.
    kept = layout.kept_cost(mask)
    dropped = np.flatnonzero(~mask)
    best_dropped = dropped[np.argmax(scores[dropped])]
    assert kept + costs[best_dropped] > budget


def test_ranking_is_global_not_per_layer():
    layout = layout_for(layers=3)
    scores = np.zeros(layout.num_units)
    for seg in layout.segments:  # layer 0 matters most, layer 2 least
        scores[seg.start : seg.stop] = {0: 0.9, 1: 0.5, 2: 0.1}[seg.layer] + 1e-3 * np.arange(
            seg.size
        )
    mask = project(scores, layout, int(0.5 * layout.total_cost()))
    n = kept_counts(layout, mask)
    assert n[(0, FFN)] == 96 and n[(0, KV)] == 2
    assert n[(2, FFN)] < n[(1, FFN)] < 96
    assert n[(2, FFN)] == 1 and n[(2, KV)] == 1  # only the reserved minimum


def test_tie_breaks():
    layout = layout_for(layers=4)
    budget = int(0.6 * layout.total_cost())
    flat = np.full(layout.num_units, 0.5)
    by_rank = kept_counts(layout, project(flat, layout, budget, tie_break="rank"))
    by_index = kept_counts(layout, project(flat, layout, budget, tie_break="index"))
    ffn_rank = [by_rank[(i, FFN)] for i in range(4)]
    assert max(ffn_rank) - min(ffn_rank) <= 1  # near-uniform
    ffn_index = [by_index[(i, FFN)] for i in range(4)]
    assert ffn_index[0] == 96 and ffn_index[-1] == 1  # early layers first


def test_budget_too_small_is_refused():
    layout = layout_for(align=32)
    with pytest.raises(GraspError, match="smaller --prune-ratio"):
        check_budget(layout, layout.mandatory_cost() - 1)
    with pytest.raises(GraspError):
        project(np.zeros(layout.num_units), layout, layout.mandatory_cost() - 1)


def test_alignment_larger_than_a_layer_is_refused():
    with pytest.raises(GraspError, match="--tp 4"):
        layout_for(kv=2, tp=4)


@pytest.mark.parametrize("align,tp,kv,heads", [(8, 1, 2, 4), (16, 2, 4, 8), (32, 1, 4, 4)])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_aligned_blocks_fill_the_budget_to_within_one_block(align, tp, kv, heads, keep):
    """With aligned blocks no further block of any layer would still fit the budget."""
    layout = layout_for(align=align, tp=tp, kv=kv, heads=heads)
    budget = max(int(keep * layout.total_cost()), layout.mandatory_cost() + 500)
    rng = np.random.default_rng(align + tp)
    for _ in range(20):
        mask = project(rng.random(layout.num_units), layout, budget)
        left = budget - layout.kept_cost(mask)
        assert left >= 0
        for (layer, kind), n in kept_counts(layout, mask).items():
            seg = layout.segment(layer, kind)
            if n + seg.align <= seg.size:  # the segment could take another block
                assert seg.align * seg.unit_cost > left, (layer, kind, n, left)


def test_fill_keeps_each_layer_a_prefix_of_its_ranking():
    layout = layout_for(align=8, tp=1)
    rng = np.random.default_rng(5)
    scores = rng.random(layout.num_units)
    mask = project(scores, layout, int(0.45 * layout.total_cost()))
    for seg in layout.segments:
        ranked = np.argsort(-scores[seg.start:seg.stop], kind="stable")
        kept = mask[seg.start:seg.stop][ranked]
        n = int(kept.sum())
        assert kept[:n].all() and not kept[n:].any()


@pytest.mark.parametrize("align,tp,multiple", [(1, 2, 2), (8, 2, 8), (3, 2, 6), (1, 1, 1)])
def test_ffn_widths_split_over_the_tensor_parallel_ranks(align, tp, multiple):
    """vLLM gives each rank 1/tp of every FFN: --tp makes the widths multiples of it too."""
    layout = layout_for(ffn=96, kv=4, heads=8, align=align, tp=tp)
    assert {seg.align for seg in layout.segments if seg.kind == FFN} == {multiple}
    budget = int(0.5 * layout.total_cost())
    mask = project(np.random.default_rng(tp).random(layout.num_units), layout, budget)
    assert all(n % multiple == 0 for (_, kind), n in kept_counts(layout, mask).items()
               if kind == FFN)
