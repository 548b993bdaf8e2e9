"""Which vLLM CPU server settings serve fastest on this machine, dense and pruned.

vLLM's CPU worker binds its OpenMP threads itself (``VLLM_CPU_OMP_THREADS_BIND=auto``) and, on
x86, keeps one core per rank for the engine's other processes (``VLLM_CPU_NUM_OF_RESERVED_CPU``):
on a 2-core machine the model computes on one core. Its install guide also recommends
preloading tcmalloc and Intel OpenMP. This script measures the 2 x 2 of those choices, each a
server environment:

- ``vllm``: vLLM's own defaults (the launcher's own CPU settings off, ``GRASP_CPU_TUNING=0``);
- ``preload``: the same with ``LD_PRELOAD`` of tcmalloc (Debian's ``libtcmalloc-minimal4``) and
  Intel OpenMP (``libiomp5.so`` of the ``intel-openmp`` wheel vLLM's CPU build installs);
- ``all-cores``: no reserved core, the worker's threads bound to every CPU;
- ``all-cores+preload``: both.

Two more place the model itself. vLLM runs it in a worker process beside the API server and the
engine-core (scheduler) process; with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and one rank it runs
in the engine-core process (UniProcExecutor), one process fewer to share the cores:

- ``one-process``: ``all-cores+preload`` with the model in the engine-core process, its threads
  left to the OS (vLLM applies its binding only to worker processes);
- ``one-process+bind``: the same with the pinning vLLM gives a worker (``KMP_AFFINITY``...).
- ``one-process+blocktime0``: ``one-process`` with Intel OpenMP's threads asleep as soon as a
  parallel region ends (``KMP_BLOCKTIME=0``; its default spins 200 ms, on cores the API server
  and the scheduler also need).

Each repeat runs every configuration in turn, and each configuration is one A/B of the
product (``loadtest.ab``: dense, then pruned, same flags, closed loop, no profile), so the
configurations alternate as the models do. The table gives output tok/s per model, per
configuration and concurrency, pooled over the repeats, and each against ``--baseline``
(vLLM's defaults unless told).

    python -m bench.cpu_config --pruned runs/smollm2-r50-quick/ckpt --repeats 2 \\
        --out bench/results/cpu-config-smollm2-r50
    python -m bench.cpu_config --pruned runs/smollm2-r50-quick/ckpt --repeats 2 \\
        --baseline all-cores+preload --only one-process \\
        --out bench/results/cpu-config-one-process-smollm2-r50
"""

from __future__ import annotations

from bench import harness
from grasp_deploy.jobs.bench import resolve
from grasp_deploy.loadtest.ab import run_ab
from grasp_deploy.loadtest.config import BenchConfig
from grasp_deploy.server import cpu


def configurations() -> dict[str, dict[str, str]]:
    off = {cpu.SWITCH: "0"}
    preload = {"LD_PRELOAD": cpu.preload() or ""}  # the launcher's rule: both libraries
    tuned = {**off, **cpu.all_cores(), **preload}
    one = {**tuned, cpu.ONE_PROCESS: "0"}
    return {"vllm": off, "preload": {**off, **preload}, "all-cores": {**off, **cpu.all_cores()},
            "all-cores+preload": tuned, "one-process": one,
            "one-process+bind": {**one, **omp_binding(tuned["VLLM_CPU_OMP_THREADS_BIND"])},
            "one-process+blocktime0": {**one, "KMP_BLOCKTIME": "0"}}


def omp_binding(cpus: str) -> dict[str, str]:
    """What vLLM's multiprocess executor sets for its worker with Intel OpenMP (one thread per
    CPU of ``cpus``, "0,1", pinned; threads sleep 5 ms after a parallel region), for a model run
    in the engine-core process, where vLLM sets none of it."""
    return {"OMP_NUM_THREADS": str(len(cpus.split(","))),
            "KMP_AFFINITY": f"granularity=fine,explicit,proclist=[{cpus}]",
            "KMP_BLOCKTIME": "5", "KMP_TPAUSE": "0"}


def pooled(runs: list[dict], label: str, level: str) -> float:
    """Output tok/s over the repeats: total tokens over total busy time."""
    rows = [r["levels"][level][label] for r in runs if level in r["levels"]]
    return (sum(r["total_output_tokens"] for r in rows) / sum(r["duration"] for r in rows)
            if rows else float("nan"))


