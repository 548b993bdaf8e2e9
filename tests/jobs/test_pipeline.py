"""prune-and-serve end to end on a tiny model: prune, export, A/B, serve once; then reuse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grasp_deploy.server.launcher import free_port

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _tiny_run(dense, text_file, work) -> list[str]:
    """prune-and-serve of the tiny model at 0.3, eager float32, served once."""
    return [sys.executable, "-m", "grasp_deploy.cli", "prune-and-serve", str(dense),
            "--prune-ratio", "0.3", "--calib", f"file:{text_file}", "-n", "2", "-l", "32", "-e",
            "1", "--dtype", "float32", "--work", str(work), "--enforce-eager", "--vllm-dtype",
            "float32", "--kv-cache-gb", "0.02", "--max-model-len", "256", "--once", "-q"]


@pytest.mark.slow
def test_prune_and_serve_runs_once_and_reuses_its_outputs(checkpoints, text_file, tmp_path):
    dense, _ = checkpoints
    work = tmp_path / "work"
    base = _tiny_run(dense, text_file, work)
    first = subprocess.run(base + ["--port", str(free_port()), "--bench", "--concurrency", "1",
                                   "--requests", "2", "--output-len", "4", "--input-len", "8",
                                   "--warmup", "0", "--no-profile"],
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "plan written to" in first.stdout and "A/B summary (complete)" in first.stdout
    assert (
        "serving ckpt at http://127.0.0.1:" in first.stdout
        and "sample: 'The capital" in first.stdout
    )
    assert "curl http://127.0.0.1:" in first.stdout and "OpenAI(base_url=" in first.stdout
    assert json.loads((work / "bench" / "results.json").read_text())["status"] == "complete"
    report = (work / "bench" / "results.md").read_text()
    assert "Amdahl bound was not measured (--no-profile)" in report
    manifest = json.loads((work / "ckpt" / "grasp_manifest.json").read_text())
    second = subprocess.run(base + ["--port", str(free_port())], capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the plan" in second.stderr and "reusing the checkpoint" in second.stderr
    assert "plan written to" not in second.stdout
    assert json.loads((work / "ckpt" / "grasp_manifest.json").read_text()) == manifest


def test_prune_and_serve_a_qwen3_checkpoint_answers_a_chat(text_file, tmp_path):
    from conftest import SERVING_SHAPE, save_tiny

    dense = save_tiny(
        tmp_path / "qwen3", seed=4, family="qwen3", **{**SERVING_SHAPE, "head_dim": 64}
    )
    cmd = [sys.executable, "-m", "grasp_deploy.cli", "prune-and-serve", str(dense),
           "--prune-ratio", "0.3", "--calib", f"file:{text_file}", "-n", "2", "-l", "32", "-e", "1",
           "--dtype", "float32", "--work", str(tmp_path / "work"), "--enforce-eager",
           "--vllm-dtype", "float32", "--kv-cache-gb", "0.02", "--max-model-len", "256", "--once",
           "-q", "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "work" / "ckpt" / "config.json").read_text())
    assert config["architectures"] == ["GraspQwen3ForCausalLM"] and config["head_dim"] == 64
    def samples(prompt: str) -> list[str]:
        return [line.split("->", 1)[1].strip() for line in proc.stdout.splitlines()
                if f"sample: '{prompt}" in line]

    completion = samples("The capital of France is")
    assert len(completion) == 1 and completion[0] not in ("", "''"), proc.stdout
    # the chat turn went through the checkpoint's chat template (a refused request fails the
    # run); a random model's greedy reply may be empty: its first token can end the text
    assert len(samples("chat: What is the capital")) == 1, proc.stdout


def test_prune_and_serve_heals_and_quantizes_then_reuses_both(checkpoints, text_file, tmp_path):
    dense, _ = checkpoints
    work = tmp_path / "work"
    base = _tiny_run(dense, text_file, work) + ["--heal-steps", "3", "--quantize", "int8"]
    first = subprocess.run(base + ["--port", str(free_port())], capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "healed: held-out KL to the dense model" in first.stderr
    assert "serving ckpt-int8 at http://127.0.0.1:" in first.stdout, first.stdout
    served = json.loads((work / "ckpt-int8" / "grasp_manifest.json").read_text())
    assert served["quantization"]["scheme"] == "int8" and served["healing"]["steps"] == 3
    second = subprocess.run(base + ["--port", str(free_port())], capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the healed checkpoint" in second.stderr
    assert "reusing the quantized checkpoint" in second.stderr
    assert json.loads((work / "ckpt-int8" / "grasp_manifest.json").read_text()) == served
    bad = subprocess.run(base[:-4] + ["--heal-minutes", "-1", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--heal-minutes" in bad.stderr, bad.stderr[-2000:]
