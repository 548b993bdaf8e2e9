"""Prefill against decode, dense against pruned, through the served models: which phase of a
request does pruning speed up at a given concurrency?

For each model, servers start in turn (dense, pruned, dense, pruned: ABAB over ``--repeats``)
through the launcher in the configuration a user runs (compiled, dtype auto, the launcher's
CPU settings, plus any ``--server-arg``). On each, after a warm-up, batches of ``--concurrency``
requests sent at once and answered without streaming (no SSE client work in the timing):

- prefill: prompts of ``--prompt-len`` random token ids, one token out;
- decode: prompts of 16 tokens, ``--decode-len`` tokens out (ignore_eos), so the decode steps
  at a full batch are nearly all of the time.

Each batch's wall time is one sample; the figure per model is the median over every sample of
every start, and the per-start medians are kept to show how much starts differ.

    python -m bench.phase_split --pruned runs/smollm2-r50-quick/ckpt --concurrency 8 \\
        --out bench/results/phase-split-smollm2-r50-c8
"""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import harness
from grasp_deploy.server.launcher import ServerConfig, VllmServer
from grasp_deploy.server.net import free_port, http_request
from grasp_deploy.sources.models import ensure_available, resolve_source

DECODE_PROMPT = 16


def batch(url: str, name: str, prompt_len: int, out: int, n: int, rng: random.Random) -> float:
    """Seconds for ``n`` concurrent non-streamed completions of random prompts."""
    prompts = [[rng.randrange(100, 30000) for _ in range(prompt_len)] for _ in range(n)]

    def one(ids: list[int]) -> None:
        http_request(url + "/v1/completions", timeout=600,
                     body={"model": name, "prompt": ids, "max_tokens": out, "ignore_eos": True,
                           "temperature": 0.0})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, prompts))
    return time.perf_counter() - t0


def one_start(label: str, model: str, args, log: Path, rng: random.Random) -> dict[str, list]:
    cfg = ServerConfig(model=model, served_name=label, port=free_port(), kv_cache_gb=1.0,
                       max_model_len=2048, log_file=log, extra_args=tuple(args.server_arg))
    phases = {"prefill": (args.prompt_len, 1), "decode": (DECODE_PROMPT, args.decode_len)}
    out: dict[str, list] = {p: [] for p in phases}
    with VllmServer(cfg, say=print) as server:
        for _ in range(2):
            batch(server.url, label, args.prompt_len, 4, args.concurrency, rng)
        for _ in range(args.samples):
            for phase, (plen, n_out) in phases.items():
                out[phase].append(batch(server.url, label, plen, n_out, args.concurrency, rng))
    return out


def main() -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=171)
    ap.add_argument("--decode-len", type=int, default=65)
    ap.add_argument("--samples", type=int, default=6, help="batches per phase per start")
    ap.add_argument("--repeats", type=int, default=2, help="server starts per model (ABAB)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="a vLLM argument passed through, e.g. --server-arg=--enforce-eager")
    args = ap.parse_args()
    models = {"dense": ensure_available(resolve_source(args.dense)), "pruned": args.pruned}
    rng = random.Random(0)
    starts: dict[str, list[dict]] = {label: [] for label in models}
    for rep in range(args.repeats):
        for label, model in models.items():
            got = one_start(label, model, args, args.out / "logs" / f"{label}-{rep}.log", rng)
            starts[label].append(got)
            print(label, rep, {p: f"{statistics.median(v) * 1e3:.1f} ms" for p, v in got.items()})
    rows = {}
    for phase in ("prefill", "decode"):
        med = {label: statistics.median([t for s in runs for t in s[phase]])
               for label, runs in starts.items()}
        rows[phase] = {**{f"{label}_ms": 1e3 * m for label, m in med.items()},
                       "speedup": med["dense"] / med["pruned"],
                       "per_start_ms": {label: [1e3 * statistics.median(s[phase]) for s in runs]
                                        for label, runs in starts.items()}}
    md = ["# Prefill and decode, dense vs pruned, served", "",
          f"Pruned `{args.pruned}` vs dense `{args.dense}`; {args.concurrency} requests at once,"
          f" not streamed; prefill = {args.prompt_len}-token prompts, 1 token out; decode = "
          f"{DECODE_PROMPT}-token prompts, {args.decode_len} tokens out. vLLM compiled, dtype "
          f"auto, 1 GiB KV, the launcher's CPU settings"
          + (f", extra vLLM arguments `{' '.join(args.server_arg)}`" if args.server_arg else "")
          + f"; {args.repeats} server start(s) per model, ABAB, {args.samples} batches per phase "
          "each.", "",
          "| phase | dense ms | pruned ms | dense / pruned | per start: dense | pruned |",
          "|---|---:|---:|---:|---|---|"]
    for phase, r in rows.items():
        per = r["per_start_ms"]
        md.append(f"| {phase} | {r['dense_ms']:.1f} | {r['pruned_ms']:.1f} | x{r['speedup']:.3f}"
                  f" | {', '.join(f'{v:.0f}' for v in per['dense'])} | "
                  f"{', '.join(f'{v:.0f}' for v in per['pruned'])} |")
    print(harness.write(args.out, "phase_split", {"settings": {k: str(v) for k, v in
                                                                vars(args).items()},
                                                   "rows": rows}, "\n".join(md), args.note)
          .read_text())


if __name__ == "__main__":
    main()
