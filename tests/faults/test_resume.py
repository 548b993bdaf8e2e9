"""Every method that runs long resumes after an interruption to the very same plan, from state
keyed on all its inputs (the resolved device included)."""

from __future__ import annotations

import pytest

from grasp_deploy.core.plan import load_plan
from grasp_deploy.jobs import resume
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods import GispSettings, GraspSettings

SETTINGS = {"grasp": GraspSettings(epochs=2, init="taylor", scale_samples=4),
            "gisp": GispSettings(step=0.1, blocks=2)}


class Interrupted(Exception):
    pass


def _config(method, tiny_dir, text_file, out, **extra):
    return PruneConfig(prune_ratio=0.3, out=out, model=str(tiny_dir), method=method,
                       calib=f"file:{text_file}", num_samples=8, seq_len=32, dtype="float32",
                       method_settings=SETTINGS.get(method), checkpoint_every=2,
                       progress=False, **extra)


@pytest.mark.parametrize("method", ["taylor", "gisp", "grasp"])
def test_an_interrupted_run_resumes_to_the_same_plan(method, tiny_dir, text_file, tmp_path,
                                                     monkeypatch):
    whole = run_prune(_config(method, tiny_dir, text_file, tmp_path / "whole")).plan
    saves, loads = [], []
    real_save, real_load = resume.ResumeStore.save, resume.ResumeStore.load

    def save_then_die(self, **parts):
        real_save(self, **parts)
        saves.append(sorted(parts))
        raise Interrupted  # as if the process died right after its first checkpoint

    monkeypatch.setattr(resume.ResumeStore, "save", save_then_die)
    with pytest.raises(Interrupted):
        run_prune(_config(method, tiny_dir, text_file, tmp_path / "again"))
    assert saves and (tmp_path / ".again.resume" / "state.json").is_file()
    assert not (tmp_path / "again").exists()

    def recording_load(self):
        state = real_load(self)
        loads.append(sorted(k for k in state if k != "key"))
        return state

    monkeypatch.setattr(resume.ResumeStore, "save", real_save)
    monkeypatch.setattr(resume.ResumeStore, "load", recording_load)
    resumed = run_prune(_config(method, tiny_dir, text_file, tmp_path / "again")).plan
    assert any(loads), "the second run did not find the saved state"
    assert resumed.layers == whole.layers and resumed.budget == whole.budget
    assert load_plan(tmp_path / "again").layers == whole.layers
    assert not (tmp_path / ".again.resume").exists()  # removed once the plan is written


def test_state_of_another_run_is_not_resumed(tiny_dir, text_file, tmp_path):
    store = resume.ResumeStore(tmp_path / "p", resume.run_key({"device": "cpu"}))
    store.save(taylor={"done": 2, "grads": []})
    other = resume.ResumeStore(tmp_path / "p", resume.run_key({"device": "cuda:0"}))
    assert other.load() == {}
    assert resume.ResumeStore(tmp_path / "p", store.key).load()["taylor"]["done"] == 2
