"""What a load test sends: each request's prompt (token ids) and output length, seeded, so both
models of an A/B get exactly the same requests.

Kinds of workload:

- ``random``: random token ids (no text needed; the long-standing default).
- ``text``: windows of real text (any text source: ``file:PATH``, ``wikitext2``) tokenized by
  the dense model's tokenizer, each cut at a seeded random offset.
- ``prefix``: ``prefix_groups`` shared prefixes of ``prefix_len`` tokens; request *i* is prefix
  *i mod groups* followed by its own part of the drawn input length (what vLLM's prefix caching
  reuses: system prompts, few-shot examples, a shared document).
- ``chat``: multi-turn sessions of ``turns`` user messages (text, or random ids decoded);
  each turn goes to ``/v1/chat/completions`` with the whole history, the model's answers
  included, so prompts grow turn by turn (where a smaller KV cache per token shows).

Lengths are distributions (``Lengths``): ``N`` (every request), ``LO..HI`` (uniform integers)
or ``normal:MEAN,SD`` (rounded, clipped to [1, 2 x MEAN]).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import GraspError

KINDS = ("random", "text", "prefix", "chat")
LENGTH_FORMS = "N, LO..HI (uniform) or normal:MEAN,SD"


@dataclass(frozen=True)
class Lengths:
    """A distribution of token counts."""

    kind: str  # "fixed" | "uniform" | "normal"
    low: int
    high: int
    mean: float
    sd: float = 0.0

    @classmethod
    def parse(cls, text: str | int, flag: str = "--input-len") -> Lengths:
        spec = str(text).strip()
        try:
            if spec.startswith("normal:"):
                mean_s, sd_s = spec[len("normal:"):].split(",")
                mean, sd = float(mean_s), float(sd_s)
                if not (1 <= mean < 1e7 and 0 <= sd < 1e7):
                    raise ValueError
                return cls("normal", 1, max(1, round(2 * mean)), mean, sd)
            if ".." in spec:
                low, high = (int(part) for part in spec.split(".."))
                if not 1 <= low <= high:
                    raise ValueError
                return cls("uniform", low, high, (low + high) / 2)
            n = int(spec)
            if n < 1:
                raise ValueError
            return cls("fixed", n, n, float(n))
        except ValueError:
            raise GraspError(f"{flag} {spec!r} is not a token count: use {LENGTH_FORMS}, "
                             "with positive whole numbers (LO <= HI)") from None

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return min(self.high, max(self.low, round(rng.gauss(self.mean, self.sd))))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(self.low)
        if self.kind == "uniform":
            return f"{self.low}..{self.high} (uniform)"
        return f"normal mean {self.mean:g} sd {self.sd:g} (clipped to {self.low}..{self.high})"


@dataclass(frozen=True)
class Workload:
    kind: str = "random"
    input_len: Lengths = Lengths.parse(128)
    output_len: Lengths = Lengths.parse(64, "--output-len")
    source: str | None = None  # text source spec, for text (and prefix: its prefixes)
    prefix_len: int = 0
    prefix_groups: int = 1
    turns: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GraspError(f"--workload {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.kind == "text" and not self.source:
            raise GraspError("--workload text needs --prompts SOURCE (file:PATH or wikitext2)")
        if self.kind != "prefix" and (self.prefix_len or self.prefix_groups != 1):
            raise GraspError("--prefix-len and --prefix-groups belong to --workload prefix")
        if self.kind == "prefix" and (self.prefix_len < 1 or self.prefix_groups < 1):
            raise GraspError(f"--workload prefix needs --prefix-len >= 1 and --prefix-groups "
                             f">= 1 (got {self.prefix_len} and {self.prefix_groups})")
        if self.kind != "chat" and self.turns != 1:
            raise GraspError("--turns belongs to --workload chat")
        if self.turns < 1:
            raise GraspError(f"--turns {self.turns} must be at least 1")
        if self.output_len.low < 2:
            raise GraspError(f"--output-len {self.output_len} can draw fewer than 2 tokens; "
                             "TPOT needs at least 2")

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Workload:
        """The workload of a bench config, or of its copy in a results file (older files
        have no workload fields: random ids)."""
        return cls(fields.get("workload", "random"),
                   Lengths.parse(fields["input_len"], "--input-len"),
                   Lengths.parse(fields["output_len"], "--output-len"), fields.get("prompts"),
                   fields.get("prefix_len", 0), fields.get("prefix_groups", 1),
                   fields.get("turns", 1))

    @property
    def longest(self) -> int:
        """The most tokens one request can hold (prompt and output; a chat's last turn holds
        every earlier message and answer, not counting the chat template's own tokens)."""
        return (self.prefix_len + self.turns * (self.input_len.high + self.output_len.high))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"kind": self.kind, "input_len": str(self.input_len),
                                 "output_len": str(self.output_len)}
        if self.source:
            facts["source"] = self.source
        if self.kind == "prefix":
            facts.update(prefix_len=self.prefix_len, prefix_groups=self.prefix_groups)
        if self.kind == "chat":
            facts["turns"] = self.turns
        return facts


