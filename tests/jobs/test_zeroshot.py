"""Zero-shot tasks through lm-eval (``eval --tasks``): a local multiple-choice task on the tiny
pruned checkpoint, scored against our own log-likelihood arithmetic, and the errors."""

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.errors import GraspError
from grasp_deploy.jobs.zeroshot import TasksConfig, _hub_unreachable, check_tasks, parse_tasks
from grasp_deploy.sources import models

TASK_YAML = """\
task: grasp_toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_parse_and_check_tasks():
    assert parse_tasks(" hellaswag, arc_easy,,") == ("hellaswag", "arc_easy")
    check_tasks(("arc_easy",), ["arc_easy", "arc_challenge"])
    with pytest.raises(
        GraspError, match=r"'arc_esy' is not an lm-eval task; did you mean arc_easy"
    ):
        check_tasks(("arc_esy",), ["arc_easy", "arc_challenge"])
    with pytest.raises(GraspError, match="--tasks is empty"):
        TasksConfig(model="m", tasks=parse_tasks(" , "))
    with pytest.raises(GraspError, match="--limit 0"):
        TasksConfig(model="m", tasks=("a",), limit=0)


def test_download_failures_are_told_apart_from_bugs():
    try:
        try:
            raise FileNotFoundError("Dataset allenai/ai2_arc is not cached")
        except FileNotFoundError as inner:
            raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub") from inner
    except ConnectionError as err:
        assert _hub_unreachable(err)
    assert not _hub_unreachable(ValueError("a bug"))
    assert not _hub_unreachable(KeyError("doc_to_text"))


def test_missing_lm_eval_is_one_line_with_the_install_command(monkeypatch, tiny_dir):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    r = invoke("eval", tiny_dir, "--tasks", "hellaswag")
    assert r.exit_code == 2
    assert "pip install 'grasp-deploy[zeroshot]'" in r.output


def test_task_options_without_tasks_are_refused(tiny_dir):
    r = invoke("eval", tiny_dir, "--limit", 3)
    assert r.exit_code == 2 and "apply to --tasks" in r.output


def choice_logprob(model, tokenizer, context: str, continuation: str) -> float:
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    n_ctx = len(tokenizer(context, add_special_tokens=False).input_ids)
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.float(), dim=-1)[0]
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


@pytest.mark.slow
def test_local_task_on_a_pruned_checkpoint_matches_hand_scoring(checkpoints, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is in the test extras; pip install -e '.[test]'")
    _, pruned = checkpoints
    source = models.resolve_source(str(pruned))
    model = models.load_model(source)
    tokenizer = models.load_tokenizer(source)
    words = ["cat", "tree", "river", "stone", "cloud", "bread", "lamp", "horse", "rain", "glass"]
    docs = []
    for i in range(8):
        question = f"the {words[i]} and the {words[(3 * i + 1) % 10]} went"
        choices = [words[(i + k) % 10] for k in (2, 4, 6, 8)]
        scores = [choice_logprob(model, tokenizer, question, " " + c) for c in choices]
        best = max(range(4), key=scores.__getitem__)
        # Half the labels agree with the model's choice and half do not: accuracy 0.5 exactly.
        docs.append({"question": question, "choices": choices,
                     "label": best if i % 2 == 0 else (best + 1) % 4})
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(TASK_YAML.format(data=data))
    r = invoke("eval", pruned, "--tasks", "grasp_toy_mc", "--include-path", tasks,
               "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # progress bars go to stderr
    assert out["tasks"]["grasp_toy_mc"]["acc"] == pytest.approx(0.5)
    r = invoke("eval", pruned, "--tasks", "grasp_toy_mc", "--include-path", tasks, "--limit", 2,
               "--dtype", "float32")
    assert r.exit_code == 0, r.output
    assert "first 2 examples per task" in r.output and "grasp_toy_mc" in r.output
    assert "acc 0.5000" in r.output  # doc 0 agrees with the model, doc 1 does not


@pytest.mark.slow
def test_hub_task_offline_is_a_clear_error(tiny_dir, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is in the test extras; pip install -e '.[test]'")
    # Offline whatever network this machine has: the libraries read these flags at import.
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    r = invoke("eval", tiny_dir, "--tasks", "arc_easy", "--limit", 2, "--dtype", "float32")
    assert r.exit_code == 2, r.output
    assert "could not be fetched" in r.output and "dataset hub" in r.output
    r = invoke("eval", tiny_dir, "--tasks", "arc_esy", "--dtype", "float32")
    assert r.exit_code == 2 and "did you mean arc_easy" in r.output
