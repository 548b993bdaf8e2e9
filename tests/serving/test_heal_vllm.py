"""A healed checkpoint is a checkpoint like any other: vLLM (eager, fp32) serves it with the
greedy tokens transformers computes on it, and its weights differ from the unhealed ones."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_text, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from grasp_deploy.jobs.heal import HealConfig, run_heal  # noqa: E402
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port  # noqa: E402


def test_vllm_serves_the_healed_checkpoint_as_transformers_computes_it(checkpoints, tmp_path):
    from openai import OpenAI

    _, pruned = checkpoints
    text = tmp_path / "train.txt"
    text.write_text(make_text(n_words=3000, seed=4))
    healed = tmp_path / "healed"
    run_heal(HealConfig(checkpoint=pruned, out=healed, data=f"file:{text}", steps=8, lr=3e-3,
                        batch_size=2, seq_len=32, held_out=2, warmup=1, dtype="float32",
                        progress=False), say=lambda _m: None)
    old, new = load_file(str(pruned / "model.safetensors")), load_file(
        str(healed / "model.safetensors"))
    assert any(not torch.equal(old[k], new[k]) for k in old)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(2, 320, (n,), generator=gen).tolist() for n in (6, 17)]
    config = ServerConfig(model=str(healed), served_name="healed", port=free_port(),
                          dtype="float32", enforce_eager=True, max_model_len=256,
                          kv_cache_gb=0.02)
    with VllmServer(config) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none")
        gap = vllm_parity(client, "healed", healed, prompts, steps=8)  # tokens asserted equal
    assert gap < 2e-3, gap
