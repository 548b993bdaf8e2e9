"""Which FFN width multiple is fastest per channel kept, on this CPU, with vLLM's own GEMM.

A pruned FFN of width w costs two GEMMs per token batch, gate_up ([M, d] x [d, 2w], vLLM
merges gate and up) and down ([M, w] x [w, d]), with SiLU(gate) x up between them (vLLM's
x86 CPU path runs it in plain torch). For target widths drawn uniformly from
[d/2, 8d/3] (what pruning the default model leaves), each alignment a in 1, 8, ..., 128 rounds
the width down to a multiple of a; the figure of merit is time per channel kept,
t(w_a) / w_a, relative to unaligned widths (a = 1) on the same targets. Timed with vLLM's CPU
linear (oneDNN ``onednn_mm`` with a prepacked weight, as its unquantized layers use) when vLLM
is installed, else ``torch.nn.functional.linear``; bf16 and fp32; M = 1, 8, 32 tokens.

    python -m bench.align --out bench/results/align-cpu        # about a minute on 2 cores
"""

from __future__ import annotations

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


def ffn_time(
    width: int, hidden: int, tokens: int, dtype: torch.dtype, reps: int
) -> tuple[str, float]:
    """Median seconds of gate_up + down for one FFN of ``width`` channels."""
    gen = torch.Generator().manual_seed(width)
    gate_up = torch.randn(2 * width, hidden, generator=gen).to(dtype) * 0.02
    down = torch.randn(hidden, width, generator=gen).to(dtype) * 0.02
    kernel, f_up = linear_for(gate_up)
    _, f_down = linear_for(down)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    def ffn() -> torch.Tensor:
        gu = f_up(x)
        return f_down(torch.nn.functional.silu(gu[:, :width]) * gu[:, width:])

    for _ in range(3):
        ffn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ffn()
        times.append(time.perf_counter() - t0)
    return kernel, statistics.median(times)


def measure(hidden: int, targets: list[int], tokens: int, dtype: torch.dtype, reps: int,
            rounds: int) -> dict:
    """Every width timed in ``rounds`` rounds, alternating the order (ABAB), best round kept."""
    widths = sorted({max(a, t // a * a) for t in targets for a in ALIGNMENTS})
    cache: dict[int, float] = {}
    kernel = ""
    for r in range(rounds):
        for w in (widths if r % 2 == 0 else widths[::-1]):
            kernel, seconds = ffn_time(w, hidden, tokens, dtype, reps)
            cache[w] = min(cache.get(w, seconds), seconds)
    per_channel = {
        a: statistics.mean(cache[max(a, t // a * a)] / max(a, t // a * a) for t in targets)
        for a in ALIGNMENTS
    }
    return {"kernel": kernel, "tokens": tokens, "dtype": str(dtype).removeprefix("torch."),
            "time_per_channel_ns": {a: v * 1e9 for a, v in per_channel.items()},
            "speed_vs_align_1": {a: per_channel[1] / v for a, v in per_channel.items()}}


def report(results: list[dict], meta: dict) -> str:
    lines = ["# FFN width alignment on this CPU: speed per channel kept, relative to align 1",
             "", f"Kernel: {results[0]['kernel']}; hidden {meta['hidden']}; "
             f"{meta['targets']} target widths uniform in [{meta['low']}, {meta['high']}], each "
             "rounded down to the alignment; per width the median of "
             f"{meta['reps']} timings of gate_up, SiLU x up, down, best of {meta['rounds']} "
             "rounds in alternating order. Above 1: faster per channel kept than unaligned.", "",
             "| dtype | tokens (M) | " + " | ".join(f"align {a}" for a in ALIGNMENTS) + " |",
             "|---|---:|" + "---:|" * len(ALIGNMENTS)]
    for r in results:
        cells = " | ".join(f"x{r['speed_vs_align_1'][a]:.3f}" for a in ALIGNMENTS)
        lines.append(f"| {r['dtype']} | {r['tokens']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, "align-cpu")
    parser.add_argument("--hidden", type=int, default=576, help="model width d (default model)")
    parser.add_argument("--low", type=int, default=288)
    parser.add_argument("--high", type=int, default=1536)
    parser.add_argument("--targets", type=int, default=24)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(args.low, args.high + 1, (args.targets,), generator=gen).tolist()
    results = [measure(args.hidden, targets, m, dtype, args.reps, args.rounds)
               for dtype in (torch.bfloat16, torch.float32) for m in args.tokens]
    meta = {"hidden": args.hidden, "low": args.low, "high": args.high, "targets": args.targets,
            "reps": args.reps, "rounds": args.rounds}
    print(harness.write(args.out, "align", {"meta": meta, "results": results},
                        report(results, meta), args.note).read_text())


if __name__ == "__main__":
    main()
