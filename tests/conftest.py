"""Tiny random LLaMA models and texts built inside the tests; nothing touches the network."""

from __future__ import annotations

import os

# No model or dataset hub here: make hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[2] / "shared"
WIKI = SHARED / "data" / "wikitext-2"
VOCAB = 320

_WORDS = ("the model prunes channels and heads under one budget while gates learn which units "
          "matter most for the loss of a small language model on plain text data").split()


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

# vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: the serving tests use this shape.
SERVING_SHAPE = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                     intermediate_size=192, num_hidden_layers=4)


def tiny_config(**overrides) -> LlamaConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0,
                  eos_token_id=1, pad_token_id=1)
    fields.update(overrides)
    return LlamaConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    # Larger-than-default weights so that removing a unit changes the logits visibly.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
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


def save_tiny(directory: Path, seed: int = 0, **overrides) -> Path:
    tiny_model(seed, **overrides).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


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
