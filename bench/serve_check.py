"""Serve check: the pruned checkpoint and the dense model through vLLM, same flags and KV memory.

Records each server's KV capacity (tokens, from /metrics) against the ratio predicted from the
per-layer KV heads, answers a chat completion, and compares vLLM's greedy tokens for 3 prompts
with transformers on the same checkpoint. Writes ``bench/results/<name>.json`` / ``.md``.

    .venv/bin/python -m bench.serve_check --pruned runs/export-smollm2-r30 --name serve-smollm2-r30
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import harness
from grasp_deploy.checkpoint.read import read_checkpoint
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port
from grasp_deploy.sources import models

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Pruning a neural network means"]


def greedy_hf(path: str, prompts: list[list[int]], steps: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False,
                                 min_new_tokens=steps)
            out.append(gen[0, len(ids):].tolist())
    return out


def serve_both(args, prompts: list[list[int]]) -> dict[str, dict]:
    """Each server in turn: its KV capacity, its greedy tokens for ``prompts`` and a chat turn."""
    from openai import OpenAI

    dense_path = models.ensure_available(models.resolve_source(args.dense))
    rows = {}
    for label, path in (("dense", dense_path), ("pruned", args.pruned)):
        cfg = ServerConfig(model=path, served_name=label, port=free_port(), dtype="float32",
                           enforce_eager=True, kv_cache_gb=args.kv_cache_gb,
                           max_model_len=args.max_model_len)
        t0 = time.perf_counter()
        with VllmServer(cfg, say=print) as server:
            startup = time.perf_counter() - t0
            client = OpenAI(base_url=server.url + "/v1", api_key="none")
            greedy = []
            for ids in prompts:
                r = client.completions.create(model=label, prompt=ids, max_tokens=args.steps,
                                              temperature=0, extra_body={"ignore_eos": True,
                                                                         "return_token_ids": True})
                greedy.append(list(r.choices[0].token_ids))
            chat = client.chat.completions.create(
                model=label, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
            rows[label] = {"path": path, "kv": server.kv_capacity(), "startup_seconds": startup,
                           "vllm_greedy": greedy, "chat": chat.choices[0].message.content}
    return rows


def main() -> None:
    ap = harness.parser(__doc__, ".")
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--name", default="serve-smollm2-r30")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.pruned)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    rows = serve_both(args, prompts)
    rows["pruned"]["hf_greedy"] = greedy_hf(args.pruned, prompts, args.steps)
    rows["pruned"]["greedy_match"] = [
        a == b
        for a, b in zip(rows["pruned"]["vllm_greedy"], rows["pruned"]["hf_greedy"], strict=True)
    ]
    info = read_checkpoint(Path(args.pruned))
    dense_heads = info.manifest["dense_layer"]["num_key_value_heads"] * len(info.shape.layers)
    pruned_heads = sum(layer.num_key_value_heads for layer in info.shape.layers)
    measured = rows["pruned"]["kv"]["kv_cache_tokens"] / rows["dense"]["kv"]["kv_cache_tokens"]
    k = {"dense": rows["dense"]["kv"]["kv_cache_tokens"],
         "pruned": rows["pruned"]["kv"]["kv_cache_tokens"],
         "measured_ratio": measured, "predicted_ratio": dense_heads / pruned_heads}
    result = {"name": args.name, "kv_cache_gb": args.kv_cache_gb, "dtype": "float32",
              "kv_tokens": k, "rows": rows, "prompts": PROMPTS}
    md = [f"# {args.name}: dense vs pruned through vLLM (CPU, float32, {args.kv_cache_gb} GiB "
          "KV)", "", "| | dense | pruned | pruned/dense | predicted (KV heads) |",
          "|---|---:|---:|---:|---:|",
          f"| KV cache tokens | {int(k['dense']):,} | {int(k['pruned']):,} | {measured:.3f} | "
          f"{k['predicted_ratio']:.3f} |", "",
          f"Greedy tokens, vLLM vs transformers on the pruned checkpoint ({args.steps} tokens "
          f"each): {sum(rows['pruned']['greedy_match'])}/{len(PROMPTS)} prompts identical.", "",
          f"Chat completion (pruned): {rows['pruned']['chat']!r}"]
    print(harness.write(args.out, args.name, result, "\n".join(md), args.note).read_text())


if __name__ == "__main__":
    main()
