"""Bad input: every numeric option with nan, inf or a negative value, malformed plans and
files; each gives one `error:` line, exit code 2, and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main

from conftest import listing, save_tiny


def run(*args):
    """The CLI in this process (fast): (exit code, stderr lines but notes, result)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")
    ]
    return result.exit_code, lines, result


PRUNE_NUMBERS = [("--prune-ratio", v) for v in ("nan", "inf", "-0.2")] + [
    (flag, v) for flag in ("--lr", "--tau") for v in ("nan", "inf", "-1")] + [
    ("--gisp-step", "nan"), ("--gisp-step", "-0.1"), ("--num-samples", "-3"), ("--seq-len", "-1"),
    ("--epochs", "-1"), ("--scale-epochs", "-1"), ("--scale-samples", "-2"), ("--align", "-64"),
    ("--tp", "0"), ("--checkpoint-every", "-5"), ("--gisp-blocks", "0")]


@pytest.mark.parametrize("flag,value", PRUNE_NUMBERS)
def test_every_prune_number_is_checked(flag, value, tiny_dir, tmp_path):
    args = ["prune", tiny_dir, "--out", tmp_path / "p", flag, value]
    if flag != "--prune-ratio":
        args += ["-r", "0.3"]
    code, lines, proc = run(*args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert flag.split()[0] in lines[0] and listing(tmp_path) == []


SERVE_NUMBERS = [("--kv-cache-gb", v) for v in ("nan", "inf", "-1")] + [
    ("--startup-timeout", "nan"), ("--startup-timeout", "-3"), ("--port", "70000"),
    ("--max-model-len", "-1"), ("--tensor-parallel-size", "0"), ("--pipeline-parallel-size", "-2")]
BENCH_NUMBERS = [("--kv-cache-gb", "nan"), ("--request-rate", "nan"), ("--request-rate", "inf"),
                 ("--request-rate", "-1"), ("--requests", "-4"), ("--warmup", "-1"),
                 ("--output-len", "1"), ("--repeats", "0"), ("--slo", "ttft:nan"),
                 ("--slo", "tpot:-5"), ("--duration", "nan"), ("--duration", "-10"),
                 ("--concurrency", "0,4"), ("--tensor-parallel-size", "0"),
                 ("--pipeline-parallel-size", "0")]


@pytest.mark.parametrize("flag,value", SERVE_NUMBERS)
def test_every_serve_number_is_checked(flag, value, tiny_dir):
    code, lines, proc = run("serve", tiny_dir, flag, value)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert flag in lines[0]


@pytest.mark.parametrize("flag,value", BENCH_NUMBERS)
def test_every_bench_number_is_checked(flag, value, tiny_dir, tmp_path):
    code, lines, proc = run("bench", "--pruned", tiny_dir, "--dense", tiny_dir, "--out",
                            tmp_path / "b", flag, value)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert flag in lines[0] and listing(tmp_path) == []


@pytest.mark.parametrize("size", ["nanGB", "infGB", "-1GB", "lots"])
def test_shard_sizes_are_checked(size, tmp_path):
    code, lines, _ = run("export", tmp_path, "--out", tmp_path / "ck", "--max-shard-size", size)
    assert code == 2 and "--max-shard-size" in lines[0]


# -- plans ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "p"
    code, _, proc = run("prune", tiny_dir, "-r", "0.3", "--method", "magnitude", "--dtype",
                        "float32", "--out", out)
    assert code == 0, proc.stderr
    return out


def _edited(plan_dir, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(plan_dir, copy)
    data = json.loads((copy / "plan.json").read_text())
    data = edit(data)
    (copy / "plan.json").write_text(json.dumps(data))
    return copy


def _nan_scale(d):
    d["layers"][0]["ffn_scale"] = [float("nan")] * len(d["layers"][0]["ffn_keep"])
    return d


def _fractional_id(d):
    d["layers"][1]["ffn_keep"][0] = 0.5
    return d


def _unsorted(d):
    d["layers"][0]["kv_keep"] = [1, 0]
    return d


def _bigger_model(d):
    d["source"]["shape"]["layers"].append(dict(d["source"]["shape"]["layers"][0]))
    d["layers"].append(dict(d["layers"][0]))
    return d


@pytest.mark.parametrize("edit,expect", [
    (lambda d: [1, 2, 3], "is a JSON object, not a list"),
    (_nan_scale, "not a finite number"),
    (_fractional_id, "not an integer unit id"),
    (_unsorted, "ascending"),
    (lambda d: {**d, "budget": {**d["budget"], "prune_ratio": float("nan")}}, "prune_ratio nan"),
    (_bigger_model, "plan was made for"),
])
def test_malformed_plans_are_refused_before_the_model_loads(edit, expect, plan_dir, tiny_dir,
                                                            text_file, tmp_path):
    bad = _edited(plan_dir, tmp_path, edit)
    for args in (["export", tiny_dir, bad, "--out", tmp_path / "ck"],
                 ["eval", tiny_dir, "--plan", bad, "--data", f"file:{text_file}", "--seq-len", 32,
                  "--max-windows", 1]):
        code, lines, proc = run(*args)
        assert code == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert not (tmp_path / "ck").exists()


# -- broken source files ---------------------------------------------------------------------------
def test_a_truncated_model_is_one_line(tmp_path, text_file):
    model = save_tiny(tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, lines, proc = run("eval", model, "--data", f"file:{text_file}", "--seq-len", 32,
                            "--max-windows", 1)
    assert code == 2 and len(lines) == 1 and "cannot load model" in lines[0], proc.stderr


def test_a_corrupt_parquet_file_is_one_line(tiny_dir, tmp_path):
    bad = tmp_path / "calib.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    code, lines, proc = run("prune", tiny_dir, "-r", "0.3", "--calib", f"file:{bad}", "-l", 32,
                            "--out", tmp_path / "p")
    assert code == 2 and len(lines) == 1 and "not a readable parquet file" in lines[0], proc.stderr


def test_prune_and_serve_prunes_a_plan_the_ranks_can_split(tiny_dir, tmp_path, capsys):
    from grasp_deploy.cli.serving import _plan_for_ranks

    assert _plan_for_ranks({"tp": 1}, 2) == {"tp": 2}  # --tp follows --tensor-parallel-size
    assert "pruning with --tp 2" in capsys.readouterr().err
    assert _plan_for_ranks({"tp": 4}, 2) == {"tp": 4} and _plan_for_ranks({"tp": 1}, 1) == {"tp": 1}
    code, lines, proc = run("prune-and-serve", tiny_dir, "--work", tmp_path / "w", "-r", "0.3",
                            "--tp", "3", "--tensor-parallel-size", "2")
    assert code == 2 and len(lines) == 1, proc.stderr
    assert "--tp 3 makes a plan that --tensor-parallel-size 2 cannot split" in lines[0]
    assert listing(tmp_path) == []
