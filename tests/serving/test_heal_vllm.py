"""A healed checkpoint is a checkpoint like any other: vLLM (eager, fp32) serves it with the
greedy tokens transformers computes on it, and its weights differ from the unhealed ones. And
vLLM samples the teacher's text for data-free healing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_text, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from grasp_deploy.jobs import heal_data  # noqa: E402
from grasp_deploy.jobs.heal import HealConfig, run_heal  # noqa: E402
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port  # noqa: E402
from grasp_deploy.sources import models  # noqa: E402
from grasp_deploy.tasks.endpoint import Endpoint  # noqa: E402
from grasp_deploy.tasks.sampling import sample_blocks  # noqa: E402


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


def test_vllm_samples_the_teacher_reproducibly_for_data_free_healing(checkpoints, tmp_path,
                                                                   monkeypatch):
    """Data-free healing's text through a vLLM server of the teacher: blocks of exactly seq_len
    token ids from its BOS, the same for the same seeds, different across seeds; heal reuses the
    cached draw."""
    dense, pruned = checkpoints
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    source = models.resolve_source(str(dense))
    tokenizer = models.load_tokenizer(source)
    config = ServerConfig(model=str(dense), served_name="teacher", port=free_port(),
                          dtype="float32", enforce_eager=True, max_model_len=64, kv_cache_gb=0.02)
    with VllmServer(config) as server:
        endpoint = Endpoint(server.url, "teacher")
        start = tokenizer.bos_token_id
        a = sample_blocks(endpoint, start, 4, 24, seed=1, width=4)
        b = sample_blocks(endpoint, start, 4, 24, seed=1, width=2)
        c = sample_blocks(endpoint, start, 4, 24, seed=2, width=4)
    assert a == b, "the same seeds drew different blocks"
    assert a != c and all(len(x) == 24 and x[0] == start for x in a)
    assert all(0 <= t < len(tokenizer) for x in a for t in x)
    manifest = json.loads((pruned / "grasp_manifest.json").read_text())
    spec = heal_data.SampleSpec(str(dense), manifest["source"]["fingerprint"], count=12,
                                seq_len=32, seed=0, engine="vllm",
                                server=(("dtype", "float32"), ("enforce_eager", True),
                                        ("kv_cache_gb", 0.02)))
    ids, record = heal_data.teacher_samples(spec, None, tokenizer, progress=False,
                                            say=lambda _m: None)
    assert ids.shape == (12, 32) and record["engine"] == "vllm"
    result = run_heal(HealConfig(checkpoint=pruned, out=tmp_path / "free", data="self",
                                 samples=12, steps=3, lr=3e-3, batch_size=2, seq_len=32,
                                 held_out=2, warmup=1, dtype="float32", progress=False),
                      say=lambda _m: None)
    assert result.record["samples"]["engine"] == "vllm"
    assert result.record["samples"]["cached"] == str(spec.path())