def random_ids(rng: random.Random, length: int, vocab: int) -> list[int]:
    return [rng.randrange(10, vocab - 10) for _ in range(length)]


def build(workload: Workload, n: int, seed: int, vocab: int,
          text_ids: Callable[[str], Sequence[int]] | None = None,
          decode: Callable[[list[int]], str] | None = None) -> list[dict[str, Any]]:
    """``n`` requests ``{"prompt": ids, "max_tokens": m}`` (chat: ``n`` sessions
    ``{"turns": [{"content": text, "max_tokens": m}, ...]}``, the text from ``decode``);
    ``text_ids(source)`` gives the source's token ids (called once, only when the workload
    reads text)."""
    rng = random.Random(seed)
    lengths = random.Random(seed + 1)
    tokens: Sequence[int] | None = None
    if workload.source:
        if text_ids is None:
            raise ValueError("a text workload needs text_ids")
        tokens = text_ids(workload.source)
        need = max(workload.input_len.high, workload.prefix_len) + 1
        if len(tokens) < need:
            raise GraspError(f"--prompts {workload.source} has {len(tokens):,} tokens; requests "
                             f"of up to {need - 1:,} need more text, or shorter --input-len")

    def piece(length: int) -> list[int]:
        if tokens is None:
            return random_ids(rng, length, vocab)
        start = rng.randrange(0, len(tokens) - length)
        return list(tokens[start:start + length])

    if workload.kind == "chat":
        if decode is None:
            raise ValueError("a chat workload needs decode")
        return [{"turns": [{"content": decode(piece(workload.input_len.draw(lengths))),
                            "max_tokens": workload.output_len.draw(lengths)}
                           for _ in range(workload.turns)]} for _ in range(n)]
    prefixes = [piece(workload.prefix_len) for _ in range(workload.prefix_groups)]
    requests = []
    for i in range(n):
        body = piece(workload.input_len.draw(lengths))
        prompt = (prefixes[i % len(prefixes)] + body) if workload.kind == "prefix" else body
        requests.append({"prompt": prompt, "max_tokens": workload.output_len.draw(lengths)})
    return requests


def vllm_dataset(requests: Sequence[dict[str, Any]], decode: Callable[[list[int]], str],
                 path: Path) -> Path:
    """The same requests as vLLM ``bench serve``'s custom dataset (JSONL of prompt text and
    output_tokens), for a cross-check with ``--dataset-name custom --dataset-path PATH``."""
    if any("turns" in r for r in requests):
        raise GraspError("chat sessions have no single-prompt form for vLLM bench serve")
    with path.open("w") as f:
        for r in requests:
            f.write(json.dumps({"prompt": decode(r["prompt"]),
                                "output_tokens": r["max_tokens"]}) + "\n")
    return path


def describe(cfg: dict[str, Any]) -> str:
    """The requests in words, from a results file's config (older files: random ids)."""
    spec = Workload.from_fields(cfg)
    what = f"text from {spec.source}" if spec.source else "random token ids"
    if spec.kind == "prefix":
        what = (f"{spec.prefix_groups} shared prefix(es) of {spec.prefix_len} tokens ({what}), "
                "then each prompt's own")
    if spec.kind == "chat":
        what = f"chat sessions of {spec.turns} turns, each with the history so far ({what})"
    return f"{what}, input {spec.input_len} / output {spec.output_len} tokens"
