import json

import pytest
import torch

from grasp_deploy.core.errors import GraspError
from grasp_deploy.sources import text as data

from conftest import PYTHON_CODE, make_text, tiny_model, tiny_tokenizer


def test_file_formats_give_the_same_text(tmp_path):
    docs = ["first document.\nline two", "second document"]
    (tmp_path / "a.txt").write_text("\r\n".join(docs))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    txt = data.load_text(data.parse_source(f"file:{tmp_path / 'a.txt'}"))
    assert "\r" not in txt and txt.startswith("first document.\nline two")
    for name in ("a.jsonl", "a.parquet"):
        assert data.load_text(data.parse_source(f"file:{tmp_path / name}")) == "\n\n".join(docs)


def test_bad_sources(tmp_path):
    with pytest.raises(GraspError, match="unknown source"):
        data.parse_source("hf:foo")
    with pytest.raises(GraspError, match="no such file"):
        data.parse_source(f"file:{tmp_path / 'nope.txt'}")
    with pytest.raises(GraspError, match="only serves calibration"):
        data.parse_source("self", allow_self=False, flag="--data")
    with pytest.raises(GraspError, match="unknown split"):
        data.parse_source("wikitext2:dev")
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(GraspError, match="'text' field"):
        data.load_text(data.parse_source(f"file:{tmp_path / 'bad.jsonl'}"))
    assert data.parse_source("wikitext2").split == "train"
    assert data.parse_source("wikitext2", default_split="test").split == "test"


def test_blocks_are_disjoint_seeded_and_checked():
    ids = torch.arange(1000)
    a, b = data.cut_blocks(ids, 50, (8, 6), seed=1)
    assert a.shape == (8, 50) and b.shape == (6, 50)
    starts = set(a[:, 0].tolist()) | set(b[:, 0].tolist())
    assert len(starts) == 14 and all(s % 50 == 0 for s in starts)
    a2, _ = data.cut_blocks(ids, 50, (8, 6), seed=1)
    a3, _ = data.cut_blocks(ids, 50, (8, 6), seed=2)
    assert torch.equal(a, a2) and not torch.equal(a, a3)
    with pytest.raises(GraspError, match="20 blocks of 50, but 21 are needed"):
        data.cut_blocks(ids, 50, (15, 6), seed=0)


def test_tokenize_whole_text_without_truncation():
    tok = tiny_tokenizer()
    tok.model_max_length = 16
    ids = data.tokenize(tok, make_text(500))
    assert ids.numel() > 16 and tok.model_max_length == 16


def test_self_sampling_is_seeded_and_full_length():
    model, tok = tiny_model(), tiny_tokenizer()
    a = data.sample_from_model(model, tok, 5, 12, seed=4, batch_size=2)
    b = data.sample_from_model(model, tok, 5, 12, seed=4, batch_size=2)
    assert a.shape == (5, 12) and torch.equal(a, b)
    assert torch.all(a[:, 0] == tok.bos_token_id)
    assert len(set(map(tuple, a.tolist()))) > 1


@pytest.mark.skipif(not (PYTHON_CODE / "stdlib-a-l.txt").is_file(),
                    reason="../shared/data/python-code is absent (the shared data folder)")
def test_the_shared_python_code_calibrates_and_evaluates_as_it_is(tiny_dir, tmp_path):
    """Code is a second domain: calibrate on stdlib-a-l.txt, evaluate on stdlib-m-z.txt, read
    whole as UTF-8 (its protocol is WikiText's), through the same file: sources."""
    from click.testing import CliRunner

    from grasp_deploy.cli import main

    calib, test = PYTHON_CODE / "stdlib-a-l.txt", PYTHON_CODE / "stdlib-m-z.txt"
    assert "# ===== abc.py =====" in data.load_text(data.parse_source(f"file:{calib}"))
    r = CliRunner().invoke(main, ["prune", str(tiny_dir), "-r", "0.3", "--method", "wanda-sp",
                                  "--calib", f"file:{calib}", "-n", "4", "-l", "64",
                                  "--out", str(tmp_path / "plan"), "-q"])
    assert r.exit_code == 0, r.output
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["calibration"]["source"] == f"file:{calib}"
    r = CliRunner().invoke(main, ["eval", str(tiny_dir), "--plan", str(tmp_path / "plan"),
                                  "--data", f"file:{test}", "--seq-len", "64",
                                  "--max-windows", "3", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["windows"] == 3 and result["perplexity"] > 1
