"""What the load test watches while it runs: vLLM's /metrics, sampled in a thread."""

from __future__ import annotations

import re
import threading
import time
import urllib.request


class Sampler:
    """Calls ``sample()`` every ``period`` seconds in a thread while the block runs; keeps
    what it returns (None: nothing this time)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self):
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self.sample()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class MetricsScraper(Sampler):
    """Polls /metrics in a thread: KV usage, running/waiting requests, preemptions, prefix
    cache lookups and hits."""

    NAMES = {"kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
             "num_requests_running": "vllm:num_requests_running",
             "num_requests_waiting": "vllm:num_requests_waiting",
             "num_preemptions": "vllm:num_preemptions",
             "prefix_cache_queries": "vllm:prefix_cache_queries",  # prompt tokens looked up
             "prefix_cache_hits": "vllm:prefix_cache_hits"}  # ... and found cached

    def __init__(self, url: str, period: float = 0.5) -> None:
        super().__init__(period)
        self.url = url
        self.t0 = time.perf_counter()

    @staticmethod
    def parse(text: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"^([\w:]+)(?:\{[^}]*\})?\s+([-\d.eE+naNinf]+)$", line.strip())
            if not m:
                continue
            for key, prefix in MetricsScraper.NAMES.items():
                if m.group(1) == prefix or m.group(1) == prefix + "_total":
                    out[key] = out.get(key, 0.0) + float(m.group(2))
        return out

    def sample(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2) as r:
                return {"t": time.perf_counter() - self.t0, **self.parse(r.read().decode())}
        except OSError:
            return None  # a missed sample, not a failure

    def series(self) -> list[list[float]]:
        """[seconds, running, waiting, KV usage] per sample: the scheduler over time."""
        keys = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
        return [[round(s["t"], 2), *(s.get(k, float("nan")) for k in keys)] for s in self.samples]

    def summary(self) -> dict[str, float]:
        def col(key):
            return [s[key] for s in self.samples if key in s]

        usage, running, waiting = (
            col("kv_cache_usage_perc"),
            col("num_requests_running"),
            col("num_requests_waiting"),
        )
        def grew(key):  # a counter's growth over the level
            values = col(key)
            return values[-1] - values[0] if len(values) >= 2 else 0.0

        return {"kv_cache_usage_peak": max(usage, default=float("nan")),
                "kv_cache_usage_mean": sum(usage) / len(usage) if usage else float("nan"),
                "running_peak": max(running, default=float("nan")),
                "running_mean": sum(running) / len(running) if running else float("nan"),
                "waiting_peak": max(waiting, default=float("nan")),
                "waiting_mean": sum(waiting) / len(waiting) if waiting else float("nan"),
                "preemptions": grew("num_preemptions"),
                "prefix_cache_queries": grew("prefix_cache_queries"),
                "prefix_cache_hits": grew("prefix_cache_hits"),
                "metric_samples": len(self.samples)}
