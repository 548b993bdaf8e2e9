"""Which FFN width multiple is fastest per channel kept, on this CPU, with vLLM's own GEMM.

A pruned FFN of width w costs two GEMMs per token batch, gate_up ([M, d] x [d, 2w], vLLM
merges gate and up) and down ([M, w] x [w, d]), with SiLU(gate) x up between them (vLLM's
x86 CPU path runs it in plain torch). For target widths drawn uniformly from
[d/2, 8d/3] (what pruning the default model leaves), each alignment a in 1, 8, ..., 128 rounds
the width down to a multiple of a; the figure of merit is time per channel kept,
t(w_a) / w_a, relative to unaligned widths (a = 1) on the same targets. Timed with vLLM's CPU
linear (oneDNN ``onednn_mm`` with a prepacked weight, as its unquantized layers use) when vLLM
is installed, else ``torch.nn.functional.linear``; bf16 and fp32; M = 1, 8, 32 tokens.

By default one FFN is timed again and again, so its weights sit in the CPU's caches. A served
model reads every layer's weights from memory once per step; ``--stream MB`` times that regime:
each width gets enough copies of its FFN to fill MB megabytes (several times the last-level
cache) and every timing runs through all of them. ``ONEDNN_MAX_CPU_ISA`` (oneDNN's own
variable, e.g. ``AVX2``) caps the instructions oneDNN may use, to stand in for an older CPU.

    python -m bench.align --out bench/results/align-cpu        # about a minute on 2 cores
    python -m bench.align --stream 128 --reps 5 --targets 12 --out bench/results/align-cpu-stream
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from bench import harness

ALIGNMENTS = (1, 8, 16, 32, 64, 128)


def linear_for(weight: torch.Tensor) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(kernel name, x -> x @ weight.T) as vLLM's CPU backend would run it."""
    try:
        from vllm import _custom_ops as ops

        if ops._supports_onednn:
            handler = ops.create_onednn_mm(weight.t(), 32)
            return "vllm onednn_mm", lambda x: ops.onednn_mm(handler, x, None)
    except (ImportError, RuntimeError, AttributeError):
        pass
    return "torch linear", lambda x: torch.nn.functional.linear(x, weight)


def ffn_times(
    width: int, hidden: int, tokens: list[int], dtype: torch.dtype, reps: int, stream_mb: float
) -> tuple[str, dict[int, float]]:
    """Median seconds of gate_up + SiLU x up + down for one FFN of ``width`` channels, per
    token count; with ``stream_mb`` the FFN has copies enough to fill that many MB, and each
    timing runs through all of them (per-FFN time = timing / copies)."""
    gen = torch.Generator().manual_seed(width)
    size = 3 * width * hidden * torch.empty(0, dtype=dtype).element_size()
    copies = max(2, math.ceil(stream_mb * 1e6 / size)) if stream_mb else 1
    kernel, layers = "", []
    for _ in range(copies):
        gate_up = torch.randn(2 * width, hidden, generator=gen).to(dtype) * 0.02
        down = torch.randn(hidden, width, generator=gen).to(dtype) * 0.02
        kernel, f_up = linear_for(gate_up)
        layers.append((f_up, linear_for(down)[1], gate_up, down))  # keep the weights alive

    def run(x: torch.Tensor) -> None:
        for f_up, f_down, _, _ in layers:
            gu = f_up(x)
            f_down(torch.nn.functional.silu(gu[:, :width]) * gu[:, width:])

    seconds = {}
    for m in tokens:
        x = torch.randn(m, hidden, generator=gen).to(dtype)
        for _ in range(1 if stream_mb else 3):
            run(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - t0) / copies)
        seconds[m] = statistics.median(times)
    return kernel, seconds


def measure(hidden: int, targets: list[int], tokens: list[int], dtype: torch.dtype, reps: int,
            rounds: int, stream_mb: float) -> list[dict]:
    """Every width timed in ``rounds`` rounds, alternating the order (ABAB), best round kept;
    one result per token count."""
    widths = sorted({max(a, t // a * a) for t in targets for a in ALIGNMENTS})
    best: dict[tuple[int, int], float] = {}
    kernel = ""
    for r in range(rounds):
        for w in (widths if r % 2 == 0 else widths[::-1]):
            kernel, seconds = ffn_times(w, hidden, tokens, dtype, reps, stream_mb)
            for m, sec in seconds.items():
                best[w, m] = min(best.get((w, m), sec), sec)
    out = []
    for m in tokens:
        per_channel = {a: statistics.mean(best[max(a, t // a * a), m] / max(a, t // a * a)
                                          for t in targets) for a in ALIGNMENTS}
        out.append({"kernel": kernel, "tokens": m, "dtype": str(dtype).removeprefix("torch."),
                    "time_per_channel_ns": {a: v * 1e9 for a, v in per_channel.items()},
                    "speed_vs_align_1": {a: per_channel[1] / v for a, v in per_channel.items()}})
    return out


def report(results: list[dict], meta: dict) -> str:
    lines = ["# FFN width alignment on this CPU: speed per channel kept, relative to align 1",
             "", f"Kernel: {results[0]['kernel']}; hidden {meta['hidden']}; "
             f"{meta['targets']} target widths uniform in [{meta['low']}, {meta['high']}], each "
             "rounded down to the alignment; per width the median of "
             f"{meta['reps']} timings of gate_up, SiLU x up, down, best of {meta['rounds']} "
             "rounds in alternating order. Above 1: faster per channel kept than unaligned.",
             "", _regime(meta), "",
             "| dtype | tokens (M) | " + " | ".join(f"align {a}" for a in ALIGNMENTS) + " |",
             "|---|---:|" + "---:|" * len(ALIGNMENTS)]
    for r in results:
        cells = " | ".join(f"x{r['speed_vs_align_1'][a]:.3f}" for a in ALIGNMENTS)
        lines.append(f"| {r['dtype']} | {r['tokens']} | {cells} |")
    return "\n".join(lines) + "\n"


def _regime(meta: dict) -> str:
    isa = meta.get("onednn_max_cpu_isa") or "not set (all the CPU has)"
    if not meta.get("stream_mb"):
        return ("Regime: one FFN timed repeatedly, its weights in the CPU's caches. "
                f"ONEDNN_MAX_CPU_ISA: {isa}.")
    return (f"Regime: weights streamed from memory as in serving, each width's FFN copied to fill "
            f"{meta['stream_mb']:g} MB and every timing run through all copies. "
            f"ONEDNN_MAX_CPU_ISA: {isa}.")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, "align-cpu")
    parser.add_argument("--hidden", type=int, default=576, help="model width d (default model)")
    parser.add_argument("--low", type=int, default=288)
    parser.add_argument("--high", type=int, default=1536)
    parser.add_argument("--targets", type=int, default=24)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream", type=float, default=0.0, metavar="MB",
                        help="weights streamed from memory: copies of each FFN filling MB "
                             "megabytes (0: one copy, in cache)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float32"])
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(args.low, args.high + 1, (args.targets,), generator=gen).tolist()
    results = [r for name in args.dtypes
               for r in measure(args.hidden, targets, args.tokens, getattr(torch, name),
                                args.reps, args.rounds, args.stream)]
    meta = {"hidden": args.hidden, "low": args.low, "high": args.high, "targets": args.targets,
            "reps": args.reps, "rounds": args.rounds, "stream_mb": args.stream,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    print(harness.write(args.out, "align", {"meta": meta, "results": results},
                        report(results, meta), args.note).read_text())


if __name__ == "__main__":
    main()
