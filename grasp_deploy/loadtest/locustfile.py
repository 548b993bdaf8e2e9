"""Locust user for OpenAI-compatible servers: streams /v1/completions and times every request
itself from the SSE stream (locust's own stats neither time streamed bodies nor keep raw values).

Configured by environment variables (the A/B runner sets them):

  GRASP_BENCH_PROMPTS    JSON file: a list of requests, used in order: each a token id list,
                         {"prompt": ids, "max_tokens": n} (its own output length), or a chat
                         session {"turns": [{"content": text, "max_tokens": n}, ...]} whose
                         turns go to /v1/chat/completions one after another, history included
  GRASP_BENCH_MODEL      served model name
  GRASP_BENCH_OUTPUT     output tokens of requests given as plain id lists (max_tokens with
                         ignore_eos)
  GRASP_BENCH_REQUESTS   total requests; the run stops itself after that many
  GRASP_BENCH_RECORDS    JSONL file: one timed record per request
  GRASP_BENCH_API_KEY    optional bearer token
  GRASP_BENCH_RATE       optional: open loop, mean requests/s over all users (Poisson arrivals)
  GRASP_BENCH_USERS      the user pool (locust's -u): each user's arrivals are Poisson at
                         RATE / USERS, its first one included
  GRASP_BENCH_TIMEOUT    per-request timeout in seconds (default 600)
"""

from __future__ import annotations

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

from grasp_deploy.loadtest.stats import time_stream

_STATE = {"next": 0, "done": 0, "sessions": 0}


def _cfg(name: str, default: str | None = None) -> str:
    value = os.environ.get(f"GRASP_BENCH_{name}", default)
    if value is None:
        raise RuntimeError(f"GRASP_BENCH_{name} is not set")
    return value


class _Run:
    prompts = json.loads(open(_cfg("PROMPTS")).read())
    model = _cfg("MODEL")
    output = int(_cfg("OUTPUT", "0"))
    total = int(_cfg("REQUESTS"))
    records = open(_cfg("RECORDS"), "a", buffering=1)
    api_key = os.environ.get("GRASP_BENCH_API_KEY")
    rate = float(os.environ.get("GRASP_BENCH_RATE", "0") or 0)
    users = max(1, int(os.environ.get("GRASP_BENCH_USERS", "1") or 1))
    timeout = float(_cfg("TIMEOUT", "600"))
    chat = bool(prompts) and isinstance(prompts[0], dict) and "turns" in prompts[0]


def _wait(user: OpenAIStreamUser) -> float:
    if _Run.rate <= 0:
        return 0.0  # closed loop: each user sends its next request at once
    return user.rng.expovariate(_Run.rate / _Run.users)  # all users' arrivals ~ Poisson(rate)


class OpenAIStreamUser(FastHttpUser):
    wait_time = _wait
    network_timeout = _Run.timeout
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random(hash(id(self)))
        if _Run.rate > 0:  # open loop: the first request is an arrival like the others, not
            gevent.sleep(_wait(self))  # a burst of every user at once

    @task
    def complete(self) -> None:
        index = self._take()
        if _Run.chat:
            session = _STATE["sessions"]
            _STATE["sessions"] += 1
            self._session(session, _Run.prompts[session % len(_Run.prompts)]["turns"])
            return
        entry = _Run.prompts[index % len(_Run.prompts)]
        prompt, wanted = ((entry["prompt"], int(entry["max_tokens"])) if isinstance(entry, dict)
                          else (entry, _Run.output))
        body = {"model": _Run.model, "prompt": prompt, "max_tokens": wanted}
        timing, _ = self._stream("/v1/completions", body)
        self._record({"index": index}, timing, wanted)

    def _session(self, index: int, turns: list[dict]) -> None:
        """A multi-turn chat: each turn sends the whole history so far (its own user messages
        and the model's answers) and counts as one request; the session ends the user's task."""
        messages: list[dict] = []
        for turn, spec in enumerate(turns):
            if turn:
                self._take()
            wanted = int(spec["max_tokens"])
            messages.append({"role": "user", "content": spec["content"]})
            body = {"model": _Run.model, "messages": messages, "max_tokens": wanted}
            timing, answer = self._stream("/v1/chat/completions", body)
            self._record({"index": index, "turn": turn}, timing, wanted)
            if not timing.ok:
                return
            messages.append({"role": "assistant", "content": answer})

    def _take(self) -> int:
        if _STATE["next"] >= _Run.total:
            raise StopUser()  # the last request to finish ends the run
        _STATE["next"] += 1
        return _STATE["next"] - 1

    def _stream(self, path: str, body: dict):
        # return_token_ids: each chunk names the tokens it carries, so a token whose text is
        # held back (part of a UTF-8 character, a special token) still times TTFT and ITL.
        body = {**body, "ignore_eos": True, "temperature": 0.0, "stream": True,
                "return_token_ids": True, "stream_options": {"include_usage": True}}
        headers = {"Authorization": f"Bearer {_Run.api_key}"} if _Run.api_key else {}
        events_seen, answer, error = [], [], None
        start = time.perf_counter()
        try:
            with self.client.post(path, json=body, headers=headers, stream=True,
                                  catch_response=True, name="stream") as resp:
                if resp.status_code != 200:
                    error = f"HTTP {resp.status_code}"
                    resp.failure(error)
                else:
                    # geventhttpclient's readline returns each SSE line as it arrives
                    # (iter_content would wait for whole 1 KiB chunks and blur the timing).
                    raw = resp._response
                    while True:
                        line = raw.readline(b"\n")
                        if not line:
                            break
                        now = time.perf_counter()
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            break
                        chunk = json.loads(payload)
                        text, tokens = _delta(chunk)
                        answer.append(text)
                        events_seen.append((now, text or tokens, chunk.get("usage")))
                    resp.success()
        except Exception as err:  # network failures are counted, not raised
            error = f"{type(err).__name__}: {err}"[:300]
        timing = time_stream(start, events_seen, time.perf_counter(), error)
        return timing, "".join(answer)

    def _record(self, where: dict, timing, wanted: int) -> None:
        record = {**where, **timing.to_json()}
        if timing.ok and timing.output_tokens != wanted:
            record["ok"] = False
            record["error"] = f"got {timing.output_tokens} output tokens, asked {wanted}"
        _Run.records.write(json.dumps(record) + "\n")
        _STATE["done"] += 1
        if _STATE["done"] >= _Run.total:
            # quit() stops every user greenlet, this one included: run it from its own greenlet
            # or it is killed halfway and the process lingers until --run-time.
            gevent.spawn(self.environment.runner.quit)
            raise StopUser()


def _delta(chunk: dict) -> tuple[str, int]:
    """One SSE chunk's text (completions' ``text`` or chat's ``delta.content``) and how many
    output tokens it carries."""
    text, tokens = [], 0
    for choice in chunk.get("choices") or []:
        text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
        tokens += len(choice.get("token_ids") or [])
    return "".join(text), tokens


@events.quitting.add_listener
def _close(**_kwargs) -> None:
    _Run.records.close()
