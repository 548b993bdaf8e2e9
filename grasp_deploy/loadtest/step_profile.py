"""The attainable speed-up on the machine at hand: where the dense model's decode step spends
its time, and the Amdahl bound that follows.

After the A/B runs, the dense model is started once more, on the same server settings plus
vLLM's torch profiler and its runner scopes (``VLLM_CUSTOM_SCOPES_FOR_PROFILING``); for each
concurrency level one short closed-loop run is profiled. From the worker's trace each pure
decode step (vLLM names a step by its batch: ``execute_context_0(0)_generation_N(N)`` has N
decoding requests and no prompt) is split into

- decoder linear layers (the GEMMs inside the model's forward),
- attention (vLLM's paged-attention ops),
- the rest of the forward (norms, RoPE, SiLU*mul, embedding, compiled glue),
- the LM head and logits (the runner's ``postprocess`` scope), sampling (``sample``),
- the runner's other scopes, and the time between steps (scheduler, engine-core IPC).

Pruning shrinks the decoder's forward, and nothing else. The Amdahl bound is the dense step's
time over the same step with its decoder forward scaled by the pruned/dense decoder-parameter
ratio: the speed-up a perfect pruned kernel could reach with the rest of the step unchanged.
Medians over the steps that ran the full batch; profiler overhead is part of every op, so the
bound is an estimate of the same kind as the parameter-count bound, but from this machine.
"""

from __future__ import annotations

import gzip
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..checkpoint import format as fmt
from ..core.errors import GraspError
from ..server.launcher import ServerConfig, VllmServer
from ..server.net import http_request

SCOPE = "gpu_model_runner: "
LINEAR = ("onednn_mm", "aten::linear", "aten::mm", "aten::addmm", "aten::matmul", "cpu_gemm")
ATTENTION = ("attention", "attn", "paged")
DECODER = ("decoder linear", "attention", "forward, other")
PARTS = (*DECODER, "LM head + logits", "sampling", "runner, other", "between steps")


