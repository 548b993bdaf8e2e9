"""``grasp-deploy eval MODEL --tasks humaneval``: HumanEval pass@1 through a vLLM server of
MODEL (dense or pruned), the programs run in the sandbox (``tasks.sandbox``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from ..core.checks import check_number
from ..server.launcher import ServerConfig, VllmServer
from ..server.net import free_port
from ..sources import models
from ..sources.humaneval import load_problems
from ..tasks.humaneval import Endpoint, HumanEvalResult, check_url, evaluate, served_model
from ..tasks.sandbox import check_sandbox
from . import serve


@dataclass(frozen=True)
class HumanEvalConfig:
    model: str | None  # what to serve; with url: the served model's name (None: the first)
    url: str | None = None  # score this running OpenAI-compatible server instead of serving
    api_key: str | None = None  # the server's bearer token (with url)
    limit: int | None = None  # the first N problems (quick checks)
    max_tokens: int = 512
    concurrency: int = 8  # requests in flight
    workers: int = 2  # programs running at once
    kv_cache_gb: float = 1.0
    max_model_len: int = 2048
    dtype: str = "auto"
    enforce_eager: bool = False
    verify: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None:
            check_number("--limit", self.limit, low=1, integer=True)
        for flag, value in (("--max-tokens", self.max_tokens),
                            ("--concurrency", self.concurrency), ("--workers", self.workers)):
            check_number(flag, value, low=1, integer=True)
        if self.url is not None:
            check_url(self.url)


def run_humaneval(config: HumanEvalConfig, say: Callable[[str], None] = print,
                  on_progress: Callable[[str, int, int], None] | None = None
                  ) -> HumanEvalResult:
    """Check the sandbox and the problems first, then serve MODEL (or reach the server at
    ``url``), complete and score."""
    check_sandbox()
    problems = load_problems(limit=config.limit)
    with ExitStack() as stack:
        if config.url is not None:  # a server the user runs
            endpoint = served_model(config.url, config.api_key)
            if config.model:
                endpoint = Endpoint(endpoint.url, config.model, config.api_key)
            say(f"scoring {endpoint.model!r} served at {endpoint.url}")
        else:
            server = serve.resolve(ServerConfig(
                model=config.model or models.DEFAULT_MODEL, port=free_port(), dtype=config.dtype,
                enforce_eager=config.enforce_eager, kv_cache_gb=config.kv_cache_gb,
                max_model_len=config.max_model_len), verify=config.verify)
            running = stack.enter_context(VllmServer(server, say=say))
            endpoint = Endpoint(running.url, server.name)
        return evaluate(endpoint, problems, config.max_tokens, config.concurrency,
                        config.workers, on_progress=on_progress)
