"""Baseline methods: budgets, hand-checkable rankings, FLAP's bias compensation, GISP nesting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.masking import multiplied
from grasp_deploy.core.plan import load_plan
from grasp_deploy.core.projection import UnitLayout
from grasp_deploy.core.shape import FFN, KV, ModelShape
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods import GispSettings
from grasp_deploy.methods.flap import flap_biases, flap_scores
from grasp_deploy.methods.gisp import gisp_trajectory, mask_at
from grasp_deploy.methods.gisp_file import TRAJECTORY_FILE
from grasp_deploy.methods.importance import collect_activations, mean_gradients, taylor_importance
from grasp_deploy.methods.uniform import keep_top, kv_spread, uniform_counts
from grasp_deploy.methods.wanda_sp import wanda_sp_scores
from grasp_deploy.sources import models

from conftest import tiny_config, tiny_model

BASELINES = ("magnitude", "wanda-sp", "flap", "taylor", "gisp")


def _blocks(n=6, t=32, seed=0):
    return torch.randint(2, 320, (n, t), generator=torch.Generator().manual_seed(seed))


def _captured_inputs(model, blocks):
    """Every input row of each layer's o_proj and down_proj, concatenated (float64)."""
    seen = {"o": [[] for _ in model.model.layers], "down": [[] for _ in model.model.layers]}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name, proj in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            hooks.append(
                proj.register_forward_pre_hook(
                    lambda _m, a, name=name, i=i: seen[name][i].append(
                        a[0].reshape(-1, a[0].shape[-1]).double()
                    )
                )
            )
    with torch.no_grad():
        for b in blocks:
            model(input_ids=b[None])
    for h in hooks:
        h.remove()
    return {k: [torch.cat(v) for v in per] for k, per in seen.items()}


@pytest.mark.parametrize("method", BASELINES)
def test_budget_met_and_plan_valid(method, tiny_dir, text_file, tmp_path):
    out = tmp_path / "plan"
    result = run_prune(
        PruneConfig(
            prune_ratio=0.4,
            out=out,
            model=str(tiny_dir),
            method=method,
            calib=f"file:{text_file}",
            num_samples=6,
            seq_len=32,
            method_settings=GispSettings(0.1, 3) if method == "gisp" else None,
            progress=False,
        )
    )
    plan = load_plan(out)  # round-trips through JSON and validates ids and lengths
    layout = UnitLayout.from_shape(plan.source.shape)
    assert plan.budget.prunable_kept <= int((1 - 0.4) * layout.total_cost())
    assert plan.budget.achieved_ratio >= 0.4 - 0.1  # uniform methods round per layer
    assert plan.method == method and result.plan == plan
    assert all(layer.ffn_keep and layer.kv_keep for layer in plan.layers)
    assert (plan.layers[0].o_bias is not None) == (method == "flap")
    if method == "gisp":
        steps = json.loads((out / TRAJECTORY_FILE).read_text())["steps"]
        assert [s["target"] for s in steps] == [0.1, 0.2, 0.3, 0.4]


def test_wanda_sp_and_flap_scores_match_a_direct_computation():
    model = tiny_model(seed=5)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    blocks = _blocks()
    stats = collect_activations(model, shape, blocks, progress=False)
    inputs = _captured_inputs(model, blocks)
    wanda, flap = wanda_sp_scores(model, shape, layout, stats), flap_scores(
        model, shape, layout, stats
    )
    gh = shape.group_size * shape.head_dim
    for i, layer in enumerate(model.model.layers):
        # Wanda-sp by hand: sum_i |W_ij| * ||X_j||.
        for kind, name, proj in (
            (FFN, "down", layer.mlp.down_proj),
            (KV, "o", layer.self_attn.o_proj),
        ):
            w, x = proj.weight.detach().double(), inputs[name][i]
            per_col = w.abs().sum(0) * x.norm(dim=0)
            fluct = x.var(dim=0, unbiased=True) * w.pow(2).sum(0)
            z = (fluct - fluct.mean()) / fluct.std()
            if kind == KV:
                per_col, z = per_col.view(-1, gh).sum(1), z.view(-1, gh).mean(1)
            seg = layout.segment(i, kind)
            np.testing.assert_allclose(wanda[seg.start:seg.stop], per_col.numpy(), rtol=1e-6)
            np.testing.assert_allclose(flap[seg.start:seg.stop], z.numpy(), rtol=1e-5, atol=1e-6)


