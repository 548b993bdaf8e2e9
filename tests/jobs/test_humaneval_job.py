"""``eval --tasks humaneval``: the command line reaches the job with its options, prints one
summary line (or JSON with every problem), and refuses what cannot be scored in one line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.jobs import humaneval as job
from grasp_deploy.tasks.humaneval import Endpoint, HumanEvalResult


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_eval_humaneval_serves_the_model_and_prints_pass_at_1(monkeypatch):
    seen = []

    def fake(config, say):
        seen.append(config)
        return HumanEvalResult(0.5, 1, 2, config.max_tokens, 3.0, 1.0,
                               [{"task_id": "T/0", "passed": True, "reason": "", "completion": ""}])

    monkeypatch.setattr(job, "run_humaneval", fake)
    r = invoke("eval", "some-model", "--tasks", "humaneval", "--limit", 2, "--max-tokens", 64)
    assert r.exit_code == 0, r.output
    assert (seen[0].model, seen[0].limit, seen[0].max_tokens) == ("some-model", 2, 64)
    assert r.output.startswith("HumanEval pass@1 0.5000 (1 of 2, greedy, up to 64 tokens)")
    r = invoke("eval", "some-model", "--tasks", "humaneval", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows"][0]["task_id"] == "T/0"


def test_a_running_server_is_scored_without_starting_one(monkeypatch, tmp_path):
    monkeypatch.setattr(job, "check_sandbox", lambda: None)
    monkeypatch.setattr(job, "load_problems", lambda limit: [{"task_id": "T/0"}])
    monkeypatch.setattr(job, "VllmServer", lambda *a, **k: AssertionError("started a server"))
    monkeypatch.setattr(job, "served_model", lambda url, key: Endpoint(url, "listed", key))
    scored = []
    monkeypatch.setattr(job, "evaluate", lambda endpoint, problems, *rest, **kw: scored.append(
        endpoint) or HumanEvalResult(1.0, 1, 1, 512, 1.0, 1.0))
    for model, name in ((None, "listed"), ("chosen", "chosen")):
        args = ["--tasks", "humaneval", "--url", "http://127.0.0.1:9", "--api-key", "k"]
        r = invoke("eval", *([model] if model else []), *args)
        assert r.exit_code == 0, r.output
        assert scored[-1] == Endpoint("http://127.0.0.1:9", name, "k")
    # without --tasks, --url scores perplexity through that server (port 9: nothing there)
    text = tmp_path / "text.txt"
    text.write_text("some words to score\n" * 50)
    r = invoke("eval", "m", "--url", "http://127.0.0.1:9", "--data", f"file:{text}")
    assert r.exit_code == 2 and "http://127.0.0.1:9 cannot be reached" in r.output, r.output
    r = invoke("eval", "m", "--served", "--tasks", "humaneval")
    assert r.exit_code == 2 and "--served is for perplexity" in r.output, r.output


def test_bad_humaneval_input_is_one_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(job, "check_sandbox", lambda: None)
    monkeypatch.setattr(job, "load_problems", lambda limit: (_ for _ in ()).throw(
        AssertionError("reached the data")))
    for args, names in ((("--max-tokens", 0), "--max-tokens"), (("--limit", -1), "--limit"),
                        (("--plan", tmp_path), "export the plan"),
                        (("--url", "127.0.0.1:8000"), "is not an http(s) URL")):
        r = invoke("eval", "some-model", "--tasks", "humaneval", *args)
        assert r.exit_code == 2 and r.output.count("\n") == 1 and names in r.output, r.output
