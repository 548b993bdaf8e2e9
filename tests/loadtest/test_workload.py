"""Workloads: length distributions, prompts cut from text, shared prefixes, and the same
requests written as vLLM bench serve's custom dataset."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.loadtest.config import BenchConfig, make_prompts
from grasp_deploy.loadtest.workload import Lengths, Workload, build, vllm_dataset


def test_length_forms_and_their_draws():
    rng = random.Random(0)
    assert Lengths.parse("96").kind == "fixed" and {Lengths.parse(96).draw(rng)} == {96}
    uniform = Lengths.parse("10..14")
    draws = [uniform.draw(rng) for _ in range(500)]
    assert set(draws) == {10, 11, 12, 13, 14}
    normal = Lengths.parse("normal:100,20")
    draws = [normal.draw(rng) for _ in range(4000)]
    assert 97 < statistics.mean(draws) < 103 and 18 < statistics.stdev(draws) < 22
    wide = Lengths.parse("normal:10,50")  # clipped to [1, 20]
    draws = [wide.draw(rng) for _ in range(500)]
    assert min(draws) == 1 and max(draws) == 20
    assert str(uniform) == "10..14 (uniform)" and str(Lengths.parse(7)) == "7"


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "5..2", "0..4", "normal:0,1", "normal:9",
                                 "normal:5,-1", "1.5", ""])
def test_bad_lengths_are_one_clear_error(bad):
    with pytest.raises(GraspError, match=r"--output-len .* is not a token count: use N, LO\.\.HI"):
        Lengths.parse(bad, "--output-len")


def test_random_workload_at_fixed_length_is_the_old_prompt_set():
    requests = build(Workload(input_len=Lengths.parse(12)), 5, seed=3, vocab=500)
    assert [r["prompt"] for r in requests] == make_prompts(5, 12, 500, 3)
    assert {r["max_tokens"] for r in requests} == {64}


def test_text_windows_are_slices_of_the_source_with_drawn_lengths():
    source = list(range(1000, 1400))
    calls = []

    def text_ids(spec):
        calls.append(spec)
        return source

    spec = Workload("text", Lengths.parse("5..40"), Lengths.parse("2..9", "--output-len"),
                    "file:x.txt")
    requests = build(spec, 200, seed=0, vocab=50, text_ids=text_ids)
    assert calls == ["file:x.txt"]  # the text is read once
    for r in requests:
        p = r["prompt"]
        assert 5 <= len(p) <= 40 and 2 <= r["max_tokens"] <= 9
        assert p == list(range(p[0], p[0] + len(p)))  # a contiguous window
    assert {len(r["prompt"]) for r in requests} == set(range(5, 41))
    assert build(spec, 200, seed=0, vocab=50, text_ids=text_ids) == requests
    assert build(spec, 200, seed=1, vocab=50, text_ids=text_ids) != requests


def test_prefix_groups_share_their_prefix_and_nothing_else():
    spec = Workload("prefix", Lengths.parse(6), Lengths.parse(4, "--output-len"),
                    prefix_len=10, prefix_groups=3)
    requests = build(spec, 9, seed=0, vocab=5000)
    heads = [tuple(r["prompt"][:10]) for r in requests]
    assert len(set(heads)) == 3
    assert all(heads[i] == heads[i % 3] for i in range(9))
    assert len({tuple(r["prompt"][10:]) for r in requests}) == 9
    assert all(len(r["prompt"]) == 16 for r in requests)


def test_text_too_short_for_the_longest_request():
    spec = Workload("text", Lengths.parse("10..300"), source="file:x.txt")
    with pytest.raises(GraspError, match=r"--prompts file:x.txt has 100 tokens; requests of up to "
                                         r"300 need more text"):
        build(spec, 4, seed=0, vocab=50, text_ids=lambda _s: list(range(100)))


def test_inconsistent_workload_options():
    with pytest.raises(GraspError, match="--workload text needs --prompts"):
        Workload("text")
    with pytest.raises(GraspError, match="belong to --workload prefix"):
        Workload("random", prefix_len=8)
    with pytest.raises(GraspError, match="--prefix-len >= 1"):
        Workload("prefix")
    with pytest.raises(GraspError, match="TPOT needs at least 2"):
        Workload(output_len=Lengths.parse("1..8", "--output-len"))
    with pytest.raises(GraspError, match="unknown"):
        Workload("sharegpt")


def test_bench_config_checks_requests_fit_the_model_window():
    with pytest.raises(GraspError, match=r"up to 1090 tokens .* do not fit --max-model-len 1024"):
        BenchConfig(pruned="p", dense="d", out=Path("x"), input_len="900..1000",
                    output_len="40..90", max_model_len=1024)
    with pytest.raises(GraspError, match="--input-len '12x' is not a token count"):
        BenchConfig(pruned="p", dense="d", out=Path("x"), input_len="12x")
    ok = BenchConfig(pruned="p", dense="d", out=Path("x"), input_len="normal:500,100",
                     output_len=24, max_model_len=1024)
    assert ok.spec.longest == 1000 + 24


def test_vllm_dataset_holds_the_same_requests(tmp_path):
    requests = [{"prompt": [1, 2, 3], "max_tokens": 7}, {"prompt": [4], "max_tokens": 2}]
    path = vllm_dataset(requests, lambda ids: " ".join(f"w{i}" for i in ids), tmp_path / "d.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"prompt": "w1 w2 w3", "output_tokens": 7},
                    {"prompt": "w4", "output_tokens": 2}]


def test_text_prompts_come_from_the_dense_models_tokenizer(checkpoints, tmp_path):
    from transformers import AutoTokenizer

    from grasp_deploy.loadtest.config import make_requests

    dense, _ = checkpoints
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    config = BenchConfig(pruned="p", dense=str(dense), out=tmp_path / "o", workload="text",
                         prompts=f"file:{text}", input_len="4..12", output_len=3)
    requests = make_requests(config, 20)
    ids = AutoTokenizer.from_pretrained(dense)(text.read_text())["input_ids"]
    joined = ",".join(map(str, ids))
    for r in requests:
        assert 4 <= len(r["prompt"]) <= 12 and ",".join(map(str, r["prompt"])) in joined


def test_chat_sessions_hold_decoded_turns_with_their_own_output_lengths():
    spec = Workload("chat", Lengths.parse("3..5"), Lengths.parse("2..4", "--output-len"),
                    turns=3)
    sessions = build(spec, 6, seed=0, vocab=300, decode=lambda ids: " ".join(map(str, ids)))
    assert len(sessions) == 6 and all(len(s["turns"]) == 3 for s in sessions)
    for turn in (t for s in sessions for t in s["turns"]):
        assert 3 <= len(turn["content"].split()) <= 5 and 2 <= turn["max_tokens"] <= 4
    assert spec.longest == 3 * (5 + 4)
    assert spec.describe()["turns"] == 3
    with pytest.raises(GraspError, match="no single-prompt form"):
        vllm_dataset(sessions, str, Path("unused.jsonl"))
    with pytest.raises(GraspError, match="--turns belongs to --workload chat"):
        Workload("text", source="file:x", turns=2)
