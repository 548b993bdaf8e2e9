"""Which layer sizes vLLM's tensor- and pipeline-parallel ranks can split: pure, no vLLM."""

from types import SimpleNamespace

import pytest

from grasp_deploy.checkpoint import format as fmt
from grasp_deploy.checkpoint.parallel import parallel_problem, tp_problems


def test_each_rule_of_the_split():
    assert tp_problems([(6, 2, 96), (3, 1, 40)], 1) == []
    assert tp_problems([(4, 2, 96), (2, 1, 40)], 2) == []  # 1 KV head: replicated on both ranks
    assert tp_problems([(8, 4, 96)], 4) == []
    assert tp_problems([(9, 3, 96)], 2) == ["layer 0 (9 query / 3 KV heads, FFN 96)"]  # heads
    assert tp_problems([(4, 2, 95)], 2) == ["layer 0 (4 query / 2 KV heads, FFN 95)"]  # FFN
    assert tp_problems([(4, 1, 96), (6, 3, 96)], 4) != []  # 3 KV heads: 4 ranks neither share
    assert len(tp_problems([(4, 2, 96), (6, 3, 96), (4, 2, 7)], 2)) == 2  # nor replicate them


def _pruned(patches: dict, group: int = 2, layers: int = 2) -> SimpleNamespace:
    """A pruned checkpoint's config as the format reads it."""
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=96, is_heterogeneous=True,
                           per_layer_config=[SimpleNamespace(**p) for p in patches],
                           **{fmt.GROUP_SIZE_FIELD: group})


def test_a_pruned_checkpoint_is_checked_layer_by_layer():
    fine = _pruned([dict(intermediate_size=48, num_key_value_heads=2),
                    dict(intermediate_size=20, num_key_value_heads=1)])
    assert parallel_problem(fine, tp=2) is None
    odd = _pruned([dict(intermediate_size=48, num_key_value_heads=2),
                   dict(intermediate_size=21, num_key_value_heads=1)])
    problem = parallel_problem(odd, tp=2)
    assert problem.startswith("tensor parallel size 2 cannot split 1 of 2 layers: layer 1 "
                              "(2 query / 1 KV heads, FFN 21)")
    assert "grasp-deploy prune --tp 2" in problem
    assert parallel_problem(odd, tp=1) is None


def test_a_dense_model_that_cannot_split_gets_no_re_prune_advice():
    dense = SimpleNamespace(num_hidden_layers=3, num_attention_heads=9, num_key_value_heads=3,
                            intermediate_size=1536)  # SmolLM2-135M's heads
    problem = parallel_problem(dense, tp=2)
    assert "cannot split 3 of 3 layers" in problem and "re-prune" not in problem
    assert parallel_problem(dense, tp=3) is None


@pytest.mark.parametrize("pp,ok", [(1, True), (3, True), (4, False)])
def test_pipeline_stages_take_whole_layers(pp, ok):
    dense = SimpleNamespace(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=96)
    problem = parallel_problem(dense, pp=pp)
    assert (problem is None) == ok
    if not ok:
        assert problem == "pipeline parallel size 4 exceeds the model's 3 layers; use at most 3"
