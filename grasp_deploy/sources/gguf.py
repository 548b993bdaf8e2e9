"""GGUF files (llama.cpp's format) as a model source.

A ``.gguf`` path given as MODEL is read for its header first (architecture, split, tensor
count): a file that is not a readable GGUF, of an architecture no supported family has, or one
part of a split model is refused with one line before any heavy work. A good file is
dequantized by transformers and converted once into a safetensors directory in the cache,
keyed by the file's sha256, which later runs reuse.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import GraspError
from ..core.fsutil import sha256_file
from .cache import cache_root

# GGUF ``general.architecture`` values of the families that can be pruned (Mistral GGUFs
# are written with the ``llama`` architecture by llama.cpp's converter).
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    tensors: int
    split_count: int  # 0 or 1: a whole model


def inspect_gguf(path: Path) -> GgufInfo:
    """The header of ``path``, or one GraspError saying why it cannot be used."""
    from gguf import GGUFReader

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GraspError(f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a "
                         "llama.cpp .gguf file or an HF model directory")
    try:
        reader = GGUFReader(str(path))
        arch = str(reader.fields["general.architecture"].contents())
        split = reader.fields.get("split.count")
        info = GgufInfo(arch, len(reader.tensors), int(split.contents()) if split else 0)
    except (ValueError, KeyError, IndexError, OSError) as err:  # truncated or malformed
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GraspError(f"{path} is a damaged or truncated GGUF file ({reason}); fetch it "
                         "again") from None
    if info.split_count > 1:
        raise GraspError(f"{path} is one part of a model split into {info.split_count} GGUF "
                         "files; join them first (llama.cpp: llama-gguf-split --merge FIRST "
                         "OUT.gguf) and pass the joined file")
    if info.architecture not in ARCHITECTURES:
        raise GraspError(f"{path} holds a {info.architecture!r} model; supported GGUF "
                         f"architectures: {', '.join(ARCHITECTURES)}")
    return info


def gguf_cache_dir(path: Path) -> Path:
    """Where ``path``'s conversion lives: keyed by the file's sha256, not its name."""
    return cache_root() / "gguf" / sha256_file(path)[:32]


def ensure_converted(path: Path, target: Path, say=print) -> Path:
    """Convert ``path`` into ``target`` unless that was done before; returns ``target``."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=target.parent) as tmp:
        say(f"converting {path.name} to a Hugging Face safetensors directory (once) ...")
        out = Path(tmp) / "hf"
        convert_gguf(path, out)
        (out / "grasp_source.json").write_text(json.dumps(
            {"gguf": str(path), "gguf_sha256": target.name, "size": path.stat().st_size},
            indent=2) + "\n")
        try:
            os.rename(out, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    say(f"cached {path.name} at {target}")
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and save it as an HF safetensors directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The dequantized weights are plain floats; drop the GGUF markers so that it saves.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = out.name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
