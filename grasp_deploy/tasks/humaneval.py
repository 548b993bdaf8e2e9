"""HumanEval pass@1 of a served model: what users get from the endpoint is what is scored.

For each problem the endpoint completes the problem's prompt greedily (``/v1/completions``,
temperature 0), cut at the stop sequences of the original evaluation; the program (prompt,
completion, the problem's tests, ``check(entry_point)``) runs in the sandbox, and passes when
it exits cleanly. pass@1 with greedy decoding is the fraction of problems that pass.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import GraspError
from ..server.net import http_request
from .sandbox import Limits, Outcome, run_program

# The stop sequences of the HumanEval paper's evaluation (Chen et al. 2021, section 2.3).
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# OpenAI's API (and vLLM's) takes at most 4 stop strings: the server stops at these, and
# ``cut`` applies all of STOP to what comes back.
SERVER_STOP = STOP[:4]


@dataclass(frozen=True)
class Endpoint:
    url: str  # http://HOST:PORT (the server's base URL)
    model: str  # the served model name
    api_key: str | None = None


@dataclass
class HumanEvalResult:
    pass_at_1: float
    passed: int
    total: int
    max_tokens: int
    generate_seconds: float
    execute_seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # per problem

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def program(problem: dict[str, Any], completion: str) -> str:
    """What runs: the prompt, the model's completion, the tests and the call to them."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def cut(text: str) -> str:
    """``text`` up to the first of the stop sequences."""
    ends = [i for i in (text.find(s) for s in STOP) if i >= 0]
    return text[:min(ends)] if ends else text


def _request(endpoint: Endpoint, path: str, body: dict[str, Any] | None,
             timeout: float) -> Any:
    """POST ``body`` (GET without one) to the endpoint; the server's refusal is one GraspError."""
    try:
        return json.loads(http_request(endpoint.url.rstrip("/") + path, body, endpoint.api_key,
                                       timeout))
    except urllib.error.HTTPError as err:  # the server's reason, in one line
        detail = err.read().decode(errors="replace").strip().replace("\n", " ")[:300]
        raise GraspError(f"{endpoint.url}{path} refused the request (HTTP {err.code}): "
                         f"{detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise GraspError(f"{endpoint.url} cannot be reached ({err}): is the server running "
                         "there?") from None


def check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise GraspError(f"--url {url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000")


def served_model(url: str, api_key: str | None = None) -> Endpoint:
    """The endpoint of the (first) model an OpenAI-compatible server at ``url`` serves."""
    check_url(url)
    listing = _request(Endpoint(url, "", api_key), "/v1/models", None, timeout=30.0)
    names = [m.get("id") for m in listing.get("data", []) if m.get("id")]
    if not names:
        raise GraspError(f"{url}/v1/models lists no model")
    return Endpoint(url, names[0], api_key)


def complete(endpoint: Endpoint, prompt: str, max_tokens: int, timeout: float = 600.0) -> str:
    """One greedy completion from the endpoint, cut at the stop sequences."""
    reply = _request(endpoint, "/v1/completions",
                     {"model": endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
                      "temperature": 0, "stop": list(SERVER_STOP)}, timeout)
    return cut(reply["choices"][0]["text"])


def evaluate(endpoint: Endpoint, problems: list[dict[str, Any]], max_tokens: int = 512,
             concurrency: int = 8, workers: int = 2, limits: Limits | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> HumanEvalResult:
    """Complete every problem through ``endpoint`` (``concurrency`` requests at a time), then
    run every program in the sandbox (``workers`` at a time)."""
    if not problems:
        raise GraspError("no HumanEval problems to score")
    tick = on_progress or (lambda _stage, _done, _total: None)
    t0 = time.perf_counter()
    completions = _map(lambda p: complete(endpoint, p["prompt"], max_tokens), problems,
                       concurrency, lambda done: tick("generate", done, len(problems)))
    t1 = time.perf_counter()
    limits = limits or Limits()
    outcomes: list[Outcome] = _map(lambda pc: run_program(program(*pc), limits),
                                   list(zip(problems, completions, strict=True)), workers,
                                   lambda done: tick("execute", done, len(problems)))
    t2 = time.perf_counter()
    rows = [{"task_id": p["task_id"], "passed": o.passed, "reason": o.reason, "completion": c}
            for p, c, o in zip(problems, completions, outcomes, strict=True)]
    passed = sum(o.passed for o in outcomes)
    return HumanEvalResult(passed / len(problems), passed, len(problems), max_tokens, t1 - t0,
                           t2 - t1, rows)


def _map(fn: Callable[[Any], Any], items: list[Any], width: int,
         done: Callable[[int], None]) -> list[Any]:
    """``fn`` over ``items`` on ``width`` threads, results in order; ``done(n)`` as they end."""
    out: list[Any] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, width)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for n, future in enumerate(as_completed(futures), start=1):
            out[futures[future]] = future.result()
            done(n)
    return out
