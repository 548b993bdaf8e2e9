"""Tensor parallelism on vLLM's CPU backend: a plan whose layers split serves at
--tensor-parallel-size 2 with the greedy tokens of transformers (and so of TP=1, which
test_serving checks), one CPU per rank; one whose layers do not split is refused before any
server starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SERVING_SHAPE, save_tiny, serving_plan, vllm_parity

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")

from grasp_deploy.server.launcher import free_port  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
EVEN_FFN = (192, 150, 64, 96)  # every width even; layers 1 and 2 keep 1 KV head (replicated)


@pytest.fixture(scope="module")
def tp_checkpoint(tmp_path_factory):
    from grasp_deploy.jobs.export import ExportConfig, run_export
    from grasp_deploy.sources import models

    root = tmp_path_factory.mktemp("tp")
    dense = save_tiny(root / "dense", seed=7, **SERVING_SHAPE)
    plan_dir = root / "plan"
    plan_dir.mkdir()
    serving_plan(models.load_model(models.resolve_source(str(dense))), EVEN_FFN).save(plan_dir)
    run_export(ExportConfig(plan_dir=plan_dir, out=root / "pruned"))
    return root / "pruned"


def _serve(*args, wait_for: str, timeout: float = 600):
    cmd = [sys.executable, "-m", "grasp_deploy.cli", "serve", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if wait_for in line:
            break
    return proc, "".join(lines)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="TP=2 needs a CPU per rank")
def test_a_split_plan_serves_at_tp2_with_the_tokens_of_transformers(tp_checkpoint):
    from openai import OpenAI

    port = free_port()
    proc, banner = _serve(tp_checkpoint, "--port", port, "--dtype", "float32", "--enforce-eager",
                          "--max-model-len", "256", "--kv-cache-gb", "0.02",
                          "--served-model-name", "tiny-tp2", "--tensor-parallel-size", "2",
                          wait_for="Ctrl-C to stop")
    try:
        if "serving tiny-tp2 at" not in banner:
            proc.kill()
            pytest.fail("serve --tensor-parallel-size 2 did not come up:\n" + banner
                        + proc.stderr.read()[-3000:])
        assert "workers   2 tensor x 1 pipeline parallel" in banner
        bind = re.search(r"VLLM_CPU_OMP_THREADS_BIND=([\d,|]+)", banner).group(1)
        ranks = [set(run.split(",")) for run in bind.split("|")]  # each rank its own CPUs
        assert len(ranks) == 2 and not ranks[0] & ranks[1], bind
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(2, 320, (n,), generator=gen).tolist() for n in (5, 11, 23)]
        gap = vllm_parity(client, "tiny-tp2", tp_checkpoint, prompts, steps=10)
        print(f"max |logprob difference| vLLM TP=2 vs transformers: {gap:.2e}")
        assert gap < 2e-3
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0


def test_a_plan_whose_layers_do_not_split_is_refused_before_start(checkpoints):
    """The shared serving checkpoint keeps 97 FFN channels in its last layer."""
    run = subprocess.run([sys.executable, "-m", "grasp_deploy.cli", "serve", str(checkpoints[1]),
                          "--port", str(free_port()), "--tensor-parallel-size", "2"],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert ("tensor parallel size 2 cannot split 1 of 4 layers: layer 3 (4 query / 2 KV heads, "
            "FFN 97)") in errors[0] and "grasp-deploy prune --tp 2" in errors[0]
    assert "starting vLLM" not in run.stderr + run.stdout
