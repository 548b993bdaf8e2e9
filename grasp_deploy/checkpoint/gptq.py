"""GPTQ rounding for ``export --quantize w4a16 --calib``: each weight column rounded in turn,
and its rounding error spread over the columns not yet rounded, weighted by the inverse of the
layer's input Gram matrix (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1, with its lazy block updates).

Round-to-nearest minimises each weight's own error; GPTQ minimises the error of the layer's
output on the calibration inputs, ``||X W^T - X Q^T||``, which is what the model feels. Groups
are the w4a16 scheme's (one scale per ``group`` input columns of each row); a group's scale is
taken from its columns as they stand when the sweep reaches it (after the error of earlier
groups has been spread onto them), with compressed-tensors' own scale rule, so that the integers
the library later packs are exactly the ones chosen here.
"""

from __future__ import annotations

from typing import Any

import torch

from .quant import weight_scale

DAMP = 0.01  # added to the Gram matrix's diagonal, as a fraction of its mean: keeps it invertible


def prepare(gram: torch.Tensor, damp: float = DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """What GPTQ needs of a Gram matrix X^T X (cols, cols), computed once for every projection
    that reads the same inputs: the upper Cholesky factor of (G + damp * mean(diag G) * I)^-1
    (float32; inverted in float64) and the mask of inputs that never fire."""
    g = gram.double().clone()
    dead = g.diagonal() == 0  # inputs that never fire: their weights do not matter
    g[dead, dead] = 1.0
    g += torch.eye(g.shape[0], dtype=g.dtype) * damp * float(g.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(g))
    return torch.linalg.cholesky(inverse, upper=True).float(), dead


def _round(w: torch.Tensor, scale: torch.Tensor, args: Any) -> torch.Tensor:
    """``w`` (rows, k) quantized and dequantized with one scale per row."""
    lo, hi = -(2 ** (args.num_bits - 1)), 2 ** (args.num_bits - 1) - 1
    return torch.clamp(torch.round(w / scale), lo, hi) * scale


def gptq(weight: torch.Tensor, hessian: tuple[torch.Tensor, torch.Tensor], args: Any,
         scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (rows, cols) rounded to ``args`` (compressed-tensors' weight arguments: bits,
    symmetric, group size) against inputs whose Gram matrix gave ``hessian`` (``prepare``).
    Returns the dequantized weight (float32; every entry an integer times its group's scale) and
    the scales (rows, cols / group), as stored in ``scale_dtype``."""
    factor, dead = hessian
    group = args.group_size
    rows, cols = weight.shape
    if factor.shape != (cols, cols) or cols % group:
        raise ValueError(f"GPTQ: weight {tuple(weight.shape)}, Gram {tuple(factor.shape)}, "
                         f"group {group} do not fit together")
    w = weight.float().clone()
    w[:, dead] = 0.0
    quantized = torch.zeros_like(w)
    scales = []
    for start in range(0, cols, group):  # one lazy block per group
        end = start + group
        block = w[:, start:end].clone()
        # (rows, 1), rounded to the dtype it is stored in before any weight is rounded with it
        scale = weight_scale(block, args).to(scale_dtype).float()
        scales.append(scale)
        errors = torch.zeros_like(block)
        f = factor[start:end, start:end]
        for i in range(group):
            column = block[:, i]
            q = _round(column.unsqueeze(1), scale, args).squeeze(1)
            quantized[:, start + i] = q
            err = (column - q) / f[i, i]
            block[:, i:] -= err.unsqueeze(1) * f[i, i:].unsqueeze(0)
            errors[:, i] = err
        w[:, end:] -= errors @ factor[start:end, end:]
    return quantized, torch.cat(scales, dim=1).to(scale_dtype)
