"""Faults around files: --force on what is not ours, atomic replacement, stale temporaries,
the umask, writability, planted resume state, tampered checkpoints, model paths."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core import fsutil
from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.plan import PLAN_DIR

from conftest import listing, save_tiny

CLI = [sys.executable, "-m", "grasp_deploy.cli"]
QUICK = ["-n", "4", "-l", "32", "-e", "1", "--dtype", "float32", "-q"]


class _Done:
    def __init__(self, result):
        self.stderr, self.stdout = result.stderr, result.stdout


def run(*args, cwd=None, env=None):
    """The CLI in this process (fast); ``cwd``/``env`` apply for the call only."""
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env or {})
        result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result.exit_code, errors, _Done(result)


@pytest.fixture(scope="module")
def made(tiny_dir, text_file, tmp_path_factory):
    """A magnitude plan and its checkpoint, made once."""
    root = tmp_path_factory.mktemp("made")
    code, errors, proc = run("prune", tiny_dir, "-r", "0.3", "--method", "magnitude",
                             "--dtype", "float32", "--out", root / "plan")
    assert code == 0, proc.stderr
    code, errors, proc = run("export", root / "plan", "--out", root / "ckpt")
    assert code == 0, proc.stderr
    return root


# -- --force replaces only what this tool wrote ---------------------------------------------------
def test_force_refuses_a_foreign_directory_and_keeps_its_files(made, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    code, errors, _ = run("export", made / "plan", "--out", thesis, "--force")
    assert code == 2 and len(errors) == 1 and "not a checkpoint directory written by" in errors[0]
    assert (thesis / "thesis.tex").read_text() == "years of work"
    code, errors, _ = run("prune", "x", "-r", "0.3", "--out", thesis, "--force")
    assert code == 2 and "not a plan directory written by" in errors[0]


def test_force_refuses_the_current_directory_its_ancestors_and_symlinks(made, tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    for out in (".", str(tmp_path), str(tmp_path.parent)):
        code, errors, _ = run("export", made / "plan", "--out", out, "--force", cwd=tmp_path)
        assert code == 2 and len(errors) == 1, errors
    link = tmp_path / "link"
    link.symlink_to(made / "ckpt")
    code, errors, _ = run("export", made / "plan", "--out", link, "--force")
    assert code == 2 and "symbolic link" in errors[0]
    assert (tmp_path / "notes.txt").read_text() == "keep" and link.is_symlink()


def test_force_replaces_our_own_output(made, tmp_path):
    target = tmp_path / "ckpt"
    for _ in range(2):
        code, _, proc = run("export", made / "plan", "--out", target, "--force")
        assert code == 0, proc.stderr
    assert (target / "grasp_manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporaries left


# -- atomic replacement ----------------------------------------------------------------------------
def _fill(directory: Path, text: str) -> None:
    directory.mkdir()
    (directory / "plan.json").write_text(text)


@pytest.mark.parametrize("exchange", [True, False])
def test_replacement_is_all_or_nothing(tmp_path, monkeypatch, exchange):
    out = tmp_path / "p"
    _fill(out, "old")
    if not exchange:
        monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    with fsutil.atomic_dir(out, True, PLAN_DIR) as tmp:
        (tmp / "plan.json").write_text("new")
    assert (out / "plan.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_a_failed_swap_keeps_the_old_copy(tmp_path, monkeypatch):
    out = tmp_path / "p"
    _fill(out, "old")
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self, target):
        if ".tmp-" in self.name:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(GraspError, match="nothing was changed"):
        with fsutil.atomic_dir(out, True, PLAN_DIR) as tmp:
            (tmp / "plan.json").write_text("new")
    assert (out / "plan.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_output_directories_follow_the_umask(made, tmp_path):
    for mask, mode in ((0o022, 0o755), (0o077, 0o700)):
        out = tmp_path / f"ck{mask:o}"
        code = subprocess.run(
            [
                "sh",
                "-c",
                f'umask {mask:03o} && exec "$@"',
                "sh",
                *CLI,
                "export",
                str(made / "plan"),
                "--out",
                str(out),
            ],
            capture_output=True,
        ).returncode
        assert code == 0
        assert out.stat().st_mode & 0o777 == mode


# -- kill -9 mid-export, then a clean rerun -------------------------------------------------------
SLOW_EXPORT = """
import sys, time
import grasp_deploy.checkpoint.write as w
real = w.write_weights
def slow(*a, **k):
    names = real(*a, **k)
    print("written", flush=True)
    time.sleep(120)
    return names
