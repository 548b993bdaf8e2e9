"""The same prune and export commands, with the same seed, write the same plan and the same
checkpoint weights as the code did when the digests in ``same_output.json`` were recorded.

A refactor must leave every digest as it is. A change that is meant to alter a plan updates
the file on purpose: ``GRASP_UPDATE_DIGESTS=1 pytest tests/jobs/test_same_output.py`` rewrites
it, and the diff shows which commands it touched.

What is digested: plan.json without what varies by machine or place (package versions, the
model's and the calibration file's paths), the units every layer keeps, every tensor of the
plan's reconstruction file, the GISP trajectory, and every weight tensor of the exported
checkpoint (its code and config files are the format's business, pinned elsewhere). Kept
units and every other field must be equal; floating-point values are equal bytes, or on
another kind of CPU (whose kernels round differently) equal to 1e-4.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from grasp_deploy.cli import main

from conftest import save_tiny_portable

DIGESTS = Path(__file__).with_name("same_output.json")
QUICK = ["-n", "6", "-l", "32", "--seed", "1", "--dtype", "float32", "-q"]
GRASP = ["-e", "1", "--scale-samples", "3"]

# name -> prune arguments after MODEL (calibration, size and --out are added)
COMMANDS = {
    "grasp": ["-r", "0.3", *GRASP],
    "grasp-paper": ["-r", "0.3", "--recipe", "paper", "-e", "1", "--scale-epochs", "0", "--lr",
                    "0.05"],
    "grasp-reconstruct": ["-r", "0.3", *GRASP, "--reconstruct"],
    "grasp-reselect-kv": ["-r", "0.4", *GRASP, "--reselect", "--kv-ratio", "0.7"],
    "structprune": ["-r", "0.4", "--method", "structprune", "--sink-skip", "0"],
    "gisp": ["-r", "0.2", "--method", "gisp", "--gisp-step", "0.1", "--gisp-blocks", "2"],
    "magnitude": ["-r", "0.3", "--method", "magnitude", "--align", "8"],
    "wanda-sp": ["-r", "0.3", "--method", "wanda-sp"],
    "flap": ["-r", "0.3", "--method", "flap"],
    "taylor-reconstruct": ["-r", "0.3", "--method", "taylor", "--reconstruct",
                           "--reconstruct-ridge", "0.01"],
}
# from an earlier command's plan directory: name -> (earlier command, arguments)
FOLLOW_UPS = {"gisp-from-trajectory": ("gisp", ["-r", "0.1", "--method", "gisp",
                                                "--gisp-step", "0.1", "--from-trajectory"])}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def _stats(values: torch.Tensor) -> list[float]:
    """Sum, sum of squares and an index-weighted sum: equal up to rounding when only the
    order of floating-point operations differs (another CPU's kernels), apart otherwise."""
    x = values.double().flatten()
    weight = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
    return [float(x.sum()), float((x * x).sum()), float((x * weight).sum())]


def _tensor(t: torch.Tensor) -> dict[str, object]:
    raw = (
        t.contiguous().view(torch.uint8).numpy().tobytes() + str((t.dtype, tuple(t.shape))).encode()
    )
    return {"sha": _sha(raw), "stats": _stats(t)}


def _tensors(path: Path) -> dict[str, object]:
    return {name: _tensor(t) for name, t in sorted(load_file(path).items())}


def _plan_digest(plan_dir: Path, roots: tuple[Path, ...]) -> dict[str, object]:
    plan = json.loads((plan_dir / "plan.json").read_text())
    plan.pop("versions", None)
    plan["source"].pop("name", None)
    plan.get("reconstruction", {}).pop("sha256", None)  # its tensors are compared below
    layers = plan.pop("layers")
    text = json.dumps(plan, sort_keys=True)
    for root in roots:
        text = text.replace(str(root), "<root>")
    kept = json.dumps([[lp["ffn_keep"], lp["kv_keep"]] for lp in layers])
    values = {f"{i}.{key}": _stats(torch.tensor(v)) for i, lp in enumerate(layers)
              for key, v in sorted(lp.items()) if key not in ("ffn_keep", "kv_keep") and v}
    out: dict[str, object] = {"plan.json": _sha(text.encode()), "kept": _sha(kept.encode()),
                              "values": values}
    if (plan_dir / "reconstruction.safetensors").is_file():
        out["reconstruction"] = _tensors(plan_dir / "reconstruction.safetensors")
    if (plan_dir / "trajectory.json").is_file():
        traj = json.loads((plan_dir / "trajectory.json").read_text())
        out["trajectory.json"] = _sha(json.dumps(traj, sort_keys=True).encode())
    return out


def _checkpoint_digest(ckpt: Path) -> dict[str, object]:
    tensors: dict[str, object] = {}
    for path in sorted(ckpt.glob("*.safetensors")):
        tensors.update(_tensors(path))
    return tensors


def _close(a: list[float], b: list[float]) -> bool:
    scale = max(1e-6, *(abs(x) for x in a))
    return all(abs(x - y) <= 1e-4 * scale for x, y in zip(a, b, strict=True))


def _same(now: object, recorded: object) -> bool:
    """Exact, except tensors and float values: same bytes, or the same statistics up to
    rounding (kernels of another CPU kind sum in another order)."""
    if isinstance(recorded, dict) and "sha" in recorded:
        return now["sha"] == recorded["sha"] or _close(now["stats"], recorded["stats"])
    if isinstance(recorded, dict):
        return set(now) == set(recorded) and all(_same(now[k], recorded[k]) for k in recorded)
    if isinstance(recorded, list):
        return _close(now, recorded)
    return now == recorded


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, text_file) -> dict[str, dict[str, object]]:
    root = tmp_path_factory.mktemp("same")
    model = save_tiny_portable(root / "model", seed=5)
    calib = ["--calib", f"file:{text_file}"]
    runs = {name: (args, None) for name, args in COMMANDS.items()}
    runs.update({name: (args, earlier) for name, (earlier, args) in FOLLOW_UPS.items()})
    digests = {}
    for name, (args, earlier) in runs.items():
        plan, ckpt = root / f"{name}.plan", root / f"{name}.ckpt"
        extra = [root / f"{earlier}.plan"] if earlier else []
        _run(["prune", model, *args, *extra, *calib, *QUICK, "--out", plan])
        _run(["export", model, plan, "--out", ckpt])
        digests[name] = {**_plan_digest(plan, (root, text_file.parent)),
                         "weights": _checkpoint_digest(ckpt)}
    if os.environ.get("GRASP_UPDATE_DIGESTS") == "1":
        DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return digests


@pytest.mark.parametrize("name", [*COMMANDS, *FOLLOW_UPS])
def test_same_command_writes_the_same_plan_and_weights(outputs, name):
    recorded = json.loads(DIGESTS.read_text())[name]
    now = outputs[name]
    assert set(now) == set(recorded)
    for part in recorded:
        assert _same(now[part], recorded[part]), f"{name}: {part} differs from the recorded one"
