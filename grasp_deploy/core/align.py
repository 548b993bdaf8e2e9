"""The FFN width multiple that ``--align auto`` (the default) gives every layer.

A pruned model is served where it was pruned, as a rule, so ``auto`` follows the device that
``prune`` runs on (``--align N`` says otherwise):

* CPU: 1. Measured with vLLM's own CPU GEMM (oneDNN, prepacked weights) on the FFN chain
  gate_up, SiLU x up, down, bf16 and fp32, 1 to 32 tokens: no multiple of 8 to 128 is faster
  per channel kept than unaligned widths by more than a few percent, and some are slower
  (``python -m bench.align``; ``bench/results/align-cpu/align.md``). With the weights streamed
  from memory as in serving (``--stream``), and with oneDNN capped at AVX2 for CPUs without
  native bf16, the best multiple gains under 6% (``bench/results/align-cpu-stream*/``).
  Alignment would cost quality for little there. CPUs with AMX are unmeasured here.
* CUDA: 64. 16-bit Tensor Core GEMMs are most efficient when the dimensions are multiples of
  128 bytes, 64 bf16/fp16 elements, on A100 and later; 8 is the minimum (NVIDIA, "Matrix
  Multiplication Background User's Guide", section "Tensor Core Requirements").

A model too narrow for the multiple (fewer than ``MIN_BLOCKS`` blocks in its narrowest FFN, as
in tiny test models) gets the largest power of two that leaves that many, down to 1.

A plan meant for a kernel with its own width rule (vLLM's 4-bit CPU kernel: multiples of 32)
gets the least common multiple of the two: ``multiple``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import GraspError

AUTO = "auto"
# device type -> multiple; others (mps, ...) are unmeasured and get 1
BY_DEVICE = {"cpu": 1,  # bench/results/align-cpu
             "cuda": 64}  # NVIDIA's Tensor Core guidance for 16-bit GEMMs (A100 and later)
MIN_BLOCKS = 16


def auto_align(shape: Any, device_type: str) -> int:
    """The multiple ``--align auto`` picks for a model of this shape pruned on this device."""
    narrowest = min(layer.intermediate_size for layer in shape.layers)
    align = BY_DEVICE.get(device_type, 1)
    while align > 1 and narrowest < MIN_BLOCKS * align:
        align //= 2
    return align


def _not_an_align(value: Any) -> GraspError:
    return GraspError(f"--align {value!r} is not 'auto' or a positive integer; "
                      "e.g. --align auto, --align 64 or --align 1")


def parse_align(value: Any) -> int | str:
    """``auto`` or a positive integer, as given on the command line or in a config."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = int(value)
        except ValueError:
            raise _not_an_align(value) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _not_an_align(value)
    return value


def resolve_align(value: Any, shape: Any, device_type: str, multiple: int = 1) -> int:
    """The FFN multiple to prune with: ``auto`` resolved for ``shape`` and the device (and a
    multiple of ``multiple``), an integer as given (its caller checks it against ``multiple``)."""
    value = parse_align(value)
    return math.lcm(auto_align(shape, device_type), multiple) if value == AUTO else value
