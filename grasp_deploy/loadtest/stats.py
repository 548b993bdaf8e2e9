"""Timing of one streamed completion and percentile summaries: pure functions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise


@dataclass(frozen=True)
class RequestTiming:
    """One request, timed from its own SSE stream (seconds)."""

    ok: bool
    start: float
    e2e: float  # request sent -> stream closed
    ttft: float | None  # request sent -> first chunk with content
    itl: tuple[float, ...]  # gaps between consecutive content chunks
    tpot: float | None  # (e2e - ttft) / (output tokens - 1)
    output_tokens: int  # from the final usage chunk
    prompt_tokens: int
    error: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["itl"] = list(self.itl)
        return data


def time_stream(start: float, events: Iterable[tuple[float, str | int, dict | None]],
                end: float, error: str | None = None) -> RequestTiming:
    """Timing from stream events ``(arrival time, content, usage or None)``; content is the
    chunk's text, or the number of tokens it carried when its text is empty.

    TTFT: first event with content. ITL: every gap between content events.
    TPOT: (E2E - TTFT) / (output tokens - 1), output tokens from the last usage seen.
    """
    content_times, usage = [], None
    for t, text, use in events:
        if text:
            content_times.append(t)
        if use:
            usage = use
    out_tokens = int(usage.get("completion_tokens", 0)) if usage else 0
    prompt_tokens = int(usage.get("prompt_tokens", 0)) if usage else 0
    e2e = end - start
    ttft = content_times[0] - start if content_times else None
    itl = tuple(b - a for a, b in pairwise(content_times))
    tpot = (e2e - ttft) / (out_tokens - 1) if ttft is not None and out_tokens > 1 else None
    ok = error is None and ttft is not None and usage is not None
    return RequestTiming(ok, start, e2e, ttft, itl, tpot, out_tokens, prompt_tokens,
                         error if error is not None else (None if ok else "no content or usage"))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float], prefix: str, scale: float = 1000.0) -> dict[str, float]:
    """mean/median/p90/p99 in milliseconds with vLLM bench-serve style names."""
    vals = [v * scale for v in values]
    return {f"mean_{prefix}_ms": (sum(vals) / len(vals)) if vals else math.nan,
            f"median_{prefix}_ms": percentile(vals, 50), f"p90_{prefix}_ms": percentile(vals, 90),
            f"p99_{prefix}_ms": percentile(vals, 99)}


def aggregate(
    records: Sequence[RequestTiming],
    duration: float,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict[str, float]:
    """Throughput and latency summary of one run (field names like vLLM's bench serve JSON)."""
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    res = {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "duration": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else math.nan,
        "output_throughput": out_tokens / duration if duration > 0 else math.nan,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration > 0 else math.nan,
    }
    res.update(summarize([r.ttft for r in ok if r.ttft is not None], "ttft"))
    res.update(summarize([r.tpot for r in ok if r.tpot is not None], "tpot"))
    res.update(summarize([g for r in ok for g in r.itl], "itl"))
    res.update(summarize([r.e2e for r in ok], "e2el"))
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        good = [r for r in ok
                if (slo_ttft_ms is None or (r.ttft or 0) * 1000 <= slo_ttft_ms)
                and (slo_tpot_ms is None or (r.tpot or 0) * 1000 <= slo_tpot_ms)]
        res["request_goodput"] = len(good) / duration if duration > 0 else math.nan
    return res
