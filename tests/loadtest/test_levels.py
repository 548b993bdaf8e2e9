"""Each level of an A/B sends its own requests, the same ones to both models: a level never
repeats an earlier level's prompts (vLLM's prefix cache would answer them for the model with
room to keep them). No vLLM: the server and the load generator are stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

from grasp_deploy.loadtest import ab
from grasp_deploy.loadtest.config import BenchConfig


class FakeServer:
    def __init__(self, config, say=None):
        self.url, self.log_path = "http://127.0.0.1:1", Path("x.log")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def kv_capacity(self):
        return {}

    def alive(self):
        return True


class FakeScraper(FakeServer):
    def summary(self):
        return {}

    def series(self):
        return []


def test_every_level_sends_its_own_requests_to_both_models(monkeypatch, tmp_path):
    sent: list[tuple[str, int, list]] = []  # (model, users, prompts) per measured run

    def locust(url, model, prompts_file, records, users, requests, *rest):
        if records.name != "warmup.jsonl":
            sent.append((model, users, json.loads(prompts_file.read_text())[:requests]))

    monkeypatch.setattr(ab, "VllmServer", FakeServer)
    monkeypatch.setattr(ab, "MetricsScraper", FakeScraper)
    monkeypatch.setattr(ab, "run_locust", locust)
    config = BenchConfig(pruned="p", dense="d", out=tmp_path / "b", concurrency=(2, 4, 8),
                         requests=5, input_len=6, output_len=3, repeats=2, warmup=2,
                         profile=False)
    ab.run_ab(config, say=lambda _: None)
    assert len(sent) == 2 * 2 * 3  # repeats x models x levels
    by_level: dict[int, list] = {}
    for model, users, prompts in sent:
        assert len(prompts) == 5
        by_level.setdefault(users, []).append((model, prompts))
    for got in by_level.values():  # dense and pruned, every repeat: the same requests
        assert sorted(model for model, _ in got) == ["dense", "dense", "pruned", "pruned"]
        assert all(prompts == got[0][1] for _, prompts in got)
    seen = [tuple(r["prompt"]) for got in by_level.values() for r in got[0][1]]
    assert len(set(seen)) == len(seen) == 15  # no prompt in two levels
    warmup = json.loads((tmp_path / "b" / "prompts.json").read_text())[:2]
    assert not {tuple(r["prompt"]) for r in warmup} & set(seen)