def markdown(res: dict) -> str:
    levels, names = res["levels"], list(res["configurations"])
    lines = ["# vLLM CPU server settings: dense and pruned", "",
             f"Pruned `{res['pruned']}` vs dense `{res['dense']}`; vLLM compiled, dtype auto, "
             f"KV memory {res['kv_cache_gb']} GiB; closed loop, {res['requests']} requests per "
             f"level, input {res['input_len']} / output {res['output_len']} tokens; "
             f"{res['repeats']} repeat(s), every configuration in turn in each.", "",
             "Configurations (server environment):", ""]
    lines += [f"- `{n}`: " + (", ".join(f"`{k}={v}`" for k, v in env.items()) or "(none)")
              for n, env in res["configurations"].items()]
    lines += ["", "| configuration | " + " | ".join(
        f"dense c={c} | pruned c={c} | pruned/dense c={c}" for c in levels) + " |",
        "|---|" + "---:|---:|---:|" * len(levels)]
    for n in names:
        cells = []
        for c in levels:
            d, p = res["tok_s"][n]["dense"][c], res["tok_s"][n]["pruned"][c]
            vd, vp = (res["tok_s"][res["baseline"]][who][c] for who in ("dense", "pruned"))
            cells += [f"{d:.1f} (x{d / vd:.2f})", f"{p:.1f} (x{p / vp:.2f})", f"{p / d:.3f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Output tok/s pooled over the repeats; (xN) against `{res['baseline']}` for the "
              "same model and level.", ""]
    lines += ["Per-repeat output tok/s (dense; pruned), to judge the noise:", ""]
    lines += [f"- `{n}` c={c}: {text}" for n, by_level in res["spread"].items()
              for c, text in by_level.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--concurrency", default="8,32")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=48)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated configuration names")
    ap.add_argument("--baseline", default="vllm", choices=list(configurations()),
                    help="the configuration the others are measured against (always run)")
    args = ap.parse_args(argv)
    configs = configurations()
    if args.only:
        configs = {n: configs[n] for n in [args.baseline, *args.only.split(",")] if n in configs}
    levels = [int(x) for x in args.concurrency.split(",")]
    runs: dict[str, list[dict]] = {n: [] for n in configs}
    for rep in range(args.repeats):
        for name, env in configs.items():
            print(f"== repeat {rep + 1}/{args.repeats}: {name}", flush=True)
            out = args.out / "runs" / f"{name}-{rep + 1}"
            cfg = resolve(BenchConfig(pruned=args.pruned, dense=args.dense, out=out,
                                      concurrency=tuple(levels), requests=args.requests,
                                      input_len=args.input_len, output_len=args.output_len,
                                      kv_cache_gb=args.kv_cache_gb, max_model_len=2048,
                                      server_env=env, profile=False, seed=rep))
            runs[name].append(run_ab(cfg))
    keys = [str(c) for c in levels]
    res = {"pruned": args.pruned, "dense": args.dense, "levels": keys, "configurations": configs,
           "baseline": args.baseline,
           "requests": args.requests, "input_len": args.input_len,
           "output_len": args.output_len, "kv_cache_gb": args.kv_cache_gb,
           "repeats": args.repeats,
           "tok_s": {n: {who: {c: pooled(runs[n], who, c) for c in keys}
                         for who in ("dense", "pruned")} for n in configs},
           "spread": {n: {c: "; ".join(
               f"{r['levels'][c]['dense']['output_throughput']:.1f}, "
               f"{r['levels'][c]['pruned']['output_throughput']:.1f}" for r in runs[n])
               for c in keys} for n in configs}}
    for bulky in [*args.out.glob("runs/*/requests.jsonl"), *args.out.glob("runs/*/*.png"),
                  *args.out.glob("runs/*/prompts*.json"), *args.out.glob("runs/*/warmup.jsonl")]:
        bulky.unlink()  # each run keeps its results.json/.md/.csv and server logs
    print(harness.write(args.out, "cpu_config", res, markdown(res), args.note).read_text())


if __name__ == "__main__":
    main()
