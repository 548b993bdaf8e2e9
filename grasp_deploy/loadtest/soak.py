"""Soak test (``grasp-deploy bench --duration S``): one server under saturating load for a fixed
time, every request kept, the server's memory (RSS of its whole process group) sampled.

Only the pruned model is soaked: the question is whether the served checkpoint holds up (no
failed requests, no memory growth), not how it compares. The highest ``--concurrency`` level
is used; all traffic stays on loopback and the run is bounded in time and requests.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..server.launcher import VllmServer
from .ab import read_records, run_locust, server_config, timings
from .config import BenchConfig, make_requests
from .metrics import MetricsScraper, Sampler
from .stats import aggregate

PAGE = os.sysconf("SC_PAGE_SIZE")


def group_rss(pgid: int) -> int:
    """Resident memory of every process in group ``pgid``, in bytes (Linux /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            total += int((entry / "statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total


class RssSampler(Sampler):
    """(seconds since start, bytes) of a process group's RSS, every ``period`` seconds."""

    def __init__(self, pgid: int, period: float = 2.0) -> None:
        super().__init__(period)
        self.pgid, self.t0 = pgid, time.perf_counter()

    def sample(self) -> tuple[float, int]:
        return (time.perf_counter() - self.t0, group_rss(self.pgid))


def memory_summary(samples: list[tuple[float, int]], warmup_s: float) -> dict[str, Any]:
    """RSS after warm-up (samples before ``warmup_s`` are left out): first, last, peak and the
    least-squares slope in MiB per minute."""
    if len(samples) < 3:
        return {"samples": len(samples)}
    steady = [(t, b / 2**20) for t, b in samples if t >= warmup_s] or [
        (t, b / 2**20) for t, b in samples]
    n = len(steady)
    mean_t = sum(t for t, _ in steady) / n
    mean_m = sum(m for _, m in steady) / n
    var = sum((t - mean_t) ** 2 for t, _ in steady)
    slope = (sum((t - mean_t) * (m - mean_m) for t, m in steady) / var * 60) if var else 0.0
    return {"samples": len(samples), "rss_first_mib": steady[0][1], "rss_last_mib": steady[-1][1],
            "rss_peak_mib": max(m for _, m in steady), "rss_min_mib": min(m for _, m in steady),
            "slope_mib_per_min": slope, "warmup_excluded_s": warmup_s}


def run_soak(config: BenchConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Soak the pruned model for ``config.duration`` seconds; results also written to out/."""
    from .report import write_soak_report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    users = max(config.concurrency)
    prompts = out / "prompts.json"
    prompts.write_text(json.dumps(make_requests(config, 256)))
    records = out / "requests.jsonl"
    records.write_text("")
    server_cfg = server_config(config, "pruned", "pruned-soak")
    results: dict[str, Any] = {"mode": "soak", "config": {**asdict(config), "out": str(out)},
                               "status": "running", "events": [],
                               "server_settings": server_cfg.cpu_settings()}
    with VllmServer(server_cfg, say=say) as server:
        if config.warmup:
            run_locust(server.url, "pruned", prompts, out / "warmup.jsonl", 1, config.warmup,
                       None, None, config.level_timeout)
        with RssSampler(server.proc.pid) as rss:
            if config.soak_warmup:
                say(f"soak warm-up: {users} users for {config.soak_warmup:.0f}s (not measured)")
                _load(config, server.url, prompts, out / "soak-warmup.jsonl", users,
                      config.soak_warmup)
            measured_from = time.perf_counter() - rss.t0
            say(f"soak: {users} concurrent users for {config.duration:.0f}s on {server.url}")
            with MetricsScraper(server.url, period=2.0) as scraper:
                t0 = time.perf_counter()
                _load(config, server.url, prompts, records, users, config.duration)
                wall = time.perf_counter() - t0
        results["alive_at_end"] = server.alive()
    recs = read_records(records)
    warmup_s = measured_from if config.soak_warmup else 0.1 * wall
    results.update(status="complete", wall_seconds=wall, users=users,
                   summary=aggregate(timings(recs), wall, config.slo_ttft_ms, config.slo_tpot_ms),
                   memory=memory_summary(rss.samples, warmup_s), rss_samples=rss.samples,
                   measured_from_s=measured_from, metrics=scraper.summary())
    write_soak_report(results, out)
    return results


def _load(config: BenchConfig, url: str, prompts: Path, records: Path, users: int,
          seconds: float) -> None:
    """``users`` closed-loop users for ``seconds`` (the request cap only guards a runaway)."""
    run_locust(url, "pruned", prompts, records, users, int(seconds * 200), None,
               (config.rates or (None,))[0], seconds)
