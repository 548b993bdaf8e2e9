"""Calibration domain, measured: does GRASPrune's plan depend on the text it calibrates on?

On the real Qwen model (``qwen2.5-coder-0.5b``) at prune ratios 0.2 and 0.4, GRASPrune's best
recipe calibrates on WikiText (``wiki.valid.tokens``), on Python code (``stdlib-a-l.txt``) and on
text sampled from the model itself (``--calib self``); StructPrune calibrates on code. Each plan
is exported and scored, as is the dense model, on:

- WikiText perplexity: the first 32 windows of 2048 tokens of ``wiki.test.raw``;
- code perplexity: the first 32 windows of 2048 tokens of ``stdlib-m-z.txt``;
- HumanEval pass@1 (all 164, greedy) of the checkpoint served by vLLM (compiled, dtype auto).

Every step runs the real CLI. A cell's figures are saved after each step in
``bench/results/calib-domain/cells/<cell>.json``, so an interrupted run resumes where it
stopped; every run rewrites the table (``calib-domain.md``/``.json``) and the plot
(``calib-domain.png``) from the cells present.

    .venv/bin/python -m bench.calib_domain                  # fill every missing cell
    .venv/bin/python -m bench.calib_domain --cells dense,grasp-code-r0.2
    .venv/bin/python -m bench.calib_domain --report         # only rebuild the table and plot
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import PYTHON_CODE, RESULTS, ROOT, WIKI, run

MODEL = "qwen2.5-coder-0.5b"
OUT = RESULTS / "calib-domain"  # --out changes it
WORK = ROOT / "runs" / "calib-domain"
RATIOS = (0.2, 0.4)
CALIBS = {"wiki": f"file:{WIKI / 'wiki.valid.tokens'}",
          "code": f"file:{PYTHON_CODE / 'stdlib-a-l.txt'}", "self": "self"}
# A CPU recipe: 32 blocks of 256 tokens, one epoch, 8 held-out blocks for stage B (the quick
# recipe the Qwen chain ran, with twice the blocks).
RECIPE = ["--num-samples", "32", "--seq-len", "256"]
GRASP = ["--method", "grasp", "--recipe", "best", "--epochs", "1", "--scale-samples", "8"]
EVALS = {"wiki_ppl": f"file:{WIKI / 'wiki.test.raw'}",
         "code_ppl": f"file:{PYTHON_CODE / 'stdlib-m-z.txt'}"}
WINDOWS, SEQ_LEN = 32, 2048


def cells() -> dict[str, list[str] | None]:
    """cell name -> prune arguments (None: the dense model), in the order they run."""
    table: dict[str, list[str] | None] = {"dense": None}
    for ratio in RATIOS:
        for calib, source in CALIBS.items():
            table[f"grasp-{calib}-r{ratio:g}"] = [*GRASP, "--calib", source, "-r", f"{ratio:g}"]
        table[f"structprune-code-r{ratio:g}"] = ["--method", "structprune", "--calib",
                                                 CALIBS["code"], "-r", f"{ratio:g}"]
    return table


def _save(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def _prune_and_export(name: str, args: list[str], record: dict[str, Any]) -> str:
    """The cell's checkpoint (kept under runs/ until the cell is complete)."""
    work = WORK / name
    ckpt = work / "ckpt"
    if "export_seconds" in record and (ckpt / "config.json").is_file():
        return str(ckpt)
    work.mkdir(parents=True, exist_ok=True)
    cli = harness.grasp_deploy()
    record["prune_command"] = ["grasp-deploy", "prune", MODEL, *RECIPE, *args]
    record["prune_seconds"], _ = run([*cli, "prune", MODEL, *RECIPE, *args, "--out",
                                      str(work / "plan"), "--force", "--quiet"])
    plan = json.loads((work / "plan" / "plan.json").read_text())
    b = plan["budget"]
    record.update(params=b["model_pruned"], params_dense=b["model_dense"],
                  kv_heads=sum(len(layer["kv_keep"]) for layer in plan["layers"]),
                  calibration=plan["calibration"])
    record["export_seconds"], _ = run([*cli, "export", str(work / "plan"), "--out", str(ckpt),
                                       "--force"])
    return str(ckpt)


