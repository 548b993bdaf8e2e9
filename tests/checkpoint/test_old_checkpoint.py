"""A checkpoint exported before one remote-code pair served every family still loads, verifies
and generates as before.

``data/four-file-llama`` was written by the export of commit 1e08d7a (with
``configuration_grasp_llama.py`` and ``modeling_grasp_llama.py``) from the model that
``save_tiny_portable(DIR, seed=5, num_hidden_layers=2)`` builds, pruned by
``prune DIR -r 0.4 --method magnitude`` and exported with ``--dtype bfloat16``. Today's export
of the same plan has equal tensors and generates the same tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grasp_deploy.checkpoint.read import inspect_checkpoint
from grasp_deploy.cli import main

from conftest import save_tiny_portable

OLD = Path(__file__).with_name("data") / "four-file-llama"


def _greedy(ckpt: Path) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True,
                                                 dtype=torch.float32).eval()
    ids = torch.tensor([[0, 17, 93, 5, 211]])
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=1)
    return out[0, ids.shape[1]:].tolist()


def test_a_four_file_checkpoint_loads_and_generates_the_same_tokens(tmp_path):
    old = Path(shutil.copytree(OLD, tmp_path / "old"))
    assert sorted(p.name for p in old.glob("*.py")) == ["configuration_grasp_llama.py",
                                                        "modeling_grasp_llama.py"]
    assert inspect_checkpoint(old, verify=True)["verified_sha256"]

    src = save_tiny_portable(tmp_path / "model", seed=5, num_hidden_layers=2)
    for args in (["prune", src, "-r", "0.4", "--method", "magnitude", "--out",
                  tmp_path / "plan", "-q"],
                 ["export", src, tmp_path / "plan", "--out", tmp_path / "new",
                  "--dtype", "bfloat16"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    new = tmp_path / "new"
    assert sorted(p.name for p in new.glob("*.py")) == ["configuration_grasp.py",
                                                        "modeling_grasp.py"]
    want, got = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    tokens = _greedy(old)
    assert len(tokens) == 12 and tokens == _greedy(new)
