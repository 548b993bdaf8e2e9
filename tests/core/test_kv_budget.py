"""The second budget (--kv-ratio): KV heads kept, next to the parameter budget."""

import numpy as np
import pytest
from test_projection import layout_for

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.projection import keep_budget, kv_keep_budget, project
from grasp_deploy.core.shape import KV


@pytest.mark.parametrize(
    "align,tp,kv,heads", [(1, 1, 4, 8), (8, 1, 4, 8), (1, 2, 4, 8), (16, 2, 4, 8)]
)
@pytest.mark.parametrize(
    "ratio,kv_ratio", [(0.2, 0.5), (0.5, 0.5), (0.5, 0.6), (0.3, 0.75), (0.6, 0.9)]
)
def test_both_budgets_hold_for_random_scores(align, tp, kv, heads, ratio, kv_ratio):
    layout = layout_for(layers=6, align=align, tp=tp, kv=kv, heads=heads)
    budget = keep_budget(ratio, layout.total_cost())
    kv_budget = kv_keep_budget(kv_ratio, layout)
    rng = np.random.default_rng(int(100 * ratio) + align + tp)
    for _ in range(20):
        mask = project(rng.random(layout.num_units), layout, budget, kv_budget=kv_budget)
        assert layout.kept_cost(mask) <= budget
        assert layout.kept_kv_heads(mask) <= kv_budget
        for seg in layout.segments:
            n = int(mask[seg.start:seg.stop].sum())
            assert n >= seg.align and n % seg.align == 0


@pytest.mark.parametrize("align", [1, 8])
def test_a_kv_budget_at_least_the_unconstrained_result_changes_nothing(align):
    layout = layout_for(layers=6, align=align, kv=4, heads=8)
    budget = keep_budget(0.5, layout.total_cost())
    rng = np.random.default_rng(align)
    for _ in range(20):
        scores = rng.random(layout.num_units)
        free = project(scores, layout, budget)
        kept = layout.kept_kv_heads(free)
        for kv_budget in (kept, kept + 1, layout.kv_heads()):
            assert np.array_equal(project(scores, layout, budget, kv_budget=kv_budget), free)
        tighter = project(scores, layout, budget, kv_budget=kept - 1)
        assert layout.kept_kv_heads(tighter) == kept - 1  # the budget binds exactly


def test_a_binding_kv_budget_keeps_the_best_kv_groups_and_refills_with_ffn():
    layout = layout_for(layers=4, kv=4, heads=8)
    rng = np.random.default_rng(3)
    scores = rng.random(layout.num_units)
    budget = keep_budget(0.4, layout.total_cost())
    free = project(scores, layout, budget)
    kv_budget = layout.kept_kv_heads(free) - 4
    mask = project(scores, layout, budget, kv_budget=kv_budget)
    kv_units = np.concatenate([np.arange(s.start, s.stop) for s in layout.segments if s.kind == KV])
    # KV groups kept under the KV budget are a subset of those kept without it ...
    assert not np.any(mask[kv_units] & ~free[kv_units])
    # ... and the parameters they free go to more FFN channels (a superset of the free ones).
    ffn_units = ~np.isin(np.arange(layout.num_units), kv_units)
    assert not np.any(free[ffn_units] & ~mask[ffn_units])
    assert mask[ffn_units].sum() > free[ffn_units].sum()
    assert layout.kept_cost(mask) <= budget


def test_kv_budget_is_floor_of_the_ratio_and_refused_below_one_block_per_layer():
    layout = layout_for(layers=6, kv=4, heads=8)
    assert layout.kv_heads() == 24
    assert kv_keep_budget(0.5, layout) == 12
    assert kv_keep_budget(0.3, layout) == 7  # floor(7.2)
    assert kv_keep_budget(None, layout) is None
    with pytest.raises(GraspError, match=r"--kv-ratio 0.4 .* at least 0.500"):
        kv_keep_budget(0.4, layout_for(layers=6, kv=4, heads=8, tp=2))  # 9 < 6 layers x 2
