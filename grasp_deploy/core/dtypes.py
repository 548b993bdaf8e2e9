"""The one table of dtype names: CLI values, config.json's ``dtype`` field, report labels."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (as config.json and reports write it)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_config(value: object, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype a config's ``dtype``/``torch_dtype`` field names; ``default`` when unknown."""
    if isinstance(value, torch.dtype):
        return value
    return DTYPES.get(str(value), default)