w.write_weights = slow
from grasp_deploy.jobs.export import ExportConfig, run_export
run_export(ExportConfig(plan_dir=sys.argv[1], out=sys.argv[2]))
"""


def test_kill_9_mid_export_then_a_clean_rerun(made, tmp_path):
    out = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(made / "plan"), str(out)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".ck.tmp-")  # what kill -9 leaves
    code, _, rerun = run("export", made / "plan", "--out", out)
    assert code == 0, rerun.stderr
    assert f"note: removed {tmp_path / left[0]}, left by an interrupted run" in rerun.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert run("inspect", out)[0] == 0


def test_a_temporary_of_a_live_run_is_left_alone(tmp_path):
    out = tmp_path / "p"
    live = tmp_path / f".p.tmp-{os.getppid()}-abcd"
    dead = tmp_path / ".p.tmp-999999999-abcd"
    live.mkdir(), dead.mkdir()
    assert fsutil.clean_stale(out) == [dead]
    assert live.is_dir() and not dead.exists()


# -- writability is checked before the work ------------------------------------------------------
def test_an_unwritable_parent_is_refused_before_any_work(tiny_dir, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    start = time.monotonic()
    code, errors, _ = run("prune", tiny_dir, "-r", "0.3", "--method", "magnitude",
                          "--out", blocker / "sub" / "plan")
    assert code == 2 and len(errors) == 1 and "is not a directory" in errors[0]
    assert time.monotonic() - start < 30 and blocker.read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_directory_that_takes_no_new_entries_is_refused_even_for_root(tiny_dir):
    # os.access() says yes to root everywhere; /proc takes no new directories from anyone
    code, errors, _ = run("prune", tiny_dir, "-r", "0.3", "--method", "magnitude",
                          "--out", "/proc/grasp-missing/plan")
    assert code == 2 and len(errors) == 1 and "cannot write into /proc" in errors[0]


# -- resume state is data, never code --------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('GRASP_PWNED', '/tmp/grasp-pwned')}",))


def test_a_planted_resume_state_runs_no_code(tiny_dir, text_file, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / ".plan.resume.pt").write_bytes(pickle.dumps({"key": "x", "evil": _Payload()}))
    planted = tmp_path / ".plan.resume"
    planted.mkdir()
    (planted / "state.json").write_text('{"key": "x"}')
    (planted / "tensors.safetensors").write_bytes(pickle.dumps(_Payload()))
    env = {**os.environ, "GRASP_PWNED": str(marker)}
    code, _, proc = run("prune", tiny_dir, "-r", "0.3", "--calib", f"file:{text_file}", *QUICK,
                        "--out", tmp_path / "plan", env=env)
    assert code == 0, proc.stderr
    assert not marker.exists() and (tmp_path / "plan" / "plan.json").is_file()


# -- checkpoints are verified, code included -------------------------------------------------------
@pytest.fixture
def ckpt_copy(made, tmp_path):
    import shutil

    return Path(shutil.copytree(made / "ckpt", tmp_path / "ck"))


@pytest.mark.parametrize("tamper,expect", [
    ("code", "modeling_grasp.py was modified"),
    ("added", "is not listed in grasp_manifest.json"),
    ("weights", "model.safetensors was modified or corrupted"),
    ("no-manifest", "has no grasp_manifest.json"),
    ("bad-manifest", "is not valid JSON"),
])
def test_tampered_checkpoints_are_refused_before_loading(ckpt_copy, text_file, tamper, expect):
    if tamper == "code":
        with open(ckpt_copy / "modeling_grasp.py", "a") as f:
            f.write("\nimport os; os.system('touch /tmp/grasp-pwned-code')\n")
    elif tamper == "added":
        (ckpt_copy / "custom_generate.py").write_text("raise SystemExit")
    elif tamper == "weights":
        data = bytearray((ckpt_copy / "model.safetensors").read_bytes())
        data[-100] ^= 0x40  # one flipped bit in a weight
        (ckpt_copy / "model.safetensors").write_bytes(bytes(data))
    elif tamper == "no-manifest":
        (ckpt_copy / "grasp_manifest.json").unlink()
    else:
        (ckpt_copy / "grasp_manifest.json").write_text("{not json")
    for args in (["inspect", ckpt_copy],
                 ["eval", ckpt_copy, "--data", f"file:{text_file}", "--seq-len", "32",
                  "--max-windows", "1", "--dtype", "float32"]):
        code, errors, proc = run(*args)
        assert code == 2 and len(errors) == 1 and expect in errors[0], proc.stderr
    if tamper in ("added", "no-manifest"):  # an explicit --no-verify loads what the user trusts
        assert run("inspect", ckpt_copy, "--no-verify")[0] == 0


def test_an_index_pointing_outside_the_checkpoint_is_refused(ckpt_copy):
    (ckpt_copy / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "../../etc/passwd"}}))
    code, errors, _ = run("inspect", ckpt_copy, "--no-verify")
    assert code == 2 and "outside the checkpoint directory" in errors[0]


# -- model paths ---------------------------------------------------------------------------------
def test_a_missing_relative_model_path_is_named_as_such(tmp_path):
    (tmp_path / "models").mkdir()
    code, errors, _ = run("prune", "models/mine", "-r", "0.3", "--out", "p", cwd=tmp_path)
    assert code == 2 and "no such model directory: models/mine" in errors[0]
    assert "org/name" in errors[0]


def test_a_plan_records_the_resolved_model_path(tiny_dir, tmp_path):
    work = tmp_path / "a"
    work.mkdir()
    save_tiny(work / "model")
    code, _, proc = run("prune", "model", "-r", "0.3", "--method", "magnitude", "--out", "plan",
                        cwd=work)
    assert code == 0, proc.stderr
    plan = json.loads((work / "plan" / "plan.json").read_text())
    assert plan["source"]["name"] == str((work / "model").resolve())
    code, _, proc = run("export", work / "plan", "--out", tmp_path / "ck", cwd=tmp_path)
    assert code == 0, proc.stderr
    assert listing(tmp_path / "ck")


# -- prune-and-serve's reuse follows the weights, and a failed run leaves nothing
def test_reuse_is_keyed_on_the_weights_not_the_path(text_file, tmp_path):
    from dataclasses import replace as dc_replace

    from grasp_deploy.jobs.pipeline import prepare_checkpoint
    from grasp_deploy.jobs.prune import PruneConfig

    model = save_tiny(tmp_path / "model", seed=0)
    config = PruneConfig(prune_ratio=0.3, out=tmp_path / "unused", model=str(model),
                         method="magnitude", dtype="float32", progress=False)
    said: list[str] = []
    work = tmp_path / "work"
    first = prepare_checkpoint(config, work, said.append)
    assert first["pruned"] and first["exported"]
    again = prepare_checkpoint(config, work, said.append)
    assert not again["pruned"] and not again["exported"]
    save_tiny(model, seed=1)  # same path, new weights
    third = prepare_checkpoint(dc_replace(config), work, said.append)
    assert third["pruned"] and any("weights changed" in s for s in said)
    plan = json.loads((work / "plan" / "plan.json").read_text())
    from grasp_deploy.sources import models

    reloaded = models.load_model(models.resolve_source(str(model)))
    assert plan["source"]["fingerprint"] == models.fingerprint(reloaded)


def test_a_failed_prune_and_serve_leaves_no_work_directory(tiny_dir, tmp_path):
    from grasp_deploy.jobs.pipeline import prepare_checkpoint
    from grasp_deploy.jobs.prune import PruneConfig

    config = PruneConfig(prune_ratio=0.3, out=tmp_path / "unused", model=str(tiny_dir),
                         calib=f"file:{tmp_path / 'missing.txt'}", progress=False)
    with pytest.raises(GraspError, match="no such file"):
        prepare_checkpoint(config, tmp_path / "runs" / "work", lambda _: None)
    assert list(tmp_path.iterdir()) == []
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(GraspError, match="did not write"):
        prepare_checkpoint(config, foreign, lambda _: None)
