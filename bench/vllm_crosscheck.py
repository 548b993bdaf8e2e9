"""Independent cross-check: our locust measurement vs vLLM's own serving benchmark
(``vllm.benchmarks.serve``) against the same server, same concurrency, lengths and count.

For each model (dense, pruned): start the server through the launcher, warm up, run ours
(closed loop), then vLLM's (``--max-concurrency``, random dataset, ``--ignore-eos``), and
compare output throughput, median TTFT and median TPOT. Writes ``bench/results/<name>.json/md``.

    .venv/bin/python -m bench.vllm_crosscheck --pruned runs/export-smollm2-r30 \
        --concurrency 4 --requests 32 --name vllm-crosscheck-smollm2-r30
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import harness
from grasp_deploy.loadtest.ab import read_records, run_locust, summarize_level
from grasp_deploy.loadtest.config import BenchConfig, make_prompts
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port
from grasp_deploy.sources import models

VLLM_BENCH = ("import sys\n"
              "from vllm.benchmarks.serve import add_cli_args, main\n"
              "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")
KEYS = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "request_throughput")


def vllm_bench(url: str, name: str, tokenizer: str, concurrency: int, n: int, input_len: int,
               output_len: int, out_dir: Path) -> tuple[dict, list[str]]:
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model",
            name, "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len",
            str(input_len), "--random-output-len", str(output_len), "--random-range-ratio", "0",
            "--num-prompts", str(n), "--max-concurrency", str(concurrency), "--ignore-eos",
            "--seed", "0", "--save-result", "--result-dir", str(out_dir), "--result-filename",
            f"{name}.json"]
    done = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        sys.exit(f"vllm bench failed:\n{done.stderr[-3000:]}")
    return json.loads((out_dir / f"{name}.json").read_text()), args


def measure(args, dense: str, work: Path) -> tuple[dict, list[str]]:
    """Per model: ours, then vLLM's benchmark, on one server."""
    cfg = BenchConfig(pruned=args.pruned, dense=dense, out=work, concurrency=(args.concurrency,),
                      requests=args.requests, input_len=args.input_len, output_len=args.output_len)
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps(make_prompts(args.requests + 4, args.input_len, 49152 - 20, 0)))
    rows, vllm_cmd = {}, []
    for label, path in (("dense", dense), ("pruned", args.pruned)):
        server_cfg = ServerConfig(model=path, served_name=label, port=free_port(), dtype="float32",
                                  kv_cache_gb=args.kv_cache_gb, max_model_len=2048,
                                  enforce_eager=True)
        with VllmServer(server_cfg, say=print) as server:
            run_locust(server.url, label, prompts, work / "warm.jsonl", 1, 4, args.output_len,
                       None, 600)
            recs = work / f"{label}.jsonl"
            run_locust(server.url, label, prompts, recs, args.concurrency, args.requests,
                       args.output_len, None, 3600)
            ours = summarize_level([{**r, "repeat": 0} for r in read_records(recs)], cfg)
            theirs, vllm_cmd = vllm_bench(server.url, label, path, args.concurrency,
                                          args.requests, args.input_len, args.output_len, work)
        rows[label] = {
            "ours": {k: ours[k] for k in KEYS},
            "vllm": {k: theirs.get(k) for k in KEYS},
            "diff": {k: (ours[k] - theirs[k]) / theirs[k] for k in KEYS if theirs.get(k)},
        }
    return rows, vllm_cmd


def main() -> None:
    ap = harness.parser(__doc__, ".")
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--name", default="vllm-crosscheck-smollm2-r30")
    args = ap.parse_args()
    dense = models.ensure_available(models.resolve_source(args.dense))
    rows, vllm_cmd = measure(args, dense, Path(tempfile.mkdtemp(prefix="crosscheck-")))
    result = {"name": args.name, "settings": {k: str(v) for k, v in vars(args).items()},
              "rows": rows, "vllm_bench_args": vllm_cmd}
    md = [f"# {args.name}: our locust timing vs vLLM's benchmark, same servers", "",
          f"Closed loop, concurrency {args.concurrency}, {args.requests} requests, input "
          f"{args.input_len} / output {args.output_len} tokens (ignore_eos), {args.kv_cache_gb} "
          "GiB KV, float32, --enforce-eager. Ours first, then vLLM's `vllm.benchmarks.serve` "
          "(random dataset), each after a warm-up, on the same server.", "",
          "| model | metric | ours | vLLM bench | difference |", "|---|---|---:|---:|---:|"]
    for label, row in rows.items():
        for k in KEYS:
            md.append(f"| {label} | {k} | {row['ours'][k]:.2f} | {row['vllm'][k]:.2f} | "
                      f"{row['diff'].get(k, float('nan')):+.1%} |")
    print(harness.write(args.out, args.name, result, "\n".join(md), args.note).read_text())


if __name__ == "__main__":
    main()