def read_events(path: Path) -> list[dict]:
    raw = path.read_bytes()
    data = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    return [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


def worker_trace(paths: list[Path], where: str) -> list[dict]:
    """The complete events ("X") of the trace among ``paths`` that has the model runner's
    scopes (the worker's; the front end writes its own trace beside it)."""
    for path in sorted(paths, key=lambda p: -p.stat().st_size):
        events = read_events(path)
        if any(e["name"].startswith(SCOPE) for e in events):
            return events
    raise GraspError(f"no trace with vLLM's model-runner scopes {where}")


def load_trace(directory: Path) -> list[dict]:
    """The worker's trace among the files under ``directory``."""
    return worker_trace(list(directory.rglob("*.json*")), f"under {directory}")


def wait_for_traces(root: Path, before: set[Path], timeout: float = 300.0) -> list[Path]:
    """New trace files under ``root``, once their sizes stop changing (written after stop)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        new = sorted(set(root.rglob("*.json*")) - before)
        sizes = [(p, p.stat().st_size) for p in new]
        if new and sizes == last:
            return new
        last = sizes
        time.sleep(2)
    raise GraspError(f"no profiler trace appeared under {root} within {timeout:.0f} s")


def outermost(events: list[dict], match: Callable[[str], bool]) -> list[dict]:
    """Events whose name matches, leaving out those inside an earlier match (no double count)."""
    kept, end = [], -1.0
    for e in sorted((e for e in events if match(e["name"])), key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= end:
            kept.append(e)
            end = e["ts"] + e["dur"]
    return kept


def inside(events: list[dict], outer: dict) -> list[dict]:
    lo, hi = outer["ts"], outer["ts"] + outer["dur"]
    return [e for e in events if lo <= e["ts"] and e["ts"] + e["dur"] <= hi and e is not outer]


def is_attention(name: str) -> bool:
    return any(k in name.lower() for k in ATTENTION) and not name.startswith(SCOPE)


def steps(events: list[dict]) -> list[dict[str, float]]:
    """Per pure decode step, microseconds in each part (and its batch); a step runs from its
    event's start to the next step's, so "between steps" is that period minus the runner's
    scopes."""
    events = sorted((e for e in events if e.get("tid") is not None), key=lambda e: e["ts"])
    starts = [e for e in events if e["name"].startswith("execute_context_")]
    scopes = [e for e in events if e["name"].startswith(SCOPE)]
    out = []
    for this, following in pairwise(starts):
        if not this["name"].startswith("execute_context_0(0)_generation_") or \
                this["name"].startswith("execute_context_0(0)_generation_0("):
            continue
        lo, hi = this["ts"], following["ts"]
        mine = [s for s in scopes if lo <= s["ts"] < hi and s["tid"] == this["tid"]]
        forwards = [s for s in mine if s["name"] == SCOPE + "forward"]
        if len(forwards) != 1:
            continue
        fwd = forwards[0]
        ops = [e for e in inside(events, fwd) if e["tid"] == fwd["tid"]]
        linear = sum(e["dur"] for e in outermost(ops, lambda n: any(k in n for k in LINEAR)))
        attn = sum(e["dur"] for e in outermost(ops, is_attention))

        def scope(*names: str, mine: list[dict] = mine) -> float:
            return sum(s["dur"] for s in mine if s["name"] in tuple(SCOPE + n for n in names))

        step = {"decoder linear": linear, "attention": attn,
                "forward, other": fwd["dur"] - linear - attn,
                "LM head + logits": scope("postprocess"), "sampling": scope("sample"),
                "runner, other": scope("preprocess", "bookkeep", "eplb", "ModelRunnerOutput"),
                "batch": batch_of(this["name"])}
        step["between steps"] = (hi - lo) - fwd["dur"] - sum(
            step[p] for p in ("LM head + logits", "sampling", "runner, other"))
        out.append(step)
    return out


def batch_of(name: str) -> int:
    """N of ``execute_context_0(0)_generation_N(N)``: the decode batch."""
    return int(name.rsplit("_", 1)[1].split("(")[0])


def summarize(runs: list[list[dict]], level: int) -> dict[str, Any]:
    """Median milliseconds per part over the decode steps that ran the full batch of ``level``
    requests (all decode steps if none did), pooled over the runs; the top ops by time."""
    all_steps = [s for events in runs for s in steps(events)]
    if not all_steps:
        raise GraspError("the profiler trace has no decode steps with vLLM's runner scopes "
                         "(VLLM_CUSTOM_SCOPES_FOR_PROFILING unset, or not a CPU server?)")
    full = [s for s in all_steps if s["batch"] == level] or all_steps
    parts = {p: statistics.median(s[p] for s in full) / 1e3 for p in PARTS}
    top: dict[str, float] = {}
    for e in (e for run in runs for e in run):
        if not e["name"].startswith((SCOPE, "execute_context", "PyTorch Profiler")):
            top[e["name"]] = top.get(e["name"], 0.0) + e["dur"]
    return {"decode_steps": len(all_steps), "steps_at_full_batch": len(full), "ms": parts,
            "step_ms": sum(parts.values()),
            "top_ops_ms": dict(sorted(((k, v / 1e3) for k, v in top.items()),
                                      key=lambda kv: -kv[1])[:25])}


def amdahl_bound(dense_ms: dict[str, float], decoder_ratio: float) -> dict[str, float]:
    """The dense step over the step with its decoder forward scaled by ``decoder_ratio``
    (pruned/dense decoder parameters), the rest kept; and the share of the step that shrinks."""
    total = sum(dense_ms[p] for p in PARTS)
    decoder = sum(dense_ms[p] for p in DECODER)
    return {"amdahl_bound": total / (total - decoder * (1 - decoder_ratio)),
            "decoder_share": decoder / total}


def param_ratios(pruned: str | Path) -> dict[str, float] | None:
    """Kept decoder parameters and the whole-model parameter-count bound, from the pruned
    checkpoint's manifest (None for a model without one)."""
    manifest = Path(pruned) / fmt.MANIFEST
    if not manifest.is_file():
        return None
    budget = json.loads(manifest.read_text())["budget"]
    return {"decoder_ratio": budget["prunable_kept"] / budget["prunable_dense"],
            "param_bound": budget["model_dense"] / budget["model_pruned"]}


def profiled(server: ServerConfig, trace_dir: Path) -> ServerConfig:
    """``server`` with vLLM's torch profiler armed (it records between /start_profile and
    /stop_profile only) and the model runner's scopes named."""
    return replace(server, env={**server.env, "VLLM_CUSTOM_SCOPES_FOR_PROFILING": "1"},
                   extra_args=(*server.extra_args, "--profiler-config.profiler=torch",
                               f"--profiler-config.torch_profiler_dir={trace_dir}",
                               "--profiler-config.torch_profiler_with_stack=false"))


def profile_dense(server: ServerConfig, levels: list[int], decoder_ratio: float,
                  run: Callable[[str, int, int], None], say: Callable[[str], None],
                  ) -> dict[str, Any]:
    """Start the dense ``server`` profiled, warm it at the largest level, then profile one run of
    ``max(level, 4)`` requests per level (``run(url, users, requests)`` sends them); per
    level the step's parts and the Amdahl bound."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="grasp-profile-") as tmp:
        traces = Path(tmp)
        with VllmServer(profiled(server, traces), say=say) as live:
            run(live.url, max(levels), max(levels))
            for level in levels:
                before = set(traces.rglob("*"))
                http_request(live.url + "/start_profile", body={}, timeout=600)
                run(live.url, level, max(level, 4))
                http_request(live.url + "/stop_profile", body={}, timeout=600)
                worker = worker_trace(wait_for_traces(traces, before),
                                      f"in the profile at concurrency {level}")
                summary = summarize([worker], level)
                out[str(level)] = {**summary, **amdahl_bound(summary["ms"], decoder_ratio)}
                say(f"  dense decode step at concurrency {level}: {summary['step_ms']:.1f} ms, "
                    f"decoder {100 * out[str(level)]['decoder_share']:.0f}% of it; Amdahl "
                    f"bound x{out[str(level)]['amdahl_bound']:.3f}")
    return out