def test_taylor_importance_matches_autograd():
    model = tiny_model(seed=6)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    blocks = _blocks(n=3)
    scores = taylor_importance(
        model, shape, layout, mean_gradients(model, shape, blocks, progress=False)
    )
    assert not any(p.requires_grad and p.grad is not None for p in model.parameters())
    # By hand: the mean loss over the blocks, autograd, and the sum over channel 5 of layer 1.
    mlp = model.model.layers[1].mlp
    params = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    loss = sum(model(input_ids=b[None], labels=b[None]).loss for b in blocks) / len(blocks)
    g_gate, g_up, g_down = torch.autograd.grad(loss, params)
    with torch.no_grad():
        want = float((params[0][5] * g_gate[5]).abs().sum() + (params[1][5] * g_up[5]).abs().sum()
                     + (params[2][:, 5] * g_down[:, 5]).abs().sum())
    assert scores[layout.segment(1, FFN).start + 5] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("method", ("wanda-sp", "flap", "taylor", "magnitude"))
def test_dead_units_are_removed_first(method):
    """A hand-made case: channels whose down_proj columns are zero and a KV group whose o_proj
    columns are zero contribute nothing; every method must rank them last."""
    model = tiny_model(seed=8)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    dead_ffn, gh = [3, 17, 40], shape.group_size * shape.head_dim
    with torch.no_grad():
        layer = model.model.layers[1]
        layer.mlp.down_proj.weight[:, dead_ffn] = 0.0
        layer.self_attn.o_proj.weight[:, gh:2 * gh] = 0.0  # KV group 1 of layer 1
        if method == "magnitude":  # magnitude sees every weight of the unit
            layer.mlp.gate_proj.weight[dead_ffn] = 0.0
            layer.mlp.up_proj.weight[dead_ffn] = 0.0
            for proj in (layer.self_attn.q_proj, ):
                proj.weight[gh:2 * gh] = 0.0
            hd = shape.head_dim
            layer.self_attn.k_proj.weight[hd:2 * hd] = 0.0
            layer.self_attn.v_proj.weight[hd:2 * hd] = 0.0
    blocks = _blocks()
    if method in ("wanda-sp", "flap"):
        stats = collect_activations(model, shape, blocks, progress=False)
        scores = (wanda_sp_scores if method == "wanda-sp" else flap_scores)(
            model, shape, layout, stats
        )
    elif method == "taylor":
        scores = taylor_importance(
            model, shape, layout, mean_gradients(model, shape, blocks, progress=False)
        )
    else:
        from grasp_deploy.methods.magnitude import magnitude_scores
        scores = magnitude_scores(model, shape, layout)
    ffn, kv = layout.segment(1, FFN), layout.segment(1, KV)
    assert sorted(np.argsort(scores[ffn.start:ffn.stop])[:3].tolist()) == dead_ffn
    assert int(np.argmin(scores[kv.start:kv.stop])) == 1
    mask = keep_top(scores, layout, uniform_counts(layout, 0.4))
    assert not mask[ffn.start + np.array(dead_ffn)].any() and not mask[kv.start + 1]


@pytest.fixture(scope="module")
def flap_run(tmp_path_factory, tiny_dir, text_file):
    root = tmp_path_factory.mktemp("flap")
    run_prune(PruneConfig(prune_ratio=0.45, out=root / "plan", model=str(tiny_dir), method="flap",
                          calib=f"file:{text_file}", num_samples=6, seq_len=32, progress=False))
    run_export(ExportConfig(plan_dir=root / "plan", out=root / "ckpt"))
    return root


