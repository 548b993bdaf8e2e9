"""Dense vs pruned prefill and decode throughput with transformers (no vLLM), for GPU machines.

A Llama-2-7B-shaped model with random weights (bf16) and a 50% plan over it (random scores
projected onto the budget, so layers get uneven widths; ``--align 128`` keeps FFN widths
kernel-friendly), materialised with the exporter into GraspLlamaForCausalLM. Measures prefill
tokens/s (batch 1 x --prefill-len) and decode tokens/s (greedy, KV cache, --decode-batch x
--decode-len new tokens), dense and pruned in the same run, plus KV bytes per token. Writes
``bench/results/gpu-<name>.json`` and ``.md``.

    python -m bench.gpu_transformers --shape 7b --device cuda --name llama2-7b-r50
    python -m bench.gpu_transformers --shape tiny --device cpu --name smoke   # a quick check
"""

from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np
import torch

from bench import harness
from grasp_deploy.checkpoint.write import pruned_config
from grasp_deploy.core.plan import Plan, SourceModel, budget_report, layers_from_mask
from grasp_deploy.core.projection import UnitLayout, project
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.core.slicing import materialize
from grasp_deploy.sources.models import count_parameters, fingerprint

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
               max_position_embeddings=4096),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=8, vocab_size=1000,
                 max_position_embeddings=1024),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def measure(model, device, args) -> dict[str, float]:
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, args.prefill_len), device=device)
    prefill = timed(lambda: model(ids), device, args.repeats)
    prompt = torch.randint(0, vocab, (args.decode_batch, args.decode_prompt), device=device)

    def decode():
        model.generate(prompt, max_new_tokens=args.decode_len, min_new_tokens=args.decode_len,
                       do_sample=False, use_cache=True, pad_token_id=0)

    total = timed(decode, device, args.repeats)
    # Decode rate: generated tokens over the time beyond one prompt prefill.
    pre = timed(lambda: model(prompt), device, args.repeats)
    return {"prefill_tokens_per_s": args.prefill_len / prefill,
            "decode_tokens_per_s": args.decode_batch * args.decode_len / max(total - pre, 1e-9),
            "prefill_seconds": prefill, "decode_seconds": total}


def build_pruned(config, dense, plan: Plan, device: torch.device, dtype: torch.dtype):
    """The exporter's tensors in GraspLlamaForCausalLM, on ``device`` (built on meta, its RoPE
    buffers would stay there)."""
    from grasp_deploy.checkpoint.hf.configuration_grasp import GraspLlamaConfig
    from grasp_deploy.checkpoint.hf.modeling_grasp import GraspLlamaForCausalLM

    with torch.device(device):
        pruned = GraspLlamaForCausalLM(GraspLlamaConfig(**pruned_config(config, plan, dtype)))
    pruned = pruned.to(dtype)
    pruned.load_state_dict(materialize(dense, plan, dtype), strict=False)
    pruned.tie_weights()
    return pruned.eval()


def main() -> None:
    ap = harness.parser(__doc__, ".")
    ap.add_argument("--shape", choices=list(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--align", type=int, default=1)
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--decode-batch", type=int, default=16)
    ap.add_argument("--decode-prompt", type=int, default=128)
    ap.add_argument("--decode-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="llama2-7b-r50")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device, dtype = torch.device(args.device), torch.bfloat16
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], head_dim=SHAPES[args.shape]["hidden_size"]
                         // SHAPES[args.shape]["num_attention_heads"])
    with torch.device(device):
        dense = LlamaForCausalLM(config).to(dtype).eval()
    shape = ModelShape.from_config(config)
    layout = UnitLayout.from_shape(shape, align=args.align)
    mask = project(np.random.default_rng(0).random(layout.num_units), layout,
                   math.floor((1 - args.ratio) * layout.total_cost()))
    plan = Plan(method="random-scores", settings={"align": args.align},
                source=SourceModel(f"random {args.shape}", fingerprint(dense), shape),
                budget=budget_report(layout, mask, args.ratio, count_parameters(dense)),
                layers=layers_from_mask(layout, mask), calibration={"source": None}, seed=0)
    pruned = build_pruned(config, dense, plan, device, dtype)
    rows = {}
    for label, model in (("dense", dense), ("pruned", pruned)):
        rows[label] = {"parameters": count_parameters(model), **measure(model, device, args)}
        print(label, rows[label], flush=True)
    heads = [len(layer.kv_keep) for layer in plan.layers]
    result = {
        "name": args.name, "shape": args.shape, "ratio": args.ratio, "align": args.align,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else harness.stamp()["machine"].get("Model name", "CPU"),
        "dtype": "bfloat16", "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
        "ratios": {k: rows["pruned"][k] / rows["dense"][k]
                   for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "parameters")},
        "kv_bytes_per_token": {"dense": shape.kv_bytes_per_token(dtype_bytes=2),
                               "pruned": shape.kv_bytes_per_token(heads, 2)},
    }
    lines = [f"# {args.name}: dense vs pruned with transformers on {result['device']}", "",
             "| | dense | pruned | pruned / dense |", "|---|---:|---:|---:|"]
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "parameters"):
        lines.append(f"| {key} | {rows['dense'][key]:,.1f} | {rows['pruned'][key]:,.1f} | "
                     f"x{result['ratios'][key]:.3f} |")
    path = harness.write(args.out, f"gpu-{args.name}", result, "\n".join(lines), args.note)
    print(json.dumps(result["ratios"]), "->", path)


if __name__ == "__main__":
    main()
