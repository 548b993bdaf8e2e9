"""Tiny random LLaMA models and texts built inside the tests; nothing touches the network."""

from __future__ import annotations

import os

# No model or dataset hub here: make hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
WIKI = SHARED / "data" / "wikitext-2"
PYTHON_CODE = SHARED / "data" / "python-code"
VOCAB = 320

_WORDS = ("the model prunes channels and heads under one budget while gates learn which units "
          "matter most for the loss of a small language model on plain text data").split()


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

# vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: the serving tests use this shape.
SERVING_SHAPE = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                     intermediate_size=192, num_hidden_layers=4)


# family -> (config class, model class): tiny random models of every supported family.
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


# Prepended to a script run with ``python -c``: importing grasp_deploy fails there, so what the
# script does works with stock transformers alone (as for a user without this package).
NO_GRASP = textwrap.dedent("""
    import importlib.abc, sys
    class NoGrasp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "grasp_deploy":
                raise ImportError("grasp_deploy must not be needed")
    sys.meta_path.insert(0, NoGrasp())
""")


def cmdline(proc: Path) -> bytes:
    """The command line of the process whose /proc entry is ``proc`` (empty once it is gone)."""
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def tiny_config(family: str = "llama", **overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0,
                  eos_token_id=1, pad_token_id=1)
    fields.update(overrides)
    return FAMILIES[family][0](**fields)


def tiny_model(seed: int = 0, family: str = "llama", **overrides):
    torch.manual_seed(seed)
    model = FAMILIES[family][1](tiny_config(family, **overrides)).eval()
    # Larger-than-default weights so that removing a unit changes the logits visibly; biases
    # (Qwen2's q/k/v, Llama's attention_bias) non-zero so that slicing them is tested too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.05)
    return model


def make_text(n_words: int = 6000, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    while n_words > 0:
        k = min(n_words, rng.randint(5, 15))
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(k)) + ".")
        n_words -= k
    return "\n".join(lines) + "\n"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([make_text(3000, seed=1)], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(directory: Path, seed: int = 0, family: str = "llama", **overrides) -> Path:
    tiny_model(seed, family, **overrides).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def save_tiny_portable(directory: Path, seed: int = 0, **overrides) -> Path:
    """``save_tiny`` with weights from NumPy's generator: the same bytes on every CPU (torch's
    ``normal_`` differs between its AVX2 and AVX-512 code), for outputs pinned across machines."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    save_tiny(directory, seed=seed, **overrides)
    path = directory / "model.safetensors"
    rng = np.random.default_rng(seed)
    weights = {name: torch.from_numpy(rng.normal(0.0, 0.08 if t.ndim == 2 else 0.05, t.shape)
                                      .astype(np.float32)) + (1.0 if "norm" in name else 0.0)
               for name, t in sorted(load_file(path).items())}
    save_file(weights, path, metadata={"format": "pt"})
    return directory


def write_tiny_gguf(path: Path, arch: str = "llama", layers: int = 2, split_count: int = 0,
                    seed: int = 0) -> Path:
    """A tiny model as llama.cpp writes it (GGUF v3, float32 tensors, a BPE tokenizer), which
    transformers converts back: hidden 64, FFN 96, 4 query / 2 KV heads."""
    import json

    import gguf
    import numpy as np

    data = json.loads(tiny_tokenizer().backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(data["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["merges"]]
    hidden, ffn, heads, kv, head_dim = 64, 96, 4, 2, 16
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    if split_count:
        w.add_uint16("split.count", split_count)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([1] * len(tokens))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.08).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(len(tokens), hidden))
    for i in range(layers):
        for name, shape in (("attn_q", (heads * head_dim, hidden)),
                            ("attn_k", (kv * head_dim, hidden)),
                            ("attn_v", (kv * head_dim, hidden)),
                            ("attn_output", (hidden, heads * head_dim)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
                            ("ffn_down", (hidden, ffn))):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny GQA model (3 layers, 4 query / 2 KV heads, FFN 96) with a tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(make_text())
    return path


def listing(directory: Path) -> list[str]:
    """Every path under ``directory``, to check that a failed command wrote nothing."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- a tiny dense model and its pruned checkpoint that vLLM on CPU can serve -------------------
# Distinct per-layer widths and KV heads (dense: 192 channels, 2 KV heads in each of 4 layers).
FFN_KEEP = (192, 150, 64, 97)
KV_KEEP = ((0, 1), (1,), (0,), (0, 1))


def serving_plan(model, ffn_keep=FFN_KEEP):
    """A hand-made plan over SERVING_SHAPE with uneven widths and non-trivial scales."""
    import numpy as np

    from grasp_deploy.core.plan import LayerPlan, Plan, SourceModel, budget_report
    from grasp_deploy.core.projection import UnitLayout
    from grasp_deploy.core.shape import ModelShape
    from grasp_deploy.sources import models

    shape = ModelShape.from_config(model.config)
    rng = np.random.default_rng(0)
    layers = []
    for i, (n_ffn, kv) in enumerate(zip(ffn_keep, KV_KEEP, strict=True)):
        ffn = tuple(sorted(rng.choice(192, n_ffn, replace=False).tolist()))
        # Compensation biases (as FLAP adds) on some layers, so serving covers them too.
        o_bias = tuple(float(x) for x in 0.1 * rng.standard_normal(128)) if i in (1, 2) else None
        down_bias = tuple(float(x) for x in 0.1 * rng.standard_normal(128)) if i == 2 else None
        layers.append(
            LayerPlan(
                ffn,
                kv,
                tuple(float(x) for x in 1 + 0.3 * rng.standard_normal(n_ffn)),
                tuple(float(x) for x in 1 + 0.3 * rng.standard_normal(len(kv))),
                o_bias,
                down_bias,
            )
        )
    layout = UnitLayout.from_shape(shape)
    mask = np.zeros(layout.num_units, dtype=bool)
    for i, lp in enumerate(layers):
        mask[layout.segment(i, "ffn").start + np.array(lp.ffn_keep)] = True
        mask[layout.segment(i, "kv").start + np.array(lp.kv_keep)] = True
    return Plan(method="grasp", settings={},
                source=SourceModel(str(model.name_or_path), models.fingerprint(model), shape),
                budget=budget_report(layout, mask, 0.3, models.count_parameters(model),
                                     added=2 * 4 * 128),
                layers=tuple(layers), calibration={"source": None}, seed=0)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """(dense dir, pruned checkpoint dir) in SERVING_SHAPE."""
    from grasp_deploy.jobs.export import ExportConfig, run_export
    from grasp_deploy.sources import models

    root = tmp_path_factory.mktemp("serving")
    dense = save_tiny(root / "dense", seed=7, **SERVING_SHAPE)
    model = models.load_model(models.resolve_source(str(dense)))
    plan_dir = root / "plan"
    plan_dir.mkdir()
    serving_plan(model).save(plan_dir)
    pruned = root / "pruned"
    run_export(ExportConfig(plan_dir=plan_dir, out=pruned))
    return dense, pruned


def random_plan(model, name, ratio=0.45, seed=0, scales=True, align=1):
    """A valid plan with uneven per-layer widths and non-trivial scales (no training needed);
    ``align``: every FFN width a multiple of it."""
    import numpy as np

    from grasp_deploy.core.plan import Plan, SourceModel, budget_report, layers_from_mask
    from grasp_deploy.core.projection import UnitLayout, project
    from grasp_deploy.core.shape import ModelShape
    from grasp_deploy.sources import models

    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape, align=align)
    rng = np.random.default_rng(seed)
    mask = project(rng.random(layout.num_units), layout, int((1 - ratio) * layout.total_cost()))
    gamma = (1 + 0.5 * np.tanh(rng.normal(size=layout.num_units))).astype(np.float32)
    return Plan(
        method="grasp",
        settings={},
        source=SourceModel(name, models.fingerprint(model), shape),
        budget=budget_report(layout, mask, ratio, models.count_parameters(model)),
        layers=layers_from_mask(layout, mask, gamma if scales else None),
        calibration={"source": None},
        seed=seed,
    )


