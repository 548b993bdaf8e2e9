"""The prune options made from the methods' and post-steps' settings: the command line builds
exactly the library's defaults, an option reaches only the part it belongs to, and every
combination that used to be rewritten or dropped silently is one error naming the flags."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.jobs import prune as prune_job
from grasp_deploy.methods import METHODS, POST_STEPS, GispSettings, ReconstructSettings
from grasp_deploy.methods.base import FLAG, flag_fields, option_name

from conftest import listing


class Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """The PruneConfig the command builds, instead of running it."""
    box = []

    def capture(config, on_step=None):
        box.append(config)
        raise Captured
    monkeypatch.setattr(prune_job, "run_prune", capture)
    return box


def _config(captured, tmp_path, *args):
    r = CliRunner().invoke(main, ["prune", "-r", "0.3", "--out", str(tmp_path / "p"),
                                  *[str(a) for a in args]])
    assert isinstance(r.exception, Captured), r.output
    return captured.pop()


def _typed(f: dataclasses.Field) -> list[str]:
    """The command line that gives field ``f`` its own default explicitly."""
    name = option_name(f)
    if f.type == "bool":
        return [name] if f.default else []
    return [] if f.default is None else [name, str(f.default)]


@pytest.mark.parametrize("method", list(METHODS))
def test_the_command_line_builds_the_library_defaults_even_when_typed(method, captured,
                                                                      tmp_path):
    settings_type = METHODS[method].settings
    plain = _config(captured, tmp_path, "--method", method)
    assert plain.settings == settings_type() and plain.post_steps == ()
    typed = [a for f in flag_fields(settings_type) for a in _typed(f)]
    assert _config(captured, tmp_path, "--method", method, *typed).settings == settings_type()


def test_every_option_shows_the_default_the_library_has():
    text = CliRunner().invoke(main, ["prune", "--help"], terminal_width=400).output
    lines = {name.rstrip(","): line for line in text.splitlines()
             if line.strip().startswith("-")
             for name in line.strip().split("  ")[0].split() if name.startswith("-")}
    for part in [*METHODS.values(), *POST_STEPS.values()]:
        for f in flag_fields(part.settings):
            spec, line = f.metadata[FLAG], lines[option_name(f)]
            if f.type == "bool" or (f.default is None and spec.default_text is None):
                assert "[default:" not in line, line
            else:
                shown = spec.default_text or str(f.default)
                assert f"[default: {shown}]" in line, line
                if spec.default_text is None:  # the value itself, not a description of it
                    assert shown == str(f.default)


def test_options_reach_their_own_part(captured, tmp_path):
    c = _config(captured, tmp_path, "--method", "gisp", "--gisp-step", "0.1",
                "--gisp-blocks", "3", "--reselect", "--reconstruct-ridge", "0.02",
                "--sink-skip", "0")
    assert c.settings == GispSettings(step=0.1, blocks=3)
    assert c.post_steps == (ReconstructSettings(ridge=0.02, reselect=True, skip=0),)
    c = _config(captured, tmp_path, "--method", "structprune", "--reconstruct-ridge", "0.02")
    assert c.settings.ridge == 0.02 and c.post_steps == ()
    c = _config(captured, tmp_path, "--recipe", "paper", "-e", "2")
    assert (c.settings.recipe, c.settings.init, c.settings.epochs) == ("paper", "zero", 2)


@pytest.mark.parametrize("args, message", [
    # an option of a method not chosen (was: silently ignored)
    (["--gisp-step", "0.1"], "--gisp-step applies to --method gisp, not to --method grasp"),
    (["--method", "flap", "--recipe", "paper"], "--recipe applies to --method grasp, not to "
                                                "--method flap"),
    # an option of a post-step not switched on (was: silently ignored)
    (["--reconstruct-ridge", "0.1"], "--reconstruct-ridge applies to --method structprune or "
                                     "--reconstruct, not to --method grasp"),
    (["--reconstruct", "--sink-skip", "2"], "--sink-skip applies with --reselect or --method "
                                            "structprune, not with --reconstruct alone"),
    # structprune already ends with the refit (was: --reconstruct silently rewritten into its
    # ridge, --reselect silently dropped)
    (["--method", "structprune", "--reconstruct"], "--reconstruct does not combine with "
                                                   "--method structprune"),
    (["--method", "structprune", "--reselect"], "--reselect does not combine with --method "
                                                "structprune"),
])
def test_conflicting_options_are_one_error_naming_them(args, message, tiny_dir, tmp_path):
    r = CliRunner().invoke(main, ["prune", str(tiny_dir), "-r", "0.3", "--out",
                                  str(tmp_path / "p"), *args])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [f"error: {r.output.split('error: ')[1].strip()}"]
    assert message in r.output
    assert listing(tmp_path) == []


def test_gisp_from_a_trajectory_with_reconstruct_fails_before_loading(tiny_dir, tmp_path,
                                                                      monkeypatch):
    """It used to reach the refit with no calibration blocks and die with an AttributeError
    after the model had loaded (the guard sat in a branch only structprune reached)."""
    from grasp_deploy.jobs import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    r = CliRunner().invoke(main, ["prune", str(tiny_dir), "-r", "0.1", "--method", "gisp",
                                  "--from-trajectory", str(tmp_path / "earlier"),
                                  "--reconstruct", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2, r.output
    assert ("error: --reconstruct needs calibration blocks; --from-trajectory takes a plan "
            "without them: drop one of the two") in r.output
    assert not (tmp_path / "p").exists()


def test_every_command_explains_every_option_in_its_help():
    for name, command in main.commands.items():
        r = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
        assert r.exit_code == 0, (name, r.output)
        assert command.get_short_help_str(200).rstrip(".").split("...")[0][:40] in r.output
        ctx = command.make_context(name, ["--help"], resilient_parsing=True)
        for param in command.get_params(ctx):
            if isinstance(param, __import__("click").Option) and not param.hidden:
                assert param.opts[0] in r.output, (name, param.opts[0])
