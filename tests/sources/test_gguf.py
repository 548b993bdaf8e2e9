"""A GGUF file as MODEL: its header decides before any heavy work, it is converted once into
the cache (keyed by its sha256), and the chain runs on it like on any model directory."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.sources import gguf as gguf_source
from grasp_deploy.sources import models

from conftest import listing, write_tiny_gguf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(root))
    return root


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_gguf_file_runs_through_prune_export_and_eval_and_converts_once(
        tmp_path, cache, text_file, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    r = _cli("prune", path, "-r", "0.3", "--method", "wanda-sp", "--calib", f"file:{text_file}",
             "-n", "4", "-l", "32", "--out", tmp_path / "plan", "-q")
    assert r.exit_code == 0, r.output
    converted = list((cache / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    source = json.loads((converted[0] / "grasp_source.json").read_text())
    assert source["gguf"] == str(path.resolve())
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["source"]["name"] == str(converted[0]) and plan["source"]["shape"]["layers"]

    def no_second_conversion(*_a, **_k):
        raise AssertionError("converted twice")
    monkeypatch.setattr(gguf_source, "convert_gguf", no_second_conversion)
    r = _cli("export", path, tmp_path / "plan", "--out", tmp_path / "ckpt")
    assert r.exit_code == 0, r.output
    r = _cli("eval", tmp_path / "ckpt", "--data", f"file:{text_file}", "--seq-len", "32",
             "--max-windows", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["perplexity"] > 1


def _truncated(path):
    data = write_tiny_gguf(path).read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: write_tiny_gguf(p, arch="gemma2"), "holds a 'gemma2' model; supported"),
    (lambda p: write_tiny_gguf(p, split_count=3), "one part of a model split into 3 GGUF files"),
    (_truncated, "is a damaged or truncated GGUF file"),
    (lambda p: p.write_bytes(b"not a model at all" * 10) and p, "is not a GGUF file"),
])
def test_a_bad_gguf_file_is_one_error_before_any_heavy_work(tmp_path, cache, monkeypatch,
                                                            make, message):
    path = tmp_path / "model.gguf"
    make(path)
    monkeypatch.setattr(gguf_source, "convert_gguf",
                        lambda *_a, **_k: pytest.fail("converted a bad file"))
    r = _cli("prune", path, "-r", "0.3", "--method", "magnitude", "--out", tmp_path / "plan")
    assert r.exit_code == 2, r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")] == [
        line for line in r.output.splitlines() if line.strip()]
    assert message in r.output
    assert not (tmp_path / "plan").exists()
    assert not cache.exists() or listing(cache) == []  # nothing converted or cached


def test_the_cache_follows_the_contents_not_the_name(tmp_path, cache):
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=1)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=1)
    c = write_tiny_gguf(tmp_path / "c.gguf", seed=2)
    where = {p.name: models.resolve_source(str(p)).location for p in (a, b, c)}
    assert where["a.gguf"] == where["b.gguf"] != where["c.gguf"]
