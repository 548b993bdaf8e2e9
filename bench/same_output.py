"""Do two versions of the code write the same plans and checkpoints? Every method (and the
post-steps) on the default model at a quick size, run by each version, then compared.

    git worktree add /tmp/before <commit>
    python -m bench.same_output --run /tmp/before --runs /tmp/same/before
    python -m bench.same_output --run . --runs /tmp/same/after
    python -m bench.same_output --compare /tmp/same/before /tmp/same/after \
        --out bench/results/same-output-NAME

``--run CODE`` uses the package in the checkout CODE (first on PYTHONPATH) with this
environment's Python. A command that a version spells differently (a renamed or new flag) is
given per version with ``--spelling NAME=ARGS``. Plans are compared without their package
versions and the paths they record; every weight tensor must be equal, and the report says
whether the weight files are byte-identical too.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bench import harness
from bench.harness import WIKI, run

QUICK = ["-n", "8", "-l", "128", "--seed", "3", "-q"]
GRASP = ["-e", "1", "--scale-samples", "4"]
COMMANDS = {  # name -> prune arguments after MODEL (calibration, size and --out are added)
    "grasp": ["-r", "0.3", *GRASP],
    "grasp-rec": ["-r", "0.3", *GRASP, "--reconstruct"],
    "grasp-resel": ["-r", "0.5", *GRASP, "--reselect", "--kv-ratio", "0.6"],
    "grasp-paper": ["-r", "0.3", "--recipe", "paper", "-e", "1", "--scale-epochs", "0"],
    "structprune": ["-r", "0.4", "--method", "structprune"],
    "structprune-ridge": ["-r", "0.4", "--method", "structprune", "--reconstruct",
                          "--reconstruct-ridge", "0.01"],
    "gisp": ["-r", "0.1", "--method", "gisp", "--gisp-step", "0.05", "--gisp-blocks", "4"],
    "gisp-traj": ["-r", "0.05", "--method", "gisp", "--gisp-step", "0.05", "--from-trajectory",
                  "{runs}/gisp.plan"],
    "magnitude": ["-r", "0.3", "--method", "magnitude", "--align", "8"],
    "wanda": ["-r", "0.3", "--method", "wanda-sp", "--tp", "3"],
    "flap": ["-r", "0.3", "--method", "flap"],
    "taylor-rec": ["-r", "0.3", "--method", "taylor", "--reconstruct"],
}


def make(code: Path, runs: Path, model: str, spellings: dict[str, list[str]]) -> None:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    cli = [sys.executable, "-c", "from grasp_deploy.cli import main; main()"]
    calib = ["--calib", f"file:{WIKI / 'wiki.valid.tokens'}"]
    for name, args in COMMANDS.items():
        args = [a.replace("{runs}", str(runs)) for a in spellings.get(name, args)]
        plan, ckpt = runs / f"{name}.plan", runs / f"{name}.ckpt"
        run([*cli, "prune", model, *args, *calib, *QUICK, "--out", str(plan)], env)
        run([*cli, "export", model, str(plan), "--out", str(ckpt)], env)


def _plan(path: Path) -> dict:
    plan = json.loads((path / "plan.json").read_text())
    plan.pop("versions", None)
    plan.get("reconstruction", {}).pop("sha256", None)  # its tensors are compared instead
    plan.get("calibration", {}).pop("from_trajectory", None)  # a path
    return plan


def _tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        out.update(load_file(path))
    return out


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def compare_one(a: Path, b: Path, name: str) -> dict[str, object]:
    pa, pb = a / f"{name}.plan", b / f"{name}.plan"
    row: dict[str, object] = {"plan.json": _plan(pa) == _plan(pb)}
    for extra in ("reconstruction.safetensors", "trajectory.json"):
        if (pa / extra).is_file():
            row[extra] = (_equal(load_file(pa / extra), load_file(pb / extra))
                          if extra.endswith(".safetensors")
                          else json.loads((pa / extra).read_text())
                          == json.loads((pb / extra).read_text()))
    ca, cb = a / f"{name}.ckpt", b / f"{name}.ckpt"
    files = sorted(p.name for p in ca.glob("*.safetensors"))
    row["weights"] = _equal(_tensors([ca / f for f in files]),
                            _tensors(sorted(cb.glob("*.safetensors"))))
    row["weight files byte-identical"] = all(
        (cb / f).is_file() and (ca / f).read_bytes() == (cb / f).read_bytes() for f in files)
    return row


def compare(a: Path, b: Path, out: Path, note: str | None) -> None:
    rows = {name: compare_one(a, b, name) for name in COMMANDS if (a / f"{name}.plan").is_dir()}
    keys = ["plan.json", "reconstruction.safetensors", "trajectory.json", "weights",
            "weight files byte-identical"]
    lines = [f"# Same command, same seed: `{a}` against `{b}`", "",
             "Plans without their package versions and recorded paths; every tensor of the plan's "
             "reconstruction file and of the exported checkpoint. Commands (after "
             f"`grasp-deploy prune smollm2-135m`, then {' '.join(QUICK)} and the shared "
             "WikiText validation text):", "",
             *[f"- {n}: `{shlex.join(args)}`" for n, args in COMMANDS.items()], "",
             "| command | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in rows.items():
        cells = ["-" if k not in row else "equal" if row[k] else "DIFFERENT" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    every = all(all(r.values()) for r in rows.values())
    lines += ["", f"{len(rows)} commands: " + ("all equal." if every else "some differ.")]
    print(harness.write(out, "same-output", {"before": str(a), "after": str(b), "rows": rows},
                        "\n".join(lines), note).read_text())


def main() -> None:
    ap = harness.parser(__doc__, "same-output")
    ap.add_argument("--run", type=Path, metavar="CODE", help="a checkout whose package runs")
    ap.add_argument("--runs", type=Path, help="where --run writes its plans and checkpoints")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--spelling", action="append", default=[], metavar="NAME=ARGS",
                    help="this version's arguments for command NAME")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    harness.require(WIKI / "wiki.valid.tokens", "../shared/data/wikitext-2")
    if args.run:
        spellings = {k: shlex.split(v) for k, v in (s.split("=", 1) for s in args.spelling)}
        make(args.run, args.runs, args.model, spellings)
    if args.compare:
        compare(*args.compare, args.out, args.note)


if __name__ == "__main__":
    main()
