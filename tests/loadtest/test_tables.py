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
