"""Model sources, one loader: a local HF directory, a hub id, a known model (``known``), or a
GGUF file (``gguf``: converted once into the cache).

Loading only: whether a config is one grasp-deploy can prune or serve is decided by the jobs
(``jobs.loading``), which know both the supported families and the checkpoint format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..core.errors import GraspError
from .gguf import ensure_converted, gguf_cache_dir, inspect_gguf
from .known import DEFAULT_MODEL, KNOWN_MODELS, fetch_known, known_model_dir

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as the user wrote it
    kind: Literal["known", "local", "hub", "gguf"]
    location: str  # directory path or hub id (for known and gguf: the converted directory)
    origin: str = ""  # gguf: the file itself

    @property
    def is_cached(self) -> bool:
        converted = self.kind in ("known", "gguf")
        return not converted or (Path(self.location) / "config.json").is_file()


def resolve_source(spec: str | None) -> ModelSource:
    """Decide what ``spec`` names, without network or heavy work; fail on a bad local path."""
    spec = spec or DEFAULT_MODEL
    if spec in KNOWN_MODELS:
        return ModelSource(spec, "known", str(known_model_dir(spec)))
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf") or _starts_like_gguf(path):
        return _gguf_source(spec, path)
    # org/name is a hub id unless a local directory of that name, or its first part, exists.
    looks_like_path = (spec.startswith(("/", ".", "~")) or path.exists() or not _HUB_ID.match(spec)
                       or path.parent.is_dir() and str(path.parent) not in ("", "."))
    if not looks_like_path:
        return ModelSource(spec, "hub", spec)
    if not path.exists():
        raise GraspError(f"no such model directory: {spec} (from {Path.cwd()}); pass an HF model "
                         f"directory, a hub id (they look like org/name), or one of: "
                         f"{', '.join(KNOWN_MODELS)}")
    if not path.is_dir():
        raise GraspError(f"model path {spec} is not a directory; pass the HF model directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise GraspError(f"model directory {spec} is not readable (permission denied)")
    config = path / "config.json"
    if not config.is_file():
        raise GraspError(f"{spec} has no config.json; pass an HF model directory")
    if not os.access(config, os.R_OK):
        raise GraspError(f"{config} is not readable (permission denied)")
    return ModelSource(spec, "local", str(path.resolve()))


def _starts_like_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_source(spec: str, path: Path) -> ModelSource:
    if not path.is_file():
        raise GraspError(f"no such GGUF file: {spec} (from {Path.cwd()}); pass a .gguf file, an "
                         "HF model directory or a known model")
    if not os.access(path, os.R_OK):
        raise GraspError(f"GGUF file {spec} is not readable (permission denied)")
    inspect_gguf(path)  # the header only: a bad file stops here, before any heavy work
    return ModelSource(spec, "gguf", str(gguf_cache_dir(path)), str(path.resolve()))


def ensure_available(source: ModelSource, quiet: bool = False) -> str:
    """Path (or hub id) that ``from_pretrained`` can open; fetches a known model or converts a
    GGUF file once."""
    if source.kind == "known" and not source.is_cached:
        fetch_known(source.spec, quiet=quiet)
    if source.kind == "gguf" and not source.is_cached:
        say = (lambda _msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
        ensure_converted(Path(source.origin), Path(source.location), say)
    return source.location


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    location = ensure_available(source)
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        where = (f"no local directory {source.spec} exists, and as a hub id it could not be "
                 "fetched: " if source.kind == "hub" else "")
        raise GraspError(
            f"cannot read the config of {source.spec}: {where}{_first_line(err)}"
        ) from err
    return config


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ensure_available(source))
    except (OSError, ValueError) as err:
        raise GraspError(f"cannot load the tokenizer of {source.spec}: {_first_line(err)}") from err


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Any:
    """The frozen causal LM in eval mode. Check its config first (``jobs.loading`` does)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = ensure_available(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **_decompressed(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise GraspError(f"cannot load model {source.spec}: {_first_line(err)}; check that its "
                         "weight files are complete") from err
    model.to(device).eval().requires_grad_(False)
    return model


def _decompressed(path: str | Path) -> dict[str, Any]:
    """For a compressed-tensors checkpoint (``export --quantize``): load its weights
    decompressed, so that every job computes with the dequantized weights the file holds."""
    config = Path(path) / "config.json"
    try:
        quant = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    if quant.get("quant_method") != "compressed-tensors":
        return {}
    from transformers import CompressedTensorsConfig

    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter once (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity for a model's weights: names, shapes and 256 strided values per tensor.

    Values are rounded to bfloat16 first so that the same model loaded in float32 or bfloat16
    has the same fingerprint.
    """
    return fingerprint_tensors((name, p.detach()) for name, p in
                               sorted(model.named_parameters(), key=lambda kv: kv[0]))


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """``fingerprint`` over (name, tensor) pairs given in name order (``stream`` reads them
    one at a time)."""
    h = hashlib.sha256()
    for name, p in named:
        flat = p.reshape(-1)
        n, k = flat.numel(), min(256, flat.numel())
        idx = torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)  # exact, in range
        sample = flat[idx.to(flat.device)].to(torch.bfloat16).float().cpu()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