def _greedy(client, served: str, ids: list[int], steps: int) -> tuple[list[int], list[dict]]:
    """vLLM's greedy tokens for prompt ``ids`` and its top-5 logprobs at each step."""
    choice = client.completions.create(
        model=served, prompt=ids, max_tokens=steps, temperature=0, logprobs=5,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True}).choices[0]
    return [int(t.split(":")[1]) for t in choice.logprobs.tokens], choice.logprobs.top_logprobs


def _next_logprobs(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].double(), -1)


def _top_gap(top: dict, lp: torch.Tensor) -> float:
    return max(abs(v - float(lp[int(t.split(":")[1])])) for t, v in top.items())


def vllm_near_parity(client, served: str, ckpt: Path, prompts: list[list[int]],
                     steps: int) -> tuple[float, float, int]:
    """Like ``vllm_parity`` where vLLM computes in lower precision than the fp32 reference
    (bf16 kernels): transformers follows vLLM's own tokens (teacher forcing), and returns the
    largest shortfall of vLLM's chosen token's logprob from transformers' best at any step (0
    where they agree), the largest |logprob difference| over vLLM's top-5, and the number of
    steps whose token differs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    shortfall, gap, differ = 0.0, 0.0, 0
    for ids in prompts:
        got, tops = _greedy(client, served, ids, steps)
        seq = list(ids)
        for token, top in zip(got, tops, strict=True):
            lp = _next_logprobs(model, seq)
            shortfall = max(shortfall, float(lp.max() - lp[token]))
            differ += int(lp.argmax()) != token
            gap = max(gap, _top_gap(top, lp))
            seq.append(token)
    return shortfall, gap, differ


def vllm_parity(client, served: str, ckpt: Path, prompts: list[list[int]], steps: int) -> float:
    """Greedy completions of ``prompts`` from a vLLM server (``client``, model ``served``)
    against transformers on ``ckpt`` (fp32, recomputed from scratch each step): asserts the
    tokens are equal and returns the largest |logprob difference| over vLLM's top-5 at every
    step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    gap = 0.0
    for ids in prompts:
        got, tops = _greedy(client, served, ids, steps)
        seq = list(ids)
        for top in tops:
            lp = _next_logprobs(model, seq)
            seq.append(int(lp.argmax()))
            gap = max(gap, _top_gap(top, lp))
        assert got == seq[len(ids):], (ids, got, seq[len(ids):])
    return gap
