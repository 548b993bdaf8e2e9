"""Adding a method is one module and one registry line: a method defined in this file alone,
with its own settings, runs through the command line's prune, export and eval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.projection import project
from grasp_deploy.methods import (
    Method,
    MethodInput,
    MethodResult,
    MethodSettings,
    flag,
    register,
    unregister,
)


@dataclass(frozen=True)
class ToySettings(MethodSettings):
    favour: str = flag("last", "toy: keep the units at this end of each layer.",
                       name="--toy-favour", choices=("first", "last"))

    def record(self, num_samples: int) -> dict[str, Any]:
        return {"toy_favour": self.favour}


def toy_prune(inp: MethodInput) -> MethodResult:
    """Scores that prefer one end of every segment; the budget by the library's projection."""
    order = np.arange(inp.layout.num_units, dtype=np.float64)
    scores = order if inp.settings.favour == "last" else -order
    return MethodResult(project(scores, inp.layout, inp.budget, kv_budget=inp.kv_budget))


@pytest.fixture
def toy():
    register(Method("toy", toy_prune, "keeps one end of every layer", ToySettings,
                    uses_calibration=False))
    yield
    unregister("toy")


def _run(*args: Any):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_a_method_from_one_file_runs_through_prune_export_and_eval(toy, tiny_dir, text_file,
                                                                   tmp_path):
    assert "--toy-favour" in _run("prune", "--help").output
    _run("prune", tiny_dir, "-r", "0.3", "--method", "toy", "--toy-favour", "first",
         "--out", tmp_path / "plan", "-q")
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["method"] == "toy" and plan["settings"]["toy_favour"] == "first"
    assert plan["layers"][0]["ffn_keep"][0] == 0  # the first channels were kept
    _run("export", tiny_dir, tmp_path / "plan", "--out", tmp_path / "ckpt")
    out = _run("eval", tmp_path / "ckpt", "--data", f"file:{text_file}", "--seq-len", 32,
               "--max-windows", 2, "--json").output
    assert np.isfinite(json.loads(out.strip().splitlines()[-1])["perplexity"])


def test_its_options_are_refused_with_another_method(toy, tiny_dir, tmp_path):
    r = CliRunner().invoke(main, ["prune", str(tiny_dir), "-r", "0.3", "--method", "magnitude",
                                  "--toy-favour", "first", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2
    assert "--toy-favour applies to --method toy, not to --method magnitude" in r.output
