"""What an A/B or soak run is: the models, the server settings, the load levels and the
requests (``workload``), checked when made."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.checks import check_number
from ..core.errors import GraspError
from .workload import Workload, build, random_ids


@dataclass(frozen=True)
class BenchConfig:
    pruned: str  # checkpoint directory (or any model vLLM opens)
    dense: str
    out: Path
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 64  # per level, per model, per repeat
    input_len: int | str = 128  # a length distribution (workload.Lengths): 128, 64..256, ...
    output_len: int | str = 64
    repeats: int = 1
    # open loop (requests/s): one rate for every --concurrency level, or several (a sweep:
    # one level per rate, the largest --concurrency as the user pool); None = closed loop
    request_rate: float | tuple[float, ...] | None = None
    warmup: int = 4
    kv_cache_gb: float = 1.0
    max_model_len: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    tensor_parallel: int = 1  # both servers: vLLM --tensor-parallel-size
    pipeline_parallel: int = 1
    extra_args: tuple[str, ...] = ()
    server_env: dict[str, str] = field(default_factory=dict)  # added to both servers' env
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    seed: int = 0
    level_timeout: float = 1800.0
    startup_timeout: float = 900.0
    vocab_size: int = 32000  # prompts draw ids from [10, vocab_size - 10)
    duration: float | None = None  # soak: the pruned model alone for this many seconds
    soak_warmup: float = 0.0  # soak: seconds of the same load before the measured window
    labels: dict[str, Any] = field(default_factory=dict)  # extra facts for the report
    workload: str = "random"  # workload.KINDS
    prompts: str | None = None  # text source the prompts are cut from (text, prefix)
    prefix_len: int = 0
    prefix_groups: int = 1
    turns: int = 1  # chat sessions: user turns per session
    tokenizer: str | None = None  # the dense model's (set by jobs.bench.resolve)
    profile: bool = True  # after the A/B: the dense decode step profiled, the Amdahl bound

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise GraspError(
                f"--concurrency {self.concurrency} needs positive integers, e.g. 1,4,16"
            )
        for flag, value in (("--requests", self.requests), ("--repeats", self.repeats)):
            check_number(flag, value, low=1, integer=True)
        spec = self.spec  # validates the lengths and the workload's options
        if self.max_model_len is not None and spec.longest > self.max_model_len:
            raise GraspError(f"requests of up to {spec.longest} tokens (prompt and output) do not "
                             f"fit --max-model-len {self.max_model_len}; shorten --input-len or "
                             "--output-len")
        check_number("--warmup", self.warmup, low=0, integer=True)
        check_number("--tensor-parallel-size", self.tensor_parallel, low=1, integer=True)
        check_number("--pipeline-parallel-size", self.pipeline_parallel, low=1, integer=True)
        check_number("--kv-cache-gb", self.kv_cache_gb, low=0, low_open=True)
        for flag, value in (
            ("--slo ttft", self.slo_ttft_ms),
            ("--slo tpot", self.slo_tpot_ms),
            ("--max-model-len", self.max_model_len),
        ):
            if value is not None:
                check_number(flag, value, low=0, low_open=True)
        for rate in self.rates:
            check_number("--request-rate", rate, low=0, low_open=True)
        if self.duration is not None and len(self.rates) > 1:
            raise GraspError("a soak (--duration) runs one load; give one --request-rate")
        if self.duration is not None:
            check_number("--duration", self.duration, low=0, low_open=True)
        check_number("--soak-warmup", self.soak_warmup, low=0)
        for flag, value in (("level timeout", self.level_timeout),
                            ("--startup-timeout", self.startup_timeout)):
            check_number(flag, value, low=0, low_open=True)

    @property
    def rates(self) -> tuple[float, ...]:
        if self.request_rate is None:
            return ()
        if isinstance(self.request_rate, int | float):
            return (float(self.request_rate),)
        return tuple(float(r) for r in self.request_rate)

    @property
    def sweep(self) -> bool:
        return len(self.rates) > 1

    def levels(self) -> list[tuple[str, int, float | None]]:
        """(key, users, rate) per level: each concurrency (closed loop, or open at the one
        rate), or in a sweep each rate with the largest concurrency as the user pool."""
        if self.sweep:
            return [(f"{rate:g}", max(self.concurrency), rate) for rate in self.rates]
        rate = self.rates[0] if self.rates else None
        return [(str(users), users, rate) for users in self.concurrency]

    @property
    def spec(self) -> Workload:
        return Workload.from_fields(vars(self))


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Seeded random token-id prompts, identical for both models."""
    rng = random.Random(seed)
    return [random_ids(rng, length, vocab) for _ in range(n)]


def make_requests(config: BenchConfig, n: int) -> list[dict[str, Any]]:
    """The run's ``n`` requests (prompt ids and max_tokens; chat: sessions of text turns),
    identical for both models."""
    from ..sources.models import load_tokenizer, resolve_source
    from ..sources.text import load_text, parse_source, tokenize

    loaded: list[Any] = []

    def tokenizer() -> Any:
        if not loaded:
            loaded.append(load_tokenizer(resolve_source(config.tokenizer or config.dense)))
        return loaded[0]

    def text_ids(source: str) -> list[int]:
        text = parse_source(source, default_split="test", allow_self=False, flag="--prompts")
        return tokenize(tokenizer(), load_text(text)).tolist()

    return build(config.spec, n, config.seed, config.vocab_size, text_ids,
                 lambda ids: tokenizer().decode(ids, skip_special_tokens=True))
