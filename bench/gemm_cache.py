"""Why a vLLM CPU server's memory climbs in its first minutes of varied load.

vLLM's CPU linear layers (oneDNN ``onednn_mm``) keep, per layer, a cache of 32 GEMM primitives
keyed by the batch's token count M. Under a mixed load M takes many values, so every layer's
cache fills over the first minutes, and the process RSS with it, until each holds 32 and old
ones are evicted. This script builds 120 such handlers in the shapes of the 50% default-model
checkpoint's layers (30 x qkv, o, gate_up, down; bf16) and runs them with M drawn from
``--spread`` values (one pass = every layer once), printing RSS every ``--every`` passes:

    python -m bench.gemm_cache --spread 400 --passes 1000 --out bench/results/gemm-cache
    python -m bench.gemm_cache --spread 6 --passes 1000 --out bench/results/gemm-cache

bench/results/gemm-cache/ has both: with many distinct M the RSS climbs while the caches fill,
then creeps as they churn; with few it is flat from the start.
"""

from __future__ import annotations

import os
import random
import time

import torch

from bench import harness

FEW = (1, 8, 16, 32, 64, 128)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def handlers(hidden: int = 576, ffn: int = 768, layers: int = 30) -> list[tuple[int, object]]:
    from vllm import _custom_ops as ops

    shapes = []  # (in, out) per linear layer
    for i in range(layers):
        q_kv = (6 if i % 2 else 9) * 64  # 1 or 2 KV groups of 3 query heads + K + V
        shapes += [(hidden, q_kv), (6 * 64, hidden), (hidden, 2 * ffn), (ffn, hidden)]
    out = []
    for k, n in shapes:
        weight = (torch.randn(n, k) * 0.02).to(torch.bfloat16)
        out.append((k, ops.create_onednn_mm(weight.t(), 32)))
    return out


def run(spread: int, passes: int, every: int) -> list[tuple[float, int, float]]:
    """(seconds, passes, RSS MiB) while M is drawn from ``spread`` values."""
    from vllm import _custom_ops as ops

    layers = handlers()
    rng = random.Random(0)
    choices = list(FEW) if spread <= len(FEW) else list(range(1, spread + 1))
    samples = [(0.0, 0, rss_mib())]
    t0 = time.perf_counter()
    for it in range(1, passes + 1):
        m = rng.choice(choices[:spread])
        for k, handler in layers:
            ops.onednn_mm(handler, torch.randn(m, k).to(torch.bfloat16), None)
        if it % every == 0:
            samples.append((time.perf_counter() - t0, it, rss_mib()))
            print(
                f"{samples[-1][0]:5.0f} s  {it:5d} passes  RSS {samples[-1][2]:.0f} MiB", flush=True
            )
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, "gemm-cache")
    parser.add_argument("--spread", type=int, default=400, help="distinct token counts M")
    parser.add_argument("--passes", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args(argv)
    samples = run(args.spread, args.passes, args.every)
    rows = [f"| {t:.0f} | {n} | {rss:.0f} |" for t, n, rss in samples]
    body = "\n".join([f"# Process RSS with {args.spread} distinct token counts", "",
                      "| seconds | passes | RSS MiB |", "|---:|---:|---:|", *rows])
    harness.write(args.out, f"spread-{args.spread}", {"spread": args.spread, "samples": samples},
                  body, args.note)


if __name__ == "__main__":
    main()
