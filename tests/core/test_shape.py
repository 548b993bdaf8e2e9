from types import SimpleNamespace

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.shape import ModelShape, check_supported

from conftest import tiny_config


def smollm2_like(**overrides):
    fields = dict(model_type="llama", hidden_size=576, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                  num_hidden_layers=30, hidden_act="silu", attention_bias=False, mlp_bias=False)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_costs_match_the_algorithm_description():
    shape = ModelShape.from_config(smollm2_like())
    assert shape.group_size == 3
    assert shape.ffn_unit_cost == 3 * 576
    assert shape.kv_unit_cost == (2 * 3 + 2) * 64 * 576 == 294_912
    # 30 layers x (1536 channels x 1728 + 3 groups x 294,912)
    assert shape.prunable_params() == 30 * (1536 * 1728 + 3 * 294_912) == 106_168_320


def test_bias_terms_are_counted():
    shape = ModelShape.from_config(smollm2_like(attention_bias=True, mlp_bias=True))
    assert shape.ffn_unit_cost == 3 * 576 + 2
    assert shape.kv_unit_cost == 294_912 + (3 + 2) * 64


def test_prunable_equals_the_projection_weights_of_a_real_model():
    from conftest import tiny_model

    for kv_heads in (2, 4):  # GQA and MHA
        model = tiny_model(num_key_value_heads=kv_heads)
        shape = ModelShape.from_config(model.config)
        counted = sum(p.numel() for n, p in model.named_parameters()
                      if any(k in n for k in ("q_proj", "k_proj", "v_proj", "o_proj",
                                              "gate_proj", "up_proj", "down_proj")))
        assert shape.prunable_params() == counted


def test_unsupported_architecture_is_named():
    with pytest.raises(GraspError, match="model_type='gpt2'"):
        check_supported(SimpleNamespace(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "x")


def test_json_round_trip():
    shape = ModelShape.from_config(tiny_config())
    assert ModelShape.from_json(shape.to_json()) == shape
