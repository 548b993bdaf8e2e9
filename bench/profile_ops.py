"""What a decode step's forward spends per call: the compiled graph's ops, dense vs pruned.

``bench.profile_step`` splits a step into parts; this opens the same traces (its ``--out``)
and splits the model's forward, the one call of the compiled graph, into what ran inside it:

- ``GEMM``: vLLM's oneDNN linear op (``_C::onednn_mm``), one per projection and layer;
- ``attention``: vLLM's attention op (``unified_attention_with_output``), one per layer;
- ``KV-cache write``: vLLM's op that writes each layer's new keys and values
  (``unified_kv_cache_update``), one per layer;
- ``fused kernels``: the kernels Inductor generated (norms, RoPE, SiLU*mul, residual adds);
  timed only when the servers ran with ``TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1``, else
  they fall in the next row;
- ``graph, no op``: time inside the graph call with no op running, which is the Python
  wrapper that calls the ops one by one;
- ``before the graph``: the guard and bytecode that run before it.

Medians over the decode steps that ran the full batch, milliseconds per step, with the calls per
step and microseconds per call. A width-pruned model runs the same layers and the same number of
calls as the dense one, so a call's fixed cost stays while the work per call halves; the GEMM
row's fixed cost per call follows from the two models' GEMM times and weight counts (two
equations: time = calls x fixed + weights x time per weight).

    TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1 VLLM_DISABLE_COMPILE_CACHE=1 \\
        python -m bench.profile_step --pruned CKPT --concurrency 8 --input-len 48 \\
        --repeats 1 --out DIR
    python -m bench.profile_ops --traces DIR --pruned CKPT --out bench/results/NAME
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

from bench import harness
from grasp_deploy.checkpoint.read import expected_shapes
from grasp_deploy.jobs import loading
from grasp_deploy.loadtest.step_profile import inside, load_trace, outermost, param_ratios
from grasp_deploy.sources import models

GRAPH = "## Call CompiledFxGraph"
# row -> what its op names contain; the first match wins (Inductor names a fused kernel after
# the ops it follows, "cpp_fused_..._onednn_mm_...", so it is checked first)
ROWS = {"fused kernels": "cpp_fused_", "GEMM": "onednn_mm",
        "attention": "unified_attention_with_output",
        "KV-cache write": "unified_kv_cache_update", "before the graph": "Pregraph bytecode"}
ORDER = ("GEMM", "attention", "KV-cache write", "fused kernels", "other ops", "graph, no op",
         "before the graph")


def row_of(name: str) -> str:
    return next((row for row, key in ROWS.items() if key in name), "other ops")


def step_rows(events: list[dict], level: int) -> list[dict[str, tuple[float, int]]]:
    """Per full-batch decode step: row -> (microseconds, calls) inside the model's forward."""
    events = sorted((e for e in events if e.get("tid") is not None), key=lambda e: e["ts"])
    name = f"execute_context_0(0)_generation_{level}({level})"
    starts = [e for e in events if e["name"] == name]
    forwards = [e for e in events if e["name"] == "gpu_model_runner: forward"]
    out = []
    for start in starts:
        fwd = next((f for f in forwards if f["ts"] >= start["ts"]), None)
        if fwd is None:
            continue
        ops = [e for e in inside(events, fwd) if e["tid"] == fwd["tid"]]
        graph = next((e for e in ops if e["name"].startswith(GRAPH)), None)
        if graph is None:
            continue
        time, calls = Counter(), Counter()
        for e in outermost([e for e in ops if e is not graph], lambda n: True):
            if e["name"].startswith(("AOTDispatcher", GRAPH)):
                continue
            row = row_of(e["name"])
            time[row] += e["dur"]
            calls[row] += 1
        in_graph = outermost(inside(ops, graph), lambda n: True)
        time["graph, no op"] = graph["dur"] - sum(e["dur"] for e in in_graph)
        out.append({row: (time[row], calls[row]) for row in ORDER})
    return out


