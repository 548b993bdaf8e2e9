"""Open loop: the load generator's arrivals are Poisson from the first request on, not a burst
of every user at once. A fake OpenAI streaming server on loopback answers at once; locust runs
as the A/B runs it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grasp_deploy.loadtest.ab import read_records, run_locust


class Streamer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the http.server name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chunks = [{"choices": [{"text": "a", "token_ids": [5]}]}] * body["max_tokens"]
        chunks.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                "completion_tokens": body["max_tokens"]}})
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        data = payload.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Streamer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_open_loop_arrivals_do_not_start_with_a_burst(server, tmp_path):
    """16 users at 2 requests/s: 12 Poisson arrivals span about 5.5 s (below 1.5 s with
    probability 3e-4); a burst of all users would send them within the spawn (under 1 s)."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": [1, 2, 3], "max_tokens": 2}] * 12))
    records = tmp_path / "records.jsonl"
    run_locust(server, "m", prompts, records, users=16, requests=12, output_len=None, rate=2.0,
               timeout=60)
    starts = sorted(r["start"] for r in read_records(records))
    assert len(starts) == 12
    assert starts[-1] - starts[0] > 1.5, starts