def test_flap_compensation_masked_equals_exported(flap_run, tiny_dir):
    from transformers import AutoModelForCausalLM

    plan = load_plan(flap_run / "plan")
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    ids = _blocks(n=2, t=24, seed=9)
    with torch.no_grad(), multiplied(model, plan.source.shape, plan.multipliers()):
        masked = model(input_ids=ids).logits
    exported = AutoModelForCausalLM.from_pretrained(flap_run / "ckpt", dtype=torch.float32).eval()
    cfg = json.loads((flap_run / "ckpt" / "config.json").read_text())
    assert cfg["o_proj_bias"] and cfg["down_proj_bias"]
    with torch.no_grad():
        got = exported(input_ids=ids).logits
    torch.testing.assert_close(got, masked, atol=1e-4, rtol=0)
    # The compensation is not a no-op: without the biases the masked logits differ.
    no_bias = plan.multipliers()
    no_bias.o_bias = [None] * len(no_bias.o_bias)
    no_bias.down_bias = [None] * len(no_bias.down_bias)
    with torch.no_grad(), multiplied(model, plan.source.shape, no_bias):
        bare = model(input_ids=ids).logits
    assert (bare - masked).abs().max() > 1e-3
    n = sum(p.numel() for p in exported.parameters())
    assert n == plan.budget.model_pruned


def test_flap_bias_is_weight_times_mean_of_removed_inputs():
    model = tiny_model(seed=4)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    blocks = _blocks()
    stats = collect_activations(model, shape, blocks, progress=False)
    mask = np.ones(layout.num_units, dtype=bool)
    seg = layout.segment(0, FFN)
    mask[seg.start + np.array([2, 9])] = False
    biases = flap_biases(model, shape, layout, mask, stats)
    x = _captured_inputs(model, blocks)["down"][0]
    w = model.model.layers[0].mlp.down_proj.weight.detach().double()
    want = w[:, 2] * x[:, 2].mean() + w[:, 9] * x[:, 9].mean()
    np.testing.assert_allclose(biases[0]["down"], want.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(biases[0]["o"], 0.0)  # nothing removed there
    np.testing.assert_allclose(biases[1]["down"], 0.0)


def test_gisp_masks_are_nested_and_independent_of_the_final_ratio():
    model = tiny_model(seed=2)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape)
    blocks = _blocks(n=8)
    long = gisp_trajectory(
        model, shape, layout, blocks, 0.5, step=0.1, blocks_per_step=2, progress=False
    )
    short = gisp_trajectory(
        model, shape, layout, blocks, 0.3, step=0.1, blocks_per_step=2, progress=False
    )
    total = layout.total_cost()
    prev = np.ones(layout.num_units, dtype=bool)
    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
        mask = mask_at(layout, long, ratio)
        assert layout.kept_cost(mask) <= int((1 - ratio) * total)
        assert not (mask & ~prev).any()  # nested: nothing comes back
        prev = mask
    for ratio in (0.1, 0.2, 0.3):
        np.testing.assert_array_equal(mask_at(layout, short, ratio), mask_at(layout, long, ratio))
    with pytest.raises(GraspError, match="not on this GISP trajectory"):
        mask_at(layout, long, 0.25)


@pytest.mark.parametrize("kv_budget", [6, 7, 9, 12])
def test_kv_spread_is_even_over_depth_and_within_the_budget(kv_budget):
    shape = ModelShape.from_config(tiny_config(num_hidden_layers=6, num_attention_heads=8,
                                               num_key_value_heads=4, head_dim=8))
    layout = UnitLayout.from_shape(shape)
    caps = kv_spread(layout, kv_budget)
    assert sum(caps.values()) == kv_budget and min(caps.values()) >= 1
    assert max(caps.values()) - min(caps.values()) <= 1
    counts = uniform_counts(layout, 0.3, kv_budget)
    assert sum(n for (_, kind), n in counts.items() if kind == KV) <= kv_budget
    free = uniform_counts(layout, 0.3)
    for i in range(6):  # the parameters a layer's KV gives up go to its FFN
        assert counts[(i, FFN)] >= free[(i, FFN)]
