"""Peak memory of pruning against model depth: StructPrune (one layer at a time) vs GRASPrune
(the whole model with gradients).

Builds random Llama models of the same width and several depths (safetensors, a small BPE
tokenizer trained on this repository's README, which is also the calibration text: memory does
not depend on what the text says), then runs ``prune`` for each (method, depth) in a fresh
child process and records that process's peak RSS (ru_maxrss) and, on CUDA, peak allocated
CUDA memory. Each child does the whole job: config, tokenizer, calibration, method, plan.

    python -m bench.memory_scaling --layers 4,8,16,32 --out bench/results/memory-scaling-cpu
    python -m bench.memory_scaling --shape llama2-7b --layers 32 --device cuda \
        --num-samples 32 --seq-len 256 --out bench/results/memory-scaling-7b-gpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import harness
from bench.harness import ROOT

SHAPES = {  # same width at every depth; vocab small so that the layers dominate
    "wide-tiny": dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12,
                      num_key_value_heads=4, head_dim=64, vocab_size=4096),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                      num_key_value_heads=32, head_dim=128, vocab_size=32000),
}


def build_model(directory: Path, shape: str, layers: int, dtype: torch.dtype) -> Path:
    """A random Llama of ``shape`` with ``layers`` layers, written tensor by tensor (a 7B
    model is never whole in memory here either), plus a tokenizer of its vocabulary."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    fields = SHAPES[shape]
    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
                         torch_dtype=str(dtype).removeprefix("torch."), **fields)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    d, f, v = fields["hidden_size"], fields["intermediate_size"], fields["vocab_size"]
    q, kv = (
        fields["num_attention_heads"] * fields["head_dim"],
        fields["num_key_value_heads"] * fields["head_dim"],
    )
    gen = torch.Generator().manual_seed(layers)

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * 0.02).to(dtype)

    save_file(
        {
            "model.embed_tokens.weight": rand(v, d),
            "model.norm.weight": torch.ones(d, dtype=dtype),
            "lm_head.weight": rand(v, d),
        },
        str(directory / "model-outer.safetensors"),
    )
    weight_map = dict.fromkeys(("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
                               "model-outer.safetensors")
    for i in range(layers):
        p, name = f"model.layers.{i}.", f"model-layer{i:03d}.safetensors"
        tensors = {
            p + "self_attn.q_proj.weight": rand(q, d),
            p + "self_attn.k_proj.weight": rand(kv, d),
            p + "self_attn.v_proj.weight": rand(kv, d),
            p + "self_attn.o_proj.weight": rand(d, q),
            p + "mlp.gate_proj.weight": rand(f, d),
            p + "mlp.up_proj.weight": rand(f, d),
            p + "mlp.down_proj.weight": rand(d, f),
            p + "input_layernorm.weight": torch.ones(d, dtype=dtype),
            p + "post_attention_layernorm.weight": torch.ones(d, dtype=dtype),
        }
        save_file(tensors, str(directory / name))
        weight_map.update(dict.fromkeys(tensors, name))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    _tokenizer(v).save_pretrained(directory)
    return directory


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 4096), special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([(ROOT / "README.md").read_text()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def child(args: argparse.Namespace) -> None:
    """One prune in this process; its peak memory to ``args.result``."""
    from grasp_deploy.jobs.prune import PruneConfig, run_prune

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_prune(PruneConfig(prune_ratio=0.5, out=Path(args.plan), model=str(args.model),
                          method=args.method, calib=f"file:{ROOT / 'README.md'}",
                          num_samples=args.num_samples, seq_len=args.seq_len, device=args.device,
                          dtype=args.dtype, progress=False, force=True,
                          method_settings=_settings(args.method, args.epochs)))
    cuda = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    Path(args.result).write_text(json.dumps({
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": None if cuda is None else cuda / 2**20,
        "seconds": time.perf_counter() - t0}))


def _settings(method: str, epochs: int):
    from grasp_deploy.methods import GraspSettings

    return GraspSettings(epochs=epochs) if method == "grasp" else None


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--shape", default="wide-tiny", choices=list(SHAPES))
    ap.add_argument("--layers", default="4,8,16,32")
    ap.add_argument("--methods", default="structprune,grasp")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--model", "--method", "--plan", "--result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in [int(x) for x in args.layers.split(",")]:
            model = build_model(Path(tmp) / f"L{layers}", args.shape, layers,
                                torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
            for method in args.methods.split(","):
                row = {"layers": layers, "method": method, **_in_child(args, model, method,
                                                                        Path(tmp))}
                print(json.dumps(row), flush=True)
                rows.append(row)
            _rmtree(model)
    _report(args, rows)


def _in_child(args, model: Path, method: str, tmp: Path) -> dict:
    """One prune in a fresh process (its peak memory is its own); an error is a result too."""
    result = tmp / "result.json"
    cmd = [sys.executable, "-m", "bench.memory_scaling", "--child", "--model", str(model),
           "--method", method, "--plan", str(tmp / "plan"), "--result", str(result),
           "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
           "--epochs", str(args.epochs), "--device", args.device, "--dtype", args.dtype,
           "--out", str(args.out)]
    result.unlink(missing_ok=True)
    done = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if done.returncode == 0:
        return json.loads(result.read_text())
    print(done.stderr[-3000:], file=sys.stderr)  # e.g. out of memory
    return {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr else "?"}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _report(args, rows: list[dict]) -> None:
    meta = {"shape": {"name": args.shape, **SHAPES[args.shape]},
            "calibration": f"{args.num_samples} x {args.seq_len} tokens of README.md",
            "device": args.device, "dtype": args.dtype}
    methods = sorted({r["method"] for r in rows}, reverse=True)
    depths = sorted({r["layers"] for r in rows})
    cell = {(r["method"], r["layers"]): r for r in rows if "error" not in r}
    key = "peak_cuda_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    lines = [f"# Peak memory of prune vs depth ({args.shape}, {args.device}, dtype {args.dtype})",
             "", f"Calibration: {meta['calibration']}.", "",
             "| layers | " + " | ".join(f"{m} {key} | {m} s" for m in methods) + " |",
             "|---:|" + "---:|---:|" * len(methods)]
    for d in depths:
        lines.append(f"| {d} | " + " | ".join(
            f"{cell[(m, d)][key]:.0f} | {cell[(m, d)]['seconds']:.1f}" if (m, d) in cell
            else "- | -" for m in methods) + " |")
    for m in methods:
        vals = [cell[(m, d)][key] for d in depths if (m, d) in cell]
        if len(vals) > 1:
            lines.append(f"\n{m}: max/min over depths = {max(vals) / min(vals):.3f}")
    lines += [f"\n{r['method']} at {r['layers']} layers failed: {r['error']}"
              for r in rows if "error" in r]
    harness.write(args.out, "memory", {**meta, "rows": rows}, "\n".join(lines), args.note)
    _plot(args.out / "memory.png", rows, methods, key)


def _plot(path: Path, rows, methods, key) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine may lack it: plot from memory.json elsewhere
        print("matplotlib is missing: no plot", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in methods:
        pts = sorted((r["layers"], r[key]) for r in rows if r["method"] == m and "error" not in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("decoder layers (same width)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
