"""The decode step read from a profiler trace, the Amdahl bound it gives, and the report's
"attainable speed-up" section (a synthetic trace of known shape; the real one is read in the
vLLM A/B test)."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.loadtest import ab
from grasp_deploy.loadtest.step_profile import (
    SCOPE,
    amdahl_bound,
    load_trace,
    param_ratios,
    steps,
    summarize,
)
from grasp_deploy.loadtest.tables import bound_lines, summary_rows


def _x(name: str, ts: float, dur: float, tid: int = 1) -> dict:
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid}


def _step(t0: float, batch: int, prompt: int = 0) -> list[dict]:
    """One engine step of 100 us: forward 70 (linear 30 + 10 nested inside it, attention 20),
    LM head 12, sampling 3, preprocess 5; 10 us between steps."""
    fwd = t0 + 5
    return [
        _x(f"execute_context_{prompt}({prompt})_generation_{batch}({batch})", t0, 1),
        _x(SCOPE + "preprocess", t0, 5),
        _x(SCOPE + "forward", fwd, 70),
        _x("aten::linear", fwd + 1, 30), _x("aten::addmm", fwd + 2, 10),  # nested: once
        _x("cpu_gemm", fwd + 35, 10),
        _x("paged_attention_v1", fwd + 50, 20),
        _x("aten::linear", fwd + 1, 30, tid=2),  # another thread: not this step's
        _x(SCOPE + "postprocess", t0 + 75, 12),
        _x(SCOPE + "sample", t0 + 87, 3),
    ]


def _trace(batches: list[tuple[int, int]]) -> list[dict]:
    events = []
    for k, (batch, prompt) in enumerate(batches):
        events += _step(100.0 * k, batch, prompt)
    return events


def test_a_decode_step_splits_into_its_parts():
    parts = steps(_trace([(4, 0), (4, 0), (4, 0)]))
    assert len(parts) == 2  # the last step has no successor to end it
    s = parts[0]
    assert s["batch"] == 4
    assert s["decoder linear"] == 40  # 30 (the nested addmm not again) + 10
    assert s["attention"] == 20
    assert s["forward, other"] == 10
    assert s["LM head + logits"] == 12 and s["sampling"] == 3 and s["runner, other"] == 5
    assert s["between steps"] == 100 - 70 - 12 - 3 - 5


def test_prompt_steps_are_left_out_and_the_full_batch_is_preferred():
    events = _trace([(0, 4), (3, 0), (4, 0), (4, 0), (2, 0)])
    kept = steps(events)
    assert [s["batch"] for s in kept] == [3, 4, 4]  # the prefill step and the last one out
    summary = summarize([events], 4)
    assert summary["decode_steps"] == 3 and summary["steps_at_full_batch"] == 2
    assert summary["step_ms"] == pytest.approx(0.1)
    assert summary["ms"]["decoder linear"] == pytest.approx(0.04)


def test_the_amdahl_bound_scales_only_the_decoder_forward():
    ms = {"decoder linear": 4.0, "attention": 2.0, "forward, other": 2.0,
          "LM head + logits": 1.5, "sampling": 0.2, "runner, other": 0.1, "between steps": 0.2}
    half = amdahl_bound(ms, 0.5)
    assert half["decoder_share"] == pytest.approx(0.8)
    assert half["amdahl_bound"] == pytest.approx(10 / (10 - 4))
    assert amdahl_bound(ms, 1.0)["amdahl_bound"] == pytest.approx(1.0)


def test_the_worker_trace_is_found_among_the_files(tmp_path):
    (tmp_path / "frontend.json").write_text(json.dumps({"traceEvents": [_x("http", 0, 5)]}))
    (tmp_path / "worker.json.gz").write_bytes(
        gzip.compress(json.dumps({"traceEvents": _trace([(2, 0), (2, 0)])}).encode()))
    assert len(load_trace(tmp_path)) == len(_trace([(2, 0), (2, 0)]))


def test_parameter_ratios_come_from_the_manifest(tmp_path):
    assert param_ratios(tmp_path) is None
    budget = {"prunable_kept": 50, "prunable_dense": 100, "model_dense": 165, "model_pruned": 100}
    (tmp_path / "grasp_manifest.json").write_text(json.dumps({"budget": budget}))
    assert param_ratios(tmp_path) == {"decoder_ratio": 0.5, "param_bound": 1.65}


def _results(profile: dict) -> dict:
    def model(tok_s: float) -> dict:
        return {"output_throughput": tok_s, "median_tpot_ms": 10.0, "median_ttft_ms": 50.0,
                "p99_tpot_ms": 20.0, "failed": 0}

    return {"levels": {"8": {"dense": model(100.0), "pruned": model(150.0)}},
            "profile": profile}


def test_the_report_states_the_bound_and_the_fraction_reached():
    profile = {"decoder_ratio": 0.5, "param_bound": 1.65,
               "levels": {"8": {"step_ms": 30.0, "decoder_share": 0.8,
                                "amdahl_bound": 10 / 6}}}
    row = summary_rows(_results(profile))[0]
    assert row["amdahl_bound"] == pytest.approx(10 / 6)
    assert row["fraction_of_amdahl_bound"] == pytest.approx(1.5 / (10 / 6))
    text = "\n".join(bound_lines(_results(profile)))
    assert "| 8 | 30.0 | 0.80 | 1.667 | 1.500 | 0.90 |" in text
    assert "Parameter-count bound x1.650" in text


@pytest.mark.parametrize("profile, why", [
    ({"skipped": "--no-profile"}, "(--no-profile)"),
    ({"error": "no trace"}, "the profile failed: no trace"),
    (None, "the run ended before the profile"),
])
def test_a_missing_bound_says_why(profile, why):
    results = _results(profile)
    assert why in "\n".join(bound_lines(results))
    assert math.isnan(summary_rows(results)[0]["fraction_of_amdahl_bound"])


def test_no_module_beside_the_locustfile_shadows_the_standard_library():
    """locust puts the locustfile's folder first on sys.path: a ``profile.py`` there replaced
    the standard library's (imported by torch), and every run recorded nothing."""
    folder = Path(ab.LOCUSTFILE).parent
    clashes = [p.stem for p in folder.glob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == []


def test_a_locust_run_that_records_nothing_is_an_error(tmp_path, monkeypatch):
    broken = tmp_path / "locustfile.py"
    broken.write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.setattr(ab, "LOCUSTFILE", broken)
    with pytest.raises(GraspError, match="no request recorded"):
        ab.run_locust("http://127.0.0.1:9", "m", tmp_path / "p.json", tmp_path / "r.jsonl",
                      1, 2, 4, None, 30)