def medians(traces: Path, label: str, level: int) -> dict[str, dict[str, float]]:
    """Per row: median ms per step, calls per step, and the steps pooled over every server
    start of ``label`` (``bench.profile_step`` writes ``traces/LABEL-cLEVEL-rN``)."""
    steps = [s for d in sorted(traces.glob(f"{label}-c{level}-r*"))
             for s in step_rows(load_trace(d), level)]
    if not steps:
        raise SystemExit(f"no full-batch decode step of {label} at concurrency {level} "
                         f"under {traces}")
    return {row: {"ms": statistics.median(s[row][0] for s in steps) / 1e3,
                  "calls": statistics.median(s[row][1] for s in steps), "steps": len(steps)}
            for row in ORDER}


def gemm_fixed_cost(dense: dict, pruned: dict, weights: tuple[int, int]) -> dict[str, float]:
    """Per-call fixed cost (us) and time per million weights (us) of the GEMM op, from both
    models' GEMM time per step with the same number of calls."""
    t_dense, t_pruned = dense["GEMM"]["ms"] * 1e3, pruned["GEMM"]["ms"] * 1e3
    w_dense, w_pruned = weights[0] / 1e6, weights[1] / 1e6
    per_weight = (t_dense - t_pruned) / (w_dense - w_pruned)
    fixed = t_dense - per_weight * w_dense  # us per step, the same in both models
    return {"fixed_us_per_call": fixed / dense["GEMM"]["calls"],
            "us_per_million_weights": per_weight, "fixed_ms_per_step": fixed / 1e3}


def linear_weights(model: str) -> int:
    """The decoder projections' weights: what one decode step's GEMMs read."""
    shape = loading.model_shape(loading.load_config(models.resolve_source(model)))
    return sum(math.prod(s) for s in expected_shapes(shape).values())


def markdown(res: dict) -> str:
    d, p, level = res["dense"], res["pruned"], res["level"]
    lines = [f"# The forward's calls at concurrency {level}: dense vs pruned", "",
             f"Pruned `{res['pruned_model']}` vs dense `{res['dense_model']}`; medians over "
             f"{d['GEMM']['steps']} and {p['GEMM']['steps']} full-batch decode steps "
             f"(traces: `{res['traces']}`).", "",
             "| inside the forward | dense ms | calls | us/call | pruned ms | calls | us/call "
             "| pruned / dense |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ORDER:
        a, b = d[row], p[row]
        per = [f"{1e3 * x['ms'] / x['calls']:.1f}" if x["calls"] else "" for x in (a, b)]
        ratio = f"{b['ms'] / a['ms']:.3f}" if a["ms"] else ""
        lines.append(f"| {row} | {a['ms']:.3f} | {a['calls']:.0f} | {per[0]} | {b['ms']:.3f} "
                     f"| {b['calls']:.0f} | {per[1]} | {ratio} |")
    g = res["gemm"]
    lines += ["", f"GEMM weights per step: dense {res['weights'][0] / 1e6:.1f} M, pruned "
              f"{res['weights'][1] / 1e6:.1f} M. Solved from both: a fixed "
              f"{g['fixed_us_per_call']:.1f} us per call ({g['fixed_ms_per_step']:.2f} ms per "
              f"step over {d['GEMM']['calls']:.0f} calls, the same in both models) and "
              f"{g['us_per_million_weights']:.1f} us per million weights.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--traces", type=Path, required=True, help="bench.profile_step's --out")
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    level, traces = args.concurrency, args.traces / "traces"
    res = {"level": level, "traces": str(args.traces), "pruned_model": args.pruned,
           "dense_model": args.dense,
           "dense": medians(traces, "dense", level),
           "pruned": medians(traces, "pruned", level),
           "weights": (linear_weights(args.dense), linear_weights(args.pruned)),
           "ratios": param_ratios(args.pruned)}
    res["gemm"] = gemm_fixed_cost(res["dense"], res["pruned"], res["weights"])
    harness.write(args.out, "ops", {**res, **harness.stamp(argv)}, markdown(res), args.note)


if __name__ == "__main__":
    main()
