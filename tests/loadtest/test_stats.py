"""Load test without a server: SSE timing and percentile math on known inputs, the metrics
parser, bad settings, and an unreachable server (every request counted as failed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.loadtest.stats import RequestTiming, aggregate, percentile, summarize, time_stream


def test_stream_timing_on_known_timestamps():
    start = 100.0
    events = [(100.05, "", None),  # role-only chunk: not content
              (100.20, "Hel", None), (100.25, "lo", None), (100.40, " wor", None),
              (100.45, "ld", None), (100.46, "", {"completion_tokens": 4, "prompt_tokens": 9})]
    t = time_stream(start, events, end=100.50)
    assert t.ok and t.output_tokens == 4 and t.prompt_tokens == 9
    assert t.ttft == pytest.approx(0.20)
    assert t.itl == pytest.approx((0.05, 0.15, 0.05))
    assert t.e2e == pytest.approx(0.50)
    assert t.tpot == pytest.approx((0.50 - 0.20) / 3)


def test_tokens_without_text_still_time_the_stream():
    """A chunk whose tokens stream no text yet (part of a UTF-8 character) counts by its token
    count: TTFT and ITL see it, and the request is not mistaken for an empty stream."""
    events = [(0.2, 1, None), (0.3, 1, None), (0.4, "é", None),
              (0.41, "", {"completion_tokens": 3, "prompt_tokens": 5})]
    t = time_stream(0.0, events, end=0.45)
    assert t.ok and t.ttft == pytest.approx(0.2) and t.itl == pytest.approx((0.1, 0.1))
    assert time_stream(0.0, [(0.2, 0, None), (0.3, "", {"completion_tokens": 1})], 0.3).ttft is None


def test_failed_and_empty_streams_are_counted_not_hidden():
    bad = time_stream(0.0, [], end=1.0, error="HTTP 500")
    assert not bad.ok and bad.error == "HTTP 500" and bad.ttft is None and bad.tpot is None
    no_usage = time_stream(0.0, [(0.1, "x", None)], end=0.2)
    assert not no_usage.ok and no_usage.error == "no content or usage"
    good = time_stream(0.0, [(0.1, "a", None), (0.3, "b", {"completion_tokens": 2})], end=0.3)
    res = aggregate([good, bad, no_usage], duration=2.0)
    assert res["completed"] == 1 and res["failed"] == 2
    assert res["output_throughput"] == pytest.approx(1.0)


def test_percentiles_on_known_lists():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    assert percentile(xs, 90) == pytest.approx(4.6)
    rng = np.random.default_rng(0)
    ys = rng.random(101).tolist()
    for q in (1, 37.5, 99):
        assert percentile(ys, q) == pytest.approx(np.percentile(ys, q))
    assert math.isnan(percentile([], 50))
    s = summarize([0.010, 0.020, 0.030], "tpot")
    assert s["mean_tpot_ms"] == pytest.approx(20.0) and s["median_tpot_ms"] == pytest.approx(20.0)


def test_goodput_counts_requests_within_the_slo():
    fast = RequestTiming(True, 0, 1.0, 0.1, (), 0.01, 10, 5)
    slow = RequestTiming(True, 0, 3.0, 0.9, (), 0.05, 10, 5)
    res = aggregate([fast, slow], duration=4.0, slo_ttft_ms=500, slo_tpot_ms=20)
    assert res["request_goodput"] == pytest.approx(0.25)
    assert res["request_throughput"] == pytest.approx(0.5)


def test_metrics_parser():
    from grasp_deploy.loadtest.metrics import MetricsScraper

    text = ('# HELP vllm:kv_cache_usage_perc x\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\n'
            'vllm:num_preemptions_total{engine="0",model_name="m"} 7.0\n')
    assert MetricsScraper.parse(text) == {"kv_cache_usage_perc": 0.25, "num_requests_running": 3.0,
                                          "num_requests_waiting": 1.0, "num_preemptions": 7.0}
    scraper = MetricsScraper("http://127.0.0.1:1")
    scraper.samples = [{"t": 0.0, **MetricsScraper.parse(
        f'vllm:prefix_cache_queries_total{{engine="0"}} {q}\n'
        f'vllm:prefix_cache_hits_total{{engine="0"}} {h}\n')} for q, h in ((100, 0), (900, 600))]
    summary = scraper.summary()  # growth over the level: 600 of 800 prompt tokens were cached
    assert (summary["prefix_cache_queries"], summary["prefix_cache_hits"]) == (800.0, 600.0)
    from grasp_deploy.server.launcher import parse_cache_info

    info = parse_cache_info('vllm:cache_config_info{block_size="128",num_gpu_blocks="40",'
                            'cache_dtype="auto"} 1.0\n')
    assert info == {"block_size": 128.0, "num_gpu_blocks": 40.0}


def test_bad_bench_settings():
    from grasp_deploy.loadtest.ab import run_locust
    from grasp_deploy.loadtest.config import BenchConfig

    with pytest.raises(GraspError, match="--concurrency"):
        BenchConfig(pruned="p", dense="d", out=Path("x"), concurrency=(0,))
    with pytest.raises(GraspError, match="--output-len"):
        BenchConfig(pruned="p", dense="d", out=Path("x"), output_len=1)
    with pytest.raises(GraspError, match="loopback only"):
        run_locust("http://10.0.0.1:8000", "m", Path("p"), Path("r"), 1, 1, 2, None, 5)


def test_unreachable_server_counts_every_request_as_failed(tmp_path):
    from grasp_deploy.loadtest.ab import read_records, run_locust
    from grasp_deploy.loadtest.config import make_prompts
    from grasp_deploy.server.launcher import free_port

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(make_prompts(3, 4, 100, 0)))
    records = tmp_path / "r.jsonl"
    run_locust(f"http://127.0.0.1:{free_port()}", "m", prompts, records, 2, 3, 4, None, 300)
    recs = read_records(records)
    assert len(recs) == 3 and not any(r["ok"] for r in recs)
    assert all(r["error"] for r in recs)


def test_soak_memory_summary_on_known_samples():
    from grasp_deploy.loadtest.soak import memory_summary

    mib = 2**20
    flat = [(t, 500 * mib) for t in range(0, 600, 2)]
    s = memory_summary(flat, 60)
    assert s["slope_mib_per_min"] == pytest.approx(0.0) and s["rss_peak_mib"] == pytest.approx(500)
    growing = [(t, (400 + t / 60) * mib) for t in range(0, 600, 2)]  # +1 MiB per minute
    g = memory_summary(growing, 60)
    assert g["slope_mib_per_min"] == pytest.approx(1.0)
    assert g["warmup_excluded_s"] == 60 and g["rss_first_mib"] == pytest.approx(401)
    # a warm-up that fills caches (a step), then flat: only the window after it is judged
    step = [(t, (400 if t < 300 else 900) * mib) for t in range(0, 900, 2)]
    assert memory_summary(step, 300)["slope_mib_per_min"] == pytest.approx(0.0)
    assert memory_summary(step, 0)["slope_mib_per_min"] > 30


def _ab_results(ratios: dict[int, float], eager: bool, dtype: str, gcd: int | None) -> dict:
    """An A/B results dict with the given pruned/dense throughput ratio per level."""
    def row(tput):
        return {"output_throughput": tput, "median_tpot_ms": 100 / tput, "median_ttft_ms": 50.0,
                "p99_tpot_ms": 120 / tput, "failed": 0}
    labels = {"FFN widths": {"dense": "64", "pruned": "x", "gcd": gcd}} if gcd else {}
    return {
        "config": {"enforce_eager": eager, "dtype": dtype, "labels": labels},
        "levels": {
            str(c): {"dense": row(10.0), "pruned": row(10.0 * r)} for c, r in ratios.items()
        },
    }


def test_hints_name_each_known_cause_when_pruned_is_not_faster():
    from grasp_deploy.loadtest.report import hints

    slow = hints(_ab_results({1: 0.99, 4: 1.3}, eager=True, dtype="float32", gcd=3))
    assert slow[0].startswith("pruned is not faster than dense at concurrency 1 ")
    assert any("--enforce-eager" in h for h in slow) and any("float32" in h for h in slow)
    assert any("gcd is 3" in h and "--align 64" in h for h in slow)
    assert any("fixed costs" in h for h in slow)
    # compiled, bf16, aligned widths: only the fact itself, at every slow level
    plain = hints(_ab_results({1: 1.2, 8: 0.9, 32: 1.0}, eager=False, dtype="auto", gcd=64))
    assert plain == [plain[0]] and "concurrency 8, 32 " in plain[0]
    assert hints(_ab_results({1: 1.2, 8: 1.5}, eager=True, dtype="float32", gcd=1)) == []
