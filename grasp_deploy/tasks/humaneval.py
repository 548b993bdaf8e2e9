"""HumanEval pass@1 of a served model: what users get from the endpoint is what is scored.

For each problem the endpoint completes the problem's prompt greedily (``/v1/completions``,
temperature 0), cut at the stop sequences of the original evaluation; the program (prompt,
completion, the problem's tests, ``check(entry_point)``) runs in the sandbox, and passes when
it exits cleanly. pass@1 with greedy decoding is the fraction of problems that pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import GraspError
from .endpoint import Endpoint, check_url, parallel_map, request, served_model
from .sandbox import Limits, Outcome, run_program

__all__ = ["Endpoint", "HumanEvalResult", "check_url", "complete", "evaluate", "served_model"]

# The stop sequences of the HumanEval paper's evaluation (Chen et al. 2021, section 2.3).
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# OpenAI's API (and vLLM's) takes at most 4 stop strings: the server stops at these, and
# ``cut`` applies all of STOP to what comes back.
SERVER_STOP = STOP[:4]


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


def complete(endpoint: Endpoint, prompt: str, max_tokens: int, timeout: float = 600.0) -> str:
    """One greedy completion from the endpoint, cut at the stop sequences."""
    reply = request(endpoint, "/v1/completions",
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
    completions = parallel_map(lambda p: complete(endpoint, p["prompt"], max_tokens), problems,
                       concurrency, lambda done: tick("generate", done, len(problems)))
    t1 = time.perf_counter()
    limits = limits or Limits()
    outcomes: list[Outcome] = parallel_map(lambda pc: run_program(program(*pc), limits),
                                   list(zip(problems, completions, strict=True)), workers,
                                   lambda done: tick("execute", done, len(problems)))
    t2 = time.perf_counter()
    rows = [{"task_id": p["task_id"], "passed": o.passed, "reason": o.reason, "completion": c}
            for p, c, o in zip(problems, completions, outcomes, strict=True)]
    passed = sum(o.passed for o in outcomes)
    return HumanEvalResult(passed / len(problems), passed, len(problems), max_tokens, t1 - t0,
                           t2 - t1, rows)

