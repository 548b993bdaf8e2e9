"""A/B load test: the dense and the pruned model through the same launcher and the same flags.

For each repeat, each model in turn (dense, pruned, dense, pruned, ...): start its server,
read its KV capacity, send warm-up requests (discarded), then for each level (a concurrency,
or in a sweep a request rate: ``BenchConfig.levels``) run a fixed number of requests with the
locust user (closed loop, or open loop with Poisson arrivals) while scraping ``/metrics``;
stop the server. Every request is kept in a raw
JSONL file and the percentiles are computed from it. All traffic stays on 127.0.0.1 and every
loop is bounded in requests and time. Ctrl-C stops the servers and writes what was measured,
marked incomplete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.errors import GraspError
from ..server.launcher import ServerConfig, VllmServer, free_port
from .config import BenchConfig, make_requests
from .metrics import MetricsScraper
from .stats import RequestTiming, aggregate
from .step_profile import param_ratios, profile_dense

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def run_locust(
    url: str,
    model: str,
    prompts_file: Path,
    records: Path,
    users: int,
    requests: int,
    output_len: int | None,
    rate: float | None,
    timeout: float,
    api_key: str | None = None,
) -> None:
    """One bounded locust run (headless, its own process); records land in ``records``."""
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise GraspError(f"load tests target loopback only, not {url}")
    env = {**os.environ, "GRASP_BENCH_PROMPTS": str(prompts_file), "GRASP_BENCH_MODEL": model,
           "GRASP_BENCH_OUTPUT": str(output_len or 0), "GRASP_BENCH_REQUESTS": str(requests),
           "GRASP_BENCH_RECORDS": str(records), "GRASP_BENCH_RATE": str(rate or 0),
           "GRASP_BENCH_USERS": str(users)}
    if api_key:
        env["GRASP_BENCH_API_KEY"] = api_key
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "-u", str(users), "-r", str(max(users, 1)), "-H", url, "--run-time", f"{int(timeout)}s",
           "--stop-timeout", "30", "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 120)
    if proc.returncode not in (0, 1) or (requests and not records.is_file()):
        raise GraspError(f"locust failed (code {proc.returncode}, no request recorded): "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timings(records: list[dict[str, Any]]) -> list[RequestTiming]:
    return [RequestTiming(**{**{k: r[k] for k in RequestTiming.__dataclass_fields__},
                             "itl": tuple(r["itl"])}) for r in records]


def summarize_level(records: list[dict[str, Any]], config: BenchConfig) -> dict[str, Any]:
    """Pool the requests of every repeat: percentiles over all of them, throughput over the
    summed busy time (first request sent -> last stream closed, per run)."""
    by_run: dict[int, list[dict]] = {}
    for r in records:
        by_run.setdefault(r["repeat"], []).append(r)
    duration = sum(max(r["start"] + r["e2e"] for r in rs) - min(r["start"] for r in rs)
                   for rs in by_run.values())
    return aggregate(timings(records), duration, config.slo_ttft_ms, config.slo_tpot_ms)


def run_ab(config: BenchConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the A/B benchmark; returns the results dict (also written to ``config.out``)."""
    from .report import write_report

    # The warm-up's requests, then each level's own (identical for both models): a level never
    # repeats an earlier level's prompts, which vLLM's prefix cache would hold for the model
    # with the room for them.
    requests = make_requests(config, config.warmup + config.requests * len(config.levels()))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "requests.jsonl"
    raw.write_text("")
    prompts_file = out / "prompts.json"
    prompts_file.write_text(json.dumps(requests))
    results: dict[str, Any] = {
        "config": {**asdict(config), "out": str(out)}, "status": "running",
        "models": {"dense": {"path": config.dense}, "pruned": {"path": config.pruned}},
        "levels": {}, "events": [],
        "server_settings": server_config(config, "dense", "dense").cpu_settings(),
    }
    mode = "sweep" if config.sweep else "open" if config.rates else "closed"
    # Ctrl-C and SIGTERM end the run: servers stopped, partial results written. Our own handler
    # for both, since libraries imported on the way (vLLM's) may have replaced SIGINT's.
    previous = ({sig: signal.signal(sig, _interrupt)
                 for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
                if _main_thread() else None)
    try:
        for rep in range(config.repeats):
            for label in ("dense", "pruned"):
                _bench_one(config, label, rep, results, raw, prompts_file, say)
        results["profile"] = _profile(config, raw.with_name("prompts-run.json"), say)
        results["status"] = "complete"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        results["events"].append("interrupted by the user (Ctrl-C); results are partial")
        say("interrupted: servers stopped, writing partial results")
    except GraspError as err:
        results["status"] = "failed"
        results["events"].append(str(err))
        raise
    finally:
        records = read_records(raw)
        for label in ("dense", "pruned"):
            for level, _, _ in config.levels():
                rs = [r for r in records if r["model"] == label and str(r["level"]) == level]
                if rs:
                    pooled = summarize_level(rs, config)
                    pooled["by_repeat"] = [summarize_level([r for r in rs if r["repeat"] == k],
                                                           config)
                                           for k in sorted({r["repeat"] for r in rs})]
                    results["levels"].setdefault(level, {})[label] = pooled
        results["mode"] = mode
        write_report(results, out)
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)
    return results


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def server_config(config: BenchConfig, label: str, log_name: str) -> ServerConfig:
    """The server for ``label`` ("dense" or "pruned"): the same settings for both."""
    return ServerConfig(model=config.dense if label == "dense" else config.pruned,
                        served_name=label, port=free_port(),
                        log_file=Path(config.out) / "logs" / f"{log_name}.log",
                        kv_cache_gb=config.kv_cache_gb, max_model_len=config.max_model_len,
                        dtype=config.dtype, enforce_eager=config.enforce_eager,
                        tensor_parallel=config.tensor_parallel,
                        pipeline_parallel=config.pipeline_parallel, extra_args=config.extra_args,
                        env=dict(config.server_env), startup_timeout=config.startup_timeout)


