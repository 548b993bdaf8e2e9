"""Every method on every supported family (tiny random Llama 3.x, Qwen2, Qwen3 models): the
cost model counts exactly the prunable parameters, and each plan meets its budget."""

from __future__ import annotations

import pytest
import torch

from grasp_deploy.core.plan import load_plan
from grasp_deploy.core.projection import keep_budget
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods import METHODS, GispSettings, GraspSettings

from conftest import LLAMA3_ROPE, save_tiny, tiny_model

FAMILY_MODELS = {
    "llama3": dict(rope_parameters=LLAMA3_ROPE, head_dim=32, tie_word_embeddings=True),
    "qwen2": dict(family="qwen2", tie_word_embeddings=True),
    "qwen3": dict(family="qwen3", head_dim=24),
    "mistral": dict(family="mistral", sliding_window=8),
}


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_unit_costs_count_exactly_the_prunable_parameters(name):
    model = tiny_model(0, **FAMILY_MODELS[name])
    shape = ModelShape.from_config(model.config)
    counted = 0
    for layer in model.model.layers:
        for module in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            counted += sum(p.numel() for p in module.parameters())
        counted += layer.self_attn.o_proj.weight.numel()  # o_proj's bias is per hidden unit
    assert shape.prunable_params() == counted
    assert shape.attention_bias == (name == "qwen2") and shape.gate_keys == (name != "qwen3")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {
        name: save_tiny(root / name, seed=2, **fields) for name, fields in FAMILY_MODELS.items()
    }


@pytest.mark.slow  # 18 prune runs: part of make test, not of make test-fast
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_every_method_meets_its_budget_on_every_family(name, method, family_dirs, text_file,
                                                       tmp_path):
    config = PruneConfig(prune_ratio=0.3, out=tmp_path / "plan", model=str(family_dirs[name]),
                         method=method, calib=f"file:{text_file}", num_samples=4, seq_len=32,
                         dtype="float32", progress=False,
                         method_settings={"grasp": GraspSettings(epochs=1, scale_samples=2),
                                          "gisp": GispSettings(0.1, 2)}.get(method))
    plan = run_prune(config).plan
    assert plan.budget.prunable_kept <= keep_budget(0.3, plan.budget.prunable_dense)
    assert plan.source.shape.model_type == ("llama" if name == "llama3" else name)
    assert load_plan(tmp_path / "plan") == plan
    assert torch.isfinite(torch.tensor([s for lp in plan.layers for s in lp.ffn_scale or ()])).all()
