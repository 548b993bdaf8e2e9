import math

import numpy as np
import pytest
import torch

from grasp_deploy.core.projection import UnitLayout
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.methods.gates import train_gates, train_scales
from grasp_deploy.methods.grasp import GraspSettings

from conftest import tiny_model


def _setup(seed=0, ratio=0.4, align=1, tp=1):
    model = tiny_model(seed).requires_grad_(False)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape, align=align, tp=tp)
    blocks = torch.randint(0, 320, (6, 32), generator=torch.Generator().manual_seed(seed))
    budget = math.floor((1 - ratio) * layout.total_cost())
    return model, shape, layout, blocks, budget


def test_only_gates_train_and_the_budget_holds_at_every_step():
    model, shape, layout, blocks, budget = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = []
    settings = GraspSettings(epochs=3, scale_epochs=1)
    mask, scores, log = train_gates(model, shape, layout, blocks, budget, settings, seed=0,
                                    on_step=lambda stage, step, m: masks.append(m),
                                    progress=False)
    assert len(masks) == log.steps == 18
    for m in masks:
        assert layout.kept_cost(m) <= budget
    assert layout.kept_cost(mask) <= budget
    assert np.abs(scores).max() > 0  # the gates did learn
    gamma, _ = train_scales(model, shape, layout, mask, blocks, settings, seed=0, progress=False)
    assert np.abs(gamma[mask] - 1).max() > 0  # kept units got scales
    assert np.all(gamma[~mask] == 1.0)  # removed units got no gradient
    assert np.all((gamma > 0.5) & (gamma < 1.5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_alignment_holds_through_training():
    model, shape, layout, blocks, budget = _setup(align=8, tp=2, ratio=0.3)
    model = tiny_model(0, num_key_value_heads=4, num_attention_heads=4).requires_grad_(False)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape, align=8, tp=2)
    budget = math.floor(0.7 * layout.total_cost())
    seen = []
    mask, _, _ = train_gates(model, shape, layout, blocks, budget, GraspSettings(epochs=1), 0,
                             on_step=lambda *a: seen.append(a[2]), progress=False)
    for m in seen + [mask]:
        for seg in layout.segments:
            n = int(m[seg.start:seg.stop].sum())
            assert n % seg.align == 0 and n >= seg.align


def test_same_seed_same_result():
    runs = []
    for _ in range(2):
        model, shape, layout, blocks, budget = _setup()
        runs.append(train_gates(model, shape, layout, blocks, budget, GraspSettings(epochs=2), 0,
                                progress=False)[:2])
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


def test_an_interrupted_run_resumes_to_the_same_scores():
    settings = GraspSettings(epochs=2)
    model, shape, layout, blocks, budget = _setup()
    full_mask, full_scores, _ = train_gates(model, shape, layout, blocks, budget, settings, 0,
                                            progress=False)
    saved = []

    def stop_at_7(stage, step, mask):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_gates(model, shape, layout, blocks, budget, settings, 0, save=saved.append,
                    save_every=5, on_step=stop_at_7, progress=False)
    assert [s["step"] for s in saved] == [5]
    mask, scores, log = train_gates(model, shape, layout, blocks, budget, settings, 0,
                                    resume=saved[-1], progress=False)
    assert log.steps == 12 - 5
    np.testing.assert_allclose(scores, full_scores, rtol=0, atol=1e-6)
    assert np.array_equal(mask, full_mask)


def test_informed_init_distillation_and_cost_projection():
    """The 'past the paper' switches: the first mask follows the initial scores, the KD loss
    is a KL to the dense logits (zero when nothing is removed), the budget still holds."""
    from grasp_deploy.core.masking import Multipliers, multiplied
    from grasp_deploy.core.projection import project
    from grasp_deploy.methods.gates import _dense_logits, _loss, initial_scores

    model, shape, layout, blocks, budget = _setup(seed=1)
    importance = np.random.default_rng(0).random(layout.num_units) + 0.5  # no clipping
    init = initial_scores(importance, layout, tau=1.5)
    assert np.abs(init).max() <= 3 * 1.5 + 1e-12
    # Within each kind, the initial order is the importance order.
    ffn = layout.segment(0, "ffn")
    np.testing.assert_array_equal(np.argsort(init[ffn.start:ffn.stop]),
                                  np.argsort(importance[ffn.start:ffn.stop]))
    masks = []
    settings = GraspSettings(
        epochs=1, scale_epochs=0, init="taylor", loss="ce+kd", projection="cost"
    )
    mask, _, log = train_gates(model, shape, layout, blocks, budget, settings, seed=0, init=init,
                               on_step=lambda s, k, m: masks.append(m), progress=False)
    first = project(1 / (1 + np.exp(-init / 1.5)), layout, budget, "rank", per_cost=True)
    np.testing.assert_array_equal(masks[0], first)
    assert all(layout.kept_cost(m) <= budget for m in masks) and np.isfinite(log.losses).all()
    # KD of the unmasked model against itself is zero; with units removed it is positive.
    mult = Multipliers.empty(shape.num_layers)
    with multiplied(model, shape, mult):
        teacher = _dense_logits(model, mult, blocks[:1])
        assert float(_loss(model, blocks[:1], teacher, "kd")) == pytest.approx(0.0, abs=1e-5)
        mult.ffn[0] = torch.zeros(shape.layers[0].intermediate_size)
        assert float(_loss(model, blocks[:1], teacher, "kd")) > 1e-4


def test_cost_aware_projection_prefers_cheap_units():
    from grasp_deploy.core.projection import project

    _, _, layout, _, budget = _setup()
    flat = np.full(layout.num_units, 0.5)
    by_score = project(flat, layout, budget)
    by_cost = project(flat, layout, budget, per_cost=True)
    kv = np.concatenate([np.arange(s.start, s.stop) for s in layout.segments if s.kind == "kv"])
    assert by_cost[kv].sum() < by_score[kv].sum()  # equal value: the cheap FFN channels win
    assert layout.kept_cost(by_cost) <= budget