def run_cell(name: str, args: list[str] | None) -> None:
    path = OUT / "cells" / f"{name}.json"
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"cell": name}
    if "humaneval" in record:
        print(f"[skip] {name}: done", flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[cell] {name}", flush=True)
    target = MODEL if args is None else _prune_and_export(name, args, record)
    _save(path, record)
    cli = harness.grasp_deploy()
    for key, data in EVALS.items():
        if key not in record:
            seconds, out = run([*cli, "eval", target, "--data", data, "--seq-len", str(SEQ_LEN),
                                "--max-windows", str(WINDOWS), "--json"])
            result = json.loads(out.strip().splitlines()[-1])
            record[key] = result["perplexity"]
            record[key + "_detail"] = {k: result.get(k) for k in ("windows", "seq_len", "dtype")}
            record[key + "_seconds"] = seconds
            _save(path, record)
    seconds, out = run([*cli, "eval", target, "--tasks", "humaneval", "--json"])
    result = json.loads(out.strip().splitlines()[-1])
    record["humaneval_seconds"] = seconds
    record["humaneval_passed_ids"] = [r["task_id"] for r in result["rows"] if r["passed"]]
    record["humaneval"] = {k: result[k] for k in ("pass_at_1", "passed", "total", "max_tokens",
                                                  "generate_seconds", "execute_seconds")}
    record.update({k: v for k, v in harness.stamp().items()
                   if k in ("machine", "versions", "commit")})
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _save(path, record)
    if args is not None:
        shutil.rmtree(WORK / name, ignore_errors=True)
    print(f"[done] {name}: wiki {record['wiki_ppl']:.2f}, code {record['code_ppl']:.3f}, "
          f"HumanEval {record['humaneval']['pass_at_1']:.3f}", flush=True)


def _fmt(record: dict[str, Any], key: str, form: str) -> str:
    if key not in record:
        return "(pending)"
    value = record[key]["pass_at_1"] if key == "humaneval" else record[key]
    return form.format(value)


def _label(name: str) -> tuple[str, str]:
    """(calibration, ratio) of a cell name such as grasp-code-r0.2."""
    if name == "dense":
        return "-", "0"
    head, ratio = name.rsplit("-r", 1)
    return head.split("-", 1)[1], ratio


def table(records: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| cell | calibration | ratio | parameters (M) | KV heads | WikiText ppl | code ppl "
             "| HumanEval pass@1 | prune s | eval s (wiki + code + HumanEval) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in cells():
        r = records.get(name, {})
        calib, ratio = _label(name)
        params = f"{r['params'] / 1e6:.1f}" if "params" in r else ""
        kv = str(r["kv_heads"]) if "kv_heads" in r else ""
        times = " + ".join(f"{r[k]:.0f}" for k in ("wiki_ppl_seconds", "code_ppl_seconds",
                                                   "humaneval_seconds") if k in r)
        prune_s = f"{r['prune_seconds']:.0f}" if "prune_seconds" in r else ""
        lines.append(f"| {name} | {calib} | {ratio} | {params or '630.2' * (name == 'dense')} | "
                     f"{kv or '48' * (name == 'dense')} | {_fmt(r, 'wiki_ppl', '{:.2f}')} | "
                     f"{_fmt(r, 'code_ppl', '{:.3f}')} | {_fmt(r, 'humaneval', '{:.3f}')} | "
                     f"{prune_s} | {times} |")
    return lines


def plot(records: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("wiki_ppl", "code_ppl", "humaneval"),
                              ("WikiText perplexity", "code perplexity", "HumanEval pass@1"),
                              strict=True):
        for series in [*(f"grasp-{c}" for c in CALIBS), "structprune-code"]:
            points = [(r, records[f"{series}-r{r:g}"]) for r in RATIOS
                      if key in records.get(f"{series}-r{r:g}", {})]
            dense = records.get("dense", {})
            xs = ([0.0] if key in dense else []) + [r for r, _ in points]
            ys = ([_value(dense, key)] if key in dense else []) + [_value(c, key)
                                                                     for _, c in points]
            if xs:
                ax.plot(xs, ys, marker="o", label=series)
        ax.set_xlabel("prune ratio (0: dense)")
        ax.set_title(label)
        if key != "humaneval":
            ax.set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{MODEL}: calibration domain (first {WINDOWS} x {SEQ_LEN} tokens; "
                 "HumanEval 164, greedy, through vLLM)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _value(record: dict[str, Any], key: str) -> float:
    return record[key]["pass_at_1"] if key == "humaneval" else record[key]


def report() -> Path:
    records = {p.stem: json.loads(p.read_text()) for p in sorted((OUT / "cells").glob("*.json"))}
    records = {name: r for name, r in records.items() if "humaneval" in r}  # complete cells
    body = [f"# Calibration domain on {MODEL}", "",
            "GRASPrune (best recipe, 32 x 256 calibration tokens, 1 epoch, 8 stage-B blocks) and "
            "StructPrune (32 x 256) calibrated on WikiText (`wiki.valid.tokens`), Python code "
            "(`stdlib-a-l.txt`) or text the model samples (`self`); perplexity on the first "
            f"{WINDOWS} windows of {SEQ_LEN} tokens of `wiki.test.raw` and `stdlib-m-z.txt` "
            "(bf16, transformers); HumanEval pass@1 on all 164 problems, greedy, up to 512 "
            "tokens, through vLLM (compiled, dtype auto), programs in the sandbox. Times are "
            "wall seconds on this machine (one job at a time unless a note says otherwise).", "",
            *table(records)]
    OUT.mkdir(parents=True, exist_ok=True)
    plot(records, OUT / "calib-domain.png")
    notes = [f"- {name}: {r['note']}" for name, r in records.items() if r.get("note")]
    body += ["", *(["Notes:", "", *notes, ""] if notes else []),
             "![calibration domain](calib-domain.png)"]
    return harness.write(OUT, "calib-domain", {"cells": records}, "\n".join(body))


def main() -> None:
    global OUT
    ap = harness.parser(__doc__, "calib-domain")
    ap.add_argument("--cells", default=None, help=f"comma-separated among {', '.join(cells())}")
    ap.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    opts = ap.parse_args()
    OUT = opts.out
    for path in (WIKI / "wiki.test.raw", PYTHON_CODE / "stdlib-m-z.txt"):
        harness.require(path, "the shared WikiText-2 and Python code")
    wanted = list(cells()) if opts.cells is None else opts.cells.split(",")
    unknown = [c for c in wanted if c not in cells()]
    if unknown:
        sys.exit(f"error: unknown cell(s) {unknown}; use {', '.join(cells())}")
    if not opts.report:
        for name in wanted:
            run_cell(name, cells()[name])
    print(report())


if __name__ == "__main__":
    main()
