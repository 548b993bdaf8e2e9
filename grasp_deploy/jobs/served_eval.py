"""``grasp-deploy eval MODEL --served`` (or ``--url URL``): perplexity as vLLM serves the
model, by the protocol of ``eval`` (``tasks.perplexity``). A server of MODEL is started for the
measurement (its context one token longer than a window), or the running one at ``url`` scores."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..core.checks import check_number
from ..core.errors import GraspError
from ..server.launcher import ServerConfig, VllmServer
from ..server.net import free_port
from ..sources import models, text
from ..tasks.endpoint import Endpoint, check_url, served_model
from ..tasks.perplexity import served_perplexity, tokenize
from . import loading, serve
from .evaluate import EvalResult


@dataclass(frozen=True)
class ServedEvalConfig:
    model: str | None  # what to serve; with url: the served model's name (None: the first)
    url: str | None = None  # score this running vLLM server instead of starting one
    api_key: str | None = None
    data: str = "wikitext2"
    seq_len: int = 2048
    max_windows: int | None = None
    concurrency: int = 2  # windows in flight
    dtype: str = "auto"  # vLLM's --dtype
    kv_cache_gb: float = 1.0
    enforce_eager: bool = False
    progress: bool = True
    verify: bool = True

    def __post_init__(self) -> None:
        check_number("--seq-len", self.seq_len, low=2, integer=True)
        if self.max_windows is not None:
            check_number("--max-windows", self.max_windows, low=1, integer=True)
        check_number("--concurrency", self.concurrency, low=1, integer=True)
        if self.url is not None:
            check_url(self.url)


def _start(config: ServedEvalConfig, stack: ExitStack, say: Callable[[str], None]) -> Endpoint:
    """A server of ``config.model`` whose context holds a window and the one token generated."""
    source = models.resolve_source(config.model)
    limit = getattr(loading.load_config(source), "max_position_embeddings", None)
    if limit is not None and config.seq_len + 1 > limit:
        raise GraspError(f"--seq-len {config.seq_len} leaves no room in the model's context of "
                         f"{limit} tokens for the token the server generates; use --seq-len "
                         f"{limit - 1} or less")
    server = serve.resolve(ServerConfig(
        model=config.model or models.DEFAULT_MODEL, port=free_port(), dtype=config.dtype,
        enforce_eager=config.enforce_eager, kv_cache_gb=config.kv_cache_gb,
        max_model_len=config.seq_len + 1), verify=config.verify)
    running = stack.enter_context(VllmServer(server, say=say))
    return Endpoint(running.url, server.name)


def run_served_eval(config: ServedEvalConfig, say: Callable[[str], None] = print) -> EvalResult:
    source = text.parse_source(config.data, default_split="test", allow_self=False, flag="--data")
    content = text.load_text(source)  # a missing file fails before any server starts
    with ExitStack() as stack:
        if config.url is not None:
            endpoint = served_model(config.url, config.api_key)
            if config.model:
                endpoint = Endpoint(endpoint.url, config.model, config.api_key)
            say(f"scoring {endpoint.model!r} served at {endpoint.url}")
        else:
            endpoint = _start(config, stack, say)
        ids = tokenize(endpoint, content)
        t0 = time.perf_counter()
        bar = stack.enter_context(tqdm(total=None, desc="eval (served)", unit="window",
                                       disable=not config.progress, dynamic_ncols=True))

        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        nll, windows = served_perplexity(endpoint, ids, config.seq_len, config.max_windows,
                                         config.concurrency, tick)
    return EvalResult(
        perplexity=math.exp(nll), nll=nll, windows=windows, seq_len=config.seq_len,
        tokens=windows * config.seq_len, model=config.model or endpoint.model, plan=None,
        data=config.data, dtype=config.dtype if config.url is None else "as served",
        seconds=time.perf_counter() - t0, engine="vllm")
