"""The A/B rows: pooled ratios, their spread over ABAB repeats, and the CSV beside the JSON."""

from __future__ import annotations

import csv
import math

import pytest

from grasp_deploy.loadtest.tables import spread_text, summary_rows, write_csv


def _model(tok_s: list[float], tpot: list[float]) -> dict:
    def one(t, p):
        return {"output_throughput": t, "median_tpot_ms": p, "median_ttft_ms": 100.0,
                "p99_tpot_ms": 2 * p, "failed": 0}

    pooled = one(sum(tok_s) / len(tok_s), sum(tpot) / len(tpot))
    return {**pooled, "by_repeat": [one(t, p) for t, p in zip(tok_s, tpot, strict=True)]}


def test_ratios_carry_their_spread_over_repeats(tmp_path):
    results = {"levels": {
        "8": {"dense": _model([40.0, 50.0], [20.0, 16.0]),
              "pruned": _model([52.0, 60.0], [15.0, 13.6])},
        "1": {"dense": _model([10.0], [100.0]), "pruned": _model([13.0], [80.0])},
    }}
    one, eight = summary_rows(results)
    assert one["level"] == 1 and one["repeats"] == 1
    assert one["ratio_output_throughput"] == pytest.approx(1.3)
    assert spread_text(one, "output_throughput") == "1.300"
    assert eight["repeats"] == 2
    assert eight["ratio_output_throughput"] == pytest.approx(56 / 45)
    assert eight["ratio_output_throughput_min"] == pytest.approx(1.2)  # 60 / 50
    assert eight["ratio_output_throughput_max"] == pytest.approx(1.3)  # 52 / 40
    assert eight["ratio_median_tpot_ms_min"] == pytest.approx(0.75)
    assert eight["ratio_median_tpot_ms_max"] == pytest.approx(0.85)
    assert spread_text(eight, "output_throughput") == "1.244 (1.200-1.300)"

    path = write_csv(results, tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert [r["level"] for r in rows] == ["1", "8"]
    assert float(rows[1]["ratio_output_throughput_min"]) == pytest.approx(1.2)
    assert float(rows[1]["dense_output_throughput"]) == pytest.approx(45.0)


def test_results_from_before_repeats_were_kept_still_summarize():
    old = {"levels": {"4": {"dense": {"output_throughput": 20.0, "median_tpot_ms": 50.0,
                                      "median_ttft_ms": 9.0, "p99_tpot_ms": 70.0},
                            "pruned": {"output_throughput": 30.0, "median_tpot_ms": 40.0,
                                       "median_ttft_ms": 8.0, "p99_tpot_ms": 60.0}}}}
    (row,) = summary_rows(old)
    assert row["repeats"] == 1 and row["ratio_output_throughput_min"] == pytest.approx(1.5)
    assert not math.isnan(row["ratio_p99_tpot_ms_max"])


def test_a_rate_sweep_is_one_level_per_rate_over_the_largest_pool():
    from pathlib import Path

    from grasp_deploy.core.errors import GraspError
    from grasp_deploy.loadtest.config import BenchConfig

    base = dict(pruned="p", dense="d", out=Path("x"), concurrency=(1, 16))
    assert BenchConfig(**base).levels() == [("1", 1, None), ("16", 16, None)]
    assert BenchConfig(**base, request_rate=2.0).levels() == [("1", 1, 2.0), ("16", 16, 2.0)]
    sweep = BenchConfig(**base, request_rate=(0.5, 2.0, 1.0))
    assert sweep.sweep and sweep.levels() == [("0.5", 16, 0.5), ("2", 16, 2.0), ("1", 16, 1.0)]
    with pytest.raises(GraspError, match="--request-rate"):
        BenchConfig(**base, request_rate=(1.0, 0.0))
    with pytest.raises(GraspError, match="give one --request-rate"):
        BenchConfig(**base, request_rate=(1.0, 2.0), duration=10.0)


def test_a_sweep_report_reads_in_rates():
    from grasp_deploy.loadtest.report import hints, markdown

    def row(tput):
        return {"output_throughput": tput, "median_tpot_ms": 100 / tput, "median_ttft_ms": 50.0,
                "p99_tpot_ms": 120 / tput, "failed": 0}

    results = {
        "status": "complete", "mode": "sweep", "events": [],
        "config": {"pruned": "p", "dense": "d", "requests": 8, "repeats": 1, "input_len": 16,
                   "output_len": 8, "concurrency": [1, 32], "request_rate": [0.5, 2.0, 1.0],
                   "enforce_eager": False, "dtype": "auto", "kv_cache_gb": 1.0, "labels": {}},
        "models": {"dense": {}, "pruned": {}},
        "levels": {"0.5": {"dense": row(4.0), "pruned": row(4.4)},
                   "2": {"dense": row(14.0), "pruned": row(13.0)},
                   "1": {"dense": row(8.0), "pruned": row(8.8)}},
    }
    assert [r["level"] for r in summary_rows(results)] == [0.5, 1, 2]
    md = markdown(results)
    assert "one level per request rate (Poisson arrivals) over 32 users" in md
    assert "| request rate (req/s) | output tok/s dense |" in md
    assert md.index("| 0.5 | 4.0 |") < md.index("| 1 | 8.0 |") < md.index("| 2 | 14.0 |")
    (slow,) = hints(results)
    assert slow.startswith("pruned is not faster than dense at request rate (req/s) 2 ")
