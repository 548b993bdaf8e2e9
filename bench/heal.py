"""Healing against time: perplexity of a pruned checkpoint before and after `grasp-deploy heal`
for each cell, on the full WikiText-2 test text, with a plot of perplexity against healing time.

A cell is TRAIN:MINUTES:STEPS[:self] (``all:60:540``: every kept weight, cosine schedule over
540 steps, stopped at 60 minutes if not done; ``:self``: data-free, on ``--samples`` blocks the
teacher samples itself instead of ``--data``). Each cell heals CKPT into
WORK/NAME-TRAIN-MINUTES[-self] (kept, and reused when it is there: the script resumes), then
scores it with ``grasp-deploy eval`` (transformers, dtype auto). Healing time is the training
time the healing record holds (loading, sampling and the held-out KL excluded).

    python -m bench.heal --checkpoint runs/r50-reselect-ckpt --name r50-reselect \\
        --cells all:60:540,all:15:135,lora:15:135 --out bench/results/heal-smollm2-r50

``--code-test`` adds a second perplexity (held-out code), ``--humaneval`` adds HumanEval pass@1
through vLLM (``grasp-deploy eval --tasks humaneval``), ``--max-windows`` scores the first N
windows of each text instead of all of it, and ``--dense-scores`` takes the dense model's figures
from an earlier record of the same protocol instead of measuring them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import WIKI


def _eval(ckpt: Path | str, task: list[str], cache: Path) -> dict[str, Any]:
    """``grasp-deploy eval CKPT TASK --json`` of ``ckpt``, kept in ``cache`` (keyed by the
    checkpoint's manifest, or its path for a dense model) so that a re-run scores each model
    once."""
    manifest = Path(ckpt) / "grasp_manifest.json"
    key = f"{ckpt}|{' '.join(task)}|" + (
        json.dumps(json.loads(manifest.read_text())["weights"]) if manifest.is_file() else "")
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in done:
        seconds, out = harness.run([*harness.grasp_deploy(), "eval", str(ckpt), *task, "--json"])
        result = json.loads(out.strip().splitlines()[-1])
        result.pop("rows", None)  # HumanEval's per-problem rows: the counts are enough here
        done[key] = {**result, "seconds": seconds}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(done, indent=1) + "\n")
    return done[key]


def _scores(ckpt: Path | str, args: Any) -> dict[str, float]:
    """The figures the table shows for one model: "wiki" (``--test``), and "code" and
    "humaneval" when asked for."""
    windows = ["--max-windows", str(args.max_windows), "--seq-len", str(args.eval_seq_len)] \
        if args.max_windows else []
    cache = args.work / "evals.json"
    texts = {"wiki": args.test, **({"code": args.code_test} if args.code_test else {})}
    scores = {name: _eval(ckpt, ["--data", data, *windows], cache)["perplexity"]
              for name, data in texts.items()}
    if args.humaneval:
        scores["humaneval"] = _eval(ckpt, ["--tasks", "humaneval"], cache)["pass_at_1"]
    return scores


def _heal(ckpt: Path, out: Path, cell: list[str], args: Any) -> None:
    if (out / "grasp_manifest.json").is_file():
        print(f"reusing {out}")
        return
    train, minutes, steps, *data = cell
    source = ["--data", "self", "--samples", str(args.samples)] if data == ["self"] else \
        ["--data", args.data]
    cmd = [*harness.grasp_deploy(), "heal", str(ckpt), "--out", str(out), *source,
           "--eval-data", args.code_test or args.test, "--train", train, "--max-minutes", minutes,
           "--steps", steps, "--json"]
    harness.run(cmd + (["--lr", str(args.lr)] if args.lr else []))


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    base = next(r for r in rows if r["train"] == "none")
    for train in sorted({r["train"] for r in rows} - {"none"}):
        pts = sorted((r["minutes"], r["perplexity"]) for r in rows if r["train"] == train)
        ax.plot([0] + [m for m, _ in pts], [base["perplexity"]] + [p for _, p in pts], "o-",
                label=f"heal --train {train}")
    ax.axhline(base["dense"], color="grey", ls="--", label="dense")
    ax.set_xlabel("healing time (minutes of training, this CPU)")
    ax.set_ylabel("WikiText-2 test perplexity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--name", required=True, help="a short name for the checkpoint")
    ap.add_argument("--cells", default="all:15:135,lora:15:135,all:60:540",
                    help="TRAIN:MINUTES:STEPS, comma-separated; '-' for no cell (the baseline)")
    ap.add_argument("--work", type=Path, default=Path("runs/heal"))
    ap.add_argument("--data", default=f"file:{WIKI / 'wiki.valid.tokens'}")
    ap.add_argument("--test", default=f"file:{WIKI / 'wiki.test.raw'}")
    ap.add_argument("--dense", default=None, help="dense model [default: the checkpoint's source]")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--samples", type=int, default=1024, help="teacher samples of a :self cell")
    ap.add_argument("--code-test", default=None, help="a second text to score, e.g. held-out code")
    ap.add_argument("--humaneval", action="store_true", help="HumanEval pass@1 through vLLM too")
    ap.add_argument("--max-windows", type=int, default=None, help="score the first N windows")
    ap.add_argument("--eval-seq-len", type=int, default=2048, help="window length with the above")
    ap.add_argument("--dense-scores", type=Path, default=None,
                    help="the dense model's bench.calib_domain cell record (same protocol: 32 "
                    "windows of 2048, HumanEval) instead of scoring it again")
    args = ap.parse_args(argv)
    harness.require(WIKI, "the shared WikiText-2 files")
    manifest = json.loads((args.checkpoint / "grasp_manifest.json").read_text())
    if args.dense_scores:  # a bench.calib_domain cell: same windows, same HumanEval
        cell = json.loads(args.dense_scores.read_text())
        dense = {"wiki": cell["wiki_ppl"], "code": cell["code_ppl"],
                 "humaneval": cell["humaneval"]["pass_at_1"]}
    else:
        dense = _scores(args.dense or manifest["source"]["model"], args)
    rows = [{"train": "none", "minutes": 0, "steps": 0, "dense": dense["wiki"],
             "scores": (before := _scores(args.checkpoint, args)), "perplexity": before["wiki"]}]
    for cell in [c.split(":") for c in args.cells.split(",") if c not in ("", "-")]:
        out = args.work / "-".join([args.name, cell[0], *cell[1:2], *cell[3:]])
        _heal(args.checkpoint, out, cell, args)
        record = json.loads((out / "grasp_manifest.json").read_text())["healing"]
        train = cell[0] + (" (data-free)" if cell[3:] == ["self"] else "")
        scores = _scores(out, args)
        rows.append({"train": train, "minutes": record["seconds"] / 60, "steps": record["steps"],
                     "lr": record["lr"], "held_out_kl": record["held_out_kl"],
                     "dense": dense["wiki"], "samples": record.get("samples"),
                     "scores": scores, "perplexity": scores["wiki"]})
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.out / "heal.png", f"{args.name}: perplexity against healing time")
    harness.write(args.out, "heal", {"checkpoint": str(args.checkpoint), "dense_scores": dense,
                                     "rows": rows}, _table(rows, dense, args), args.note)


def _table(rows: list[dict[str, Any]], dense: dict[str, float], args: Any) -> str:
    extra = [k for k in ("code", "humaneval") if k in rows[0]["scores"]]
    heads = {"code": "code ppl", "humaneval": "HumanEval pass@1"}
    test = "WikiText-2 test ppl" + (f" ({args.max_windows} windows)" if args.max_windows else "")
    lines = ["| healing | steps | minutes | held-out KL | " + " | ".join(
                 [test, "x dense", *(heads[k] for k in extra)]) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        kl = r.get("held_out_kl")
        kl_text = f"{kl['before']:.3f} -> {kl['after']:.3f}" if kl else ""
        if r.get("samples"):  # data-free: held out from the teacher's samples, not from --data
            kl_text += " (on samples)"
        cells = [f"{r['scores'][k]:.3f}" for k in extra]
        lines.append(f"| {r['train']} | {r['steps']} | {r['minutes']:.1f} | {kl_text} | "
                     f"{r['perplexity']:.2f} | {r['perplexity'] / dense['wiki']:.2f} | "
                     + "".join(c + " | " for c in cells).rstrip())
    dense_text = ", ".join(f"{heads.get(k, 'WikiText-2 ppl')} {v:.3f}" for k, v in dense.items())
    source = f" (from `{args.dense_scores}`)" if args.dense_scores else ""
    return (f"# Healing {args.name} by distillation\n\nDense: {dense_text}{source}.\n\n"
            + "\n".join(lines) + "\n\n![perplexity against healing time](heal.png)\n")


if __name__ == "__main__":
    main()