def _profile(config: BenchConfig, prompts_file: Path, say: Callable[[str], None],
             ) -> dict[str, Any]:
    """The dense decode step profiled per concurrency level, with the Amdahl bound
    (``loadtest.step_profile``); why not, where it cannot be measured. A failed profile is
    reported, and the A/B it follows is kept."""
    ratios = param_ratios(config.pruned)
    skipped = ("--no-profile" if not config.profile else
               "open-loop runs have no fixed decode batch; profile a closed-loop run"
               if config.rates else
               "the pruned model has no grasp manifest, so its kept-parameter ratio is unknown"
               if ratios is None else None)
    if skipped or ratios is None:
        return {"skipped": skipped}
    say("profiling the dense model's decode step for the Amdahl bound")
    scratch = Path(config.out) / "profile-requests.jsonl"
    server = server_config(config, "dense", "dense-profile")

    def run(url: str, users: int, requests: int) -> None:
        run_locust(url, "dense", prompts_file, scratch, users, requests, None, None,
                   config.level_timeout)

    try:
        levels = profile_dense(server, list(config.concurrency), ratios["decoder_ratio"], run,
                               say)
    except GraspError as err:
        say(f"profile failed: {err}")
        return {"error": str(err)}
    finally:
        scratch.unlink(missing_ok=True)
    return {**ratios, "levels": levels}


def _bench_one(config: BenchConfig, label: str, rep: int, results: dict, raw: Path,
               prompts_file: Path, say: Callable[[str], None]) -> None:
    server_cfg = server_config(config, label, f"{label}-{rep + 1}")
    with VllmServer(server_cfg, say=say) as server:
        info = results["models"][label]
        info["kv"] = server.kv_capacity()
        if config.warmup:
            warm = raw.with_name("warmup.jsonl")
            run_locust(server.url, label, prompts_file, warm, 1, config.warmup, None, None,
                       config.level_timeout)
        all_prompts = json.loads(prompts_file.read_text())
        run_prompts = raw.with_name("prompts-run.json")
        for k, (level, users, rate) in enumerate(config.levels()):
            first = config.warmup + k * config.requests
            run_prompts.write_text(json.dumps(all_prompts[first:first + config.requests]))
            if not server.alive():
                results["events"].append(
                    f"{label} server died before level {level} (repeat {rep}); "
                    f"log: {server.log_path}"
                )
                raise_died(label, server)
            part = raw.with_name(f"part-{label}-{level}-{rep}.jsonl")
            part.unlink(missing_ok=True)
            load = f"{rate:g} requests/s over {users} users" if config.sweep else \
                f"concurrency {level}"
            say(f"{label} (repeat {rep + 1}/{config.repeats}): {load}, "
                f"{config.requests} requests x {config.spec.output_len} tokens")
            with MetricsScraper(server.url) as scraper:
                t0 = time.perf_counter()
                run_locust(server.url, label, run_prompts, part, users, config.requests,
                           None, rate, config.level_timeout)
                wall = time.perf_counter() - t0
            recs = read_records(part)
            part.unlink(missing_ok=True)
            with raw.open("a") as f:
                for r in recs:
                    f.write(json.dumps({"model": label, "level": level, "repeat": rep, **r}) + "\n")
            ok = sum(1 for r in recs if r["ok"])
            results["models"][label].setdefault("metrics", {}).setdefault(str(level), []).append(
                {**scraper.summary(), "repeat": rep, "wall_seconds": wall,
                 "series": scraper.series()})
            say(f"  {ok}/{len(recs)} ok in {wall:.1f}s")
            if not server.alive():
                results["events"].append(
                    f"{label} server died during level {level} (repeat {rep}); "
                    f"kept {len(recs)} measured requests; log: {server.log_path}"
                )
                raise_died(label, server)


class ServerDied(GraspError):
    pass


def raise_died(label: str, server: VllmServer) -> None:
    raise ServerDied(f"the {label} server died mid-run (log: {server.log_path})")
