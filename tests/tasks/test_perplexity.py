"""Perplexity through an endpoint: the text is tokenized by the server, each window goes out as
token ids with ``prompt_logprobs=0``, and the NLL is the mean of minus the logprob of every
token after the first (a fake vLLM endpoint stands in, with known logprobs)."""

from __future__ import annotations

import http.server
import json
import math
import threading

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.tasks.endpoint import Endpoint
from grasp_deploy.tasks.perplexity import served_perplexity, tokenize


def logprob(token: int) -> float:
    return -0.5 - (token % 7) / 3


@pytest.fixture
def server():
    """A fake vLLM: /tokenize gives one id per character; /v1/completions returns each prompt
    token's logprob (``logprob(id)``, among a decoy) unless the body lacks prompt_logprobs."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if self.path == "/tokenize":
                reply = {"tokens": [ord(c) for c in body["prompt"]]}
            elif body.get("prompt_logprobs") is None:  # what a server without them answers
                reply = {"choices": [{"text": "x"}]}
            else:
                ids = body["prompt"]
                rows = [None] + [{str(t): {"logprob": logprob(t), "rank": 1},
                                  str(t + 1): {"logprob": -9.0, "rank": 2}} for t in ids[1:]]
                reply = {"choices": [{"text": "x", "prompt_logprobs": rows}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Endpoint(f"http://127.0.0.1:{httpd.server_address[1]}", "served"), seen
    httpd.shutdown()


def test_windows_are_scored_from_the_prompt_logprobs_of_their_tokens(server):
    endpoint, seen = server
    ids = tokenize(endpoint, "abcdefghijklmnopqrstuvwxyz")
    assert ids == [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    nll, windows = served_perplexity(endpoint, ids, seq_len=8, concurrency=2)
    assert windows == 3  # 26 tokens: three whole windows of 8, the partial one dropped
    want = [-sum(logprob(t) for t in ids[k * 8 + 1:(k + 1) * 8]) / 7 for k in range(3)]
    assert nll == pytest.approx(sum(want) / 3, rel=1e-12)
    sent = sorted(body["prompt"] for path, body in seen if path == "/v1/completions")
    assert sent == [ids[0:8], ids[8:16], ids[16:24]]
    assert all(body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
               for path, body in seen if path == "/v1/completions")
    one, n = served_perplexity(endpoint, ids, seq_len=8, max_windows=1)
    assert n == 1 and math.isclose(one, want[0], rel_tol=1e-12)


def test_a_server_without_prompt_logprobs_or_too_little_text_is_one_error(server, monkeypatch):
    endpoint, _ = server
    with pytest.raises(GraspError, match="fewer than one window of 64"):
        served_perplexity(endpoint, list(range(10)), seq_len=64)
    from grasp_deploy.tasks import perplexity

    real = perplexity.request
    monkeypatch.setattr(perplexity, "request", lambda e, path, body, timeout: real(
        e, path, {k: v for k, v in body.items() if k != "prompt_logprobs"}, timeout))
    with pytest.raises(GraspError, match="no prompt logprobs .* must be vLLM"):
        served_perplexity(endpoint, list(range(40)), seq_len=16)
