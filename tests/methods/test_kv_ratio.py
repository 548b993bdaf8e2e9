"""--kv-ratio: every method keeps at most K x the dense model's KV heads (so KV bytes per token)
while meeting the parameter budget; plans, manifests, inspect and the model card report both."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.plan import load_plan
from grasp_deploy.core.projection import UnitLayout, keep_budget
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods import GispSettings

from conftest import save_tiny

METHODS = ("grasp", "structprune", "magnitude", "wanda-sp", "flap", "taylor", "gisp")


@pytest.fixture(scope="module")
def wide_kv(tmp_path_factory):
    """4 layers x 4 KV heads (8 query heads): room for a KV budget above one head per layer."""
    return save_tiny(tmp_path_factory.mktemp("kv") / "model", num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=8)


def _prune(model, text_file, out, method, kv_ratio=None, on_step=None, ratio=0.3):
    return run_prune(PruneConfig(
        prune_ratio=ratio, kv_ratio=kv_ratio, out=out, model=str(model), method=method,
        calib=f"file:{text_file}", num_samples=4, seq_len=32,
        method_settings=GispSettings(0.1, 2) if method == "gisp" else None,
        progress=False), on_step=on_step)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_both_budgets(method, wide_kv, text_file, tmp_path):
    masks = []
    _prune(wide_kv, text_file, tmp_path / "plan", method, kv_ratio=0.5,
           on_step=lambda stage, step, m: masks.append(m))
    plan = load_plan(tmp_path / "plan")
    b = plan.budget
    assert b.kv_ratio == 0.5 and b.kv_heads_dense == 16
    assert b.kv_heads_kept == sum(len(layer.kv_keep) for layer in plan.layers) <= 8
    assert b.prunable_kept <= keep_budget(0.3, b.prunable_dense)
    # without the KV budget the parameter budget alone keeps more KV heads than that
    assert b.kv_heads_kept < 0.7 * 16
    layout = UnitLayout.from_shape(plan.source.shape)
    for m in masks:  # GRASPrune: every step's mask holds both
        assert layout.kept_kv_heads(m) <= 8
        assert layout.kept_cost(m) <= keep_budget(0.3, b.prunable_dense)
    assert (method == "grasp") == bool(masks)


@pytest.mark.parametrize("method", ["grasp", "flap"])
def test_a_kv_budget_at_or_above_the_unconstrained_result_changes_nothing(method, wide_kv,
                                                                          text_file, tmp_path):
    free = _prune(wide_kv, text_file, tmp_path / "free", method).plan
    kept = free.budget.kv_achieved
    assert kept < 1.0
    same = _prune(wide_kv, text_file, tmp_path / "same", method, kv_ratio=kept).plan
    assert same.layers == free.layers
    tighter = _prune(wide_kv, text_file, tmp_path / "tight", method, kv_ratio=kept - 1 / 16).plan
    assert tighter.budget.kv_heads_kept == free.budget.kv_heads_kept - 1


def test_both_budgets_are_reported_by_plan_manifest_inspect_and_card(wide_kv, text_file, tmp_path):
    _prune(wide_kv, text_file, tmp_path / "plan", "wanda-sp", kv_ratio=0.5)
    budget = json.loads((tmp_path / "plan" / "plan.json").read_text())["budget"]
    assert budget["kv_ratio"] == 0.5 and budget["kv_achieved"] <= 0.5
    run_export(ExportConfig(plan_dir=tmp_path / "plan", out=tmp_path / "ckpt", model=str(wide_kv)))
    manifest = json.loads((tmp_path / "ckpt" / "grasp_manifest.json").read_text())
    assert manifest["budget"] == budget
    kv = manifest["kv_cache_bytes_per_token"]
    assert kv["pruned"] <= 0.5 * kv["dense"]
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "ckpt")]).output
    assert "achieved; KV bytes/token at most 50.00% asked" in text
    assert f"{budget['kv_achieved']:.2%} of the dense model's kept" in text
    assert "KV cache at most 50.00% of dense" in (tmp_path / "ckpt" / "README.md").read_text()


def test_gisp_trajectory_remembers_its_kv_budget(wide_kv, text_file, tmp_path):
    _prune(wide_kv, text_file, tmp_path / "run", "gisp", kv_ratio=0.5)
    with pytest.raises(Exception, match="was made with --kv-ratio 0.5"):
        run_prune(PruneConfig(prune_ratio=0.2, out=tmp_path / "nested", model=str(wide_kv),
                              method="gisp", progress=False,
                              method_settings=GispSettings(from_trajectory=tmp_path / "run")))
    nested = run_prune(PruneConfig(prune_ratio=0.2, kv_ratio=0.5, out=tmp_path / "nested",
                                   model=str(wide_kv), method="gisp",
                                   progress=False,
                                   method_settings=GispSettings(from_trajectory=tmp_path / "run"))
                        ).plan
    assert nested.budget.kv_heads_kept <= 8
