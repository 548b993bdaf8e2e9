"""Quantized checkpoints, in compressed-tensors' format (vLLM reads it with its own kernels;
transformers reads it and decompresses).

``export --quantize SCHEME`` quantizes every decoder projection (q/k/v, o, gate/up, down) of
the checkpoint it writes; embeddings, norms, biases and the LM head stay in the checkpoint's
dtype. The weights keep their per-layer shapes, so the same plugin serves them.

* ``int8``: compressed-tensors' W8A8 preset. Weights int8, one scale per output channel,
  symmetric, rounded to nearest; activations int8 per token, their scales computed by the
  kernel at run time (dynamic), so export needs no calibration text.
* ``w4a16``: the W4A16 preset. Weights 4-bit integers, symmetric, one scale per group of
  input columns, rounded to nearest or, given calibration text, by GPTQ (``checkpoint.gptq``),
  packed eight to an int32; activations stay 16-bit. The
  group is the largest of 128, 64 and 32 that divides every projection's input width, and
  vLLM's CPU kernel needs every input and output width a multiple of 32 (prune with
  ``--align 32``).

Scales are the library's (``calculate_qparams`` on each channel's or group's range) and so is
the compression (``int-quantized``, ``pack-quantized``); only the choice of scheme, group and
which tensors it covers are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import GraspError

# --quantize name -> compressed-tensors preset scheme, and the format it is written in
SCHEMES = {"int8": "W8A8", "w4a16": "W4A16"}
FORMATS = {"int8": "int-quantized", "w4a16": "pack-quantized"}
GROUPS = (128, 64, 32)  # w4a16: the largest that divides every input width
KERNEL_MULTIPLE = 32  # vLLM's CPU W4A16 kernel: input and output widths
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = ["lm_head"]
# What compressed-tensors stores beside a quantized weight: not parameters of the model.
AUXILIARIES = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
               "input_scale")


@dataclass(frozen=True)
class Quantized:
    tensors: dict[str, torch.Tensor]  # what the safetensors files hold
    config: dict[str, Any]  # config.json's "quantization_config"
    record: dict[str, Any]  # the manifest's "quantization"


def width_multiple(scheme: str | None) -> int:
    """What every FFN width of a plan quantized to ``scheme`` must be a multiple of."""
    return KERNEL_MULTIPLE if scheme == "w4a16" else 1


def check_scheme(name: str) -> str:
    if name not in SCHEMES:
        raise GraspError(f"--quantize {name!r} is not a scheme this version writes; "
                         f"use one of: {', '.join(SCHEMES)}")
    return name


def is_projection(name: str) -> bool:
    """A decoder projection's weight, as transformers names it (``...mlp.down_proj.weight``)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in PROJECTIONS


def group_size(shapes: dict[str, tuple[int, ...]]) -> int:
    """w4a16's group for projections of these (rows, columns) shapes: the largest of ``GROUPS``
    dividing every input width, once every width is one vLLM's CPU kernel takes. Needs only
    the shapes, so a plan's can be checked before any weights load."""
    shapes = {k: v for k, v in shapes.items() if is_projection(k)}
    for key, (rows, cols) in shapes.items():
        if rows % KERNEL_MULTIPLE or cols % KERNEL_MULTIPLE:
            raise GraspError(f"--quantize w4a16: {key} is {rows} x {cols}, and vLLM's 4-bit CPU "
                             f"kernel needs both sizes a multiple of {KERNEL_MULTIPLE}; prune "
                             f"with --align {KERNEL_MULTIPLE} (or use --quantize int8)")
    return next(g for g in GROUPS if all(cols % g == 0 for _, cols in shapes.values()))


def _scheme(name: str, group: int | None) -> Any:
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(SCHEMES[name], targets=["Linear"])
    if group is not None:
        scheme.weights = scheme.weights.model_copy(update={"group_size": group})
    return scheme


def weight_scale(weight: torch.Tensor, args: Any) -> torch.Tensor:
    """One scale per output channel (row), or per group of ``args.group_size`` input columns
    of each row, from its range, as compressed-tensors computes it."""
    from compressed_tensors.quantization.utils import calculate_qparams

    w = weight.float()
    if args.group_size:
        w = w.reshape(w.shape[0], -1, args.group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    if not args.group_size:
        lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    scale, _ = calculate_qparams(lo, hi, args)
    return scale


def weight_args(name: str, group: int | None) -> Any:
    """compressed-tensors' weight arguments of scheme ``name`` (bits, symmetry, group)."""
    return _scheme(check_scheme(name), group).weights


def quantize(tensors: dict[str, torch.Tensor], name: str,
             rounded: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
             calibration: dict[str, Any] | None = None) -> Quantized:
    """The checkpoint's tensors with every projection compressed by scheme ``name``, rounded to
    nearest; a projection in ``rounded`` (weight name -> (weight already on the grid, its
    scales), from ``checkpoint.gptq``) is packed as given. ``calibration`` describes the text
    those were chosen on, for the manifest."""
    rounded = rounded or {}
    import compressed_tensors
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    group = group_size(shapes) if check_scheme(name) == "w4a16" else None
    scheme = _scheme(name, group)
    fmt = CompressionFormat(FORMATS[name])
    compressor = BaseCompressor.get_value_from_registry(fmt.value)
    out: dict[str, torch.Tensor] = {}
    count = 0
    for key, tensor in tensors.items():
        if not is_projection(key):
            out[key] = tensor
            continue
        # The scale as stored (the checkpoint's dtype, as llm-compressor writes it) is the one
        # the integers are rounded with, so that weight x scale is exactly what loaders get.
        if key in rounded:
            tensor, scale = rounded[key]
        else:
            scale = weight_scale(tensor, scheme.weights).to(tensor.dtype)
        packed = compressor.compress({"weight": tensor.float(), "weight_scale": scale.float()},
                                     scheme)
        prefix = key[: -len("weight")]
        out.update({prefix + k: v.contiguous() for k, v in packed.items()})
        out[prefix + "weight_scale"] = scale
        count += 1
    if not count:
        raise GraspError("no decoder projection (q/k/v/o, gate/up/down) among the checkpoint's "
                         "tensors: nothing to quantize")
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt.value,
                                 quantization_status=QuantizationStatus.COMPRESSED,
                                 ignore=IGNORE)
    config = {"quant_method": "compressed-tensors", "version": compressed_tensors.__version__,
              "sparsity_config": {}, "transform_config": {},
              **qconfig.model_dump(exclude={"quant_method"})}
    record = {"scheme": name, "preset": SCHEMES[name], "format": fmt.value, "projections": count,
              "group_size": group,
              "rounding": "gptq" if rounded else "nearest",
              **({"calibration": calibration} if calibration else {}),
              "library": f"compressed-tensors {compressed_tensors.__version__}",
              "weight_bytes": sum(t.numel() * t.element_size() for t in out.values())}
    return Quantized(out, config, record)
