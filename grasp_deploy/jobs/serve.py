"""The serve job: check the model, start vLLM through the launcher, wait, stop cleanly."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checkpoint.parallel import parallel_problem
from ..core.errors import GraspError
from ..server import cpu
from ..server.launcher import ServerConfig, VllmServer, require_vllm
from ..server.net import check_bindable, is_loopback
from ..sources import models
from . import loading

log = logging.getLogger("grasp_deploy")


def servable(model: str | None, verify: bool = True) -> tuple[str, str, Any]:
    """(location vLLM opens, default served name, HF config) of a checkpoint or dense model;
    a missing config, an unsupported architecture or a checkpoint whose files do not match its
    manifest fails here, before any server starts."""
    require_vllm()
    source = models.resolve_source(model)
    config = loading.load_config(source)
    loading.check_checkpoint(source, verify)
    location = models.ensure_available(source)
    name = Path(location).name if source.kind == "local" else Path(source.spec).stem \
        if source.kind == "gguf" else source.spec
    return location, name, config


def check_parallel(model: str, hf_config: Any, tp: int, pp: int) -> None:
    """A model whose layers the parallel ranks cannot split fails here, before any server."""
    problem = parallel_problem(hf_config, tp, pp)
    if problem:
        raise GraspError(f"{model}: {problem}")


def check_quantized(model: str, hf_config: Any, dtype: str) -> None:
    """A 4-bit checkpoint (``export --quantize w4a16``) that vLLM's CPU kernel would be asked
    to compute in float32, which it does not implement: refused before any server starts."""
    quant = getattr(hf_config, "quantization_config", None)
    packed = isinstance(quant, dict) and quant.get("format") == "pack-quantized"
    stored = str(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", ""))
    float32 = dtype == "float32" or (dtype == "auto" and stored.endswith("float32"))
    if packed and float32 and cpu.cpu_backend():
        raise GraspError(f"{model} holds 4-bit weights (w4a16), which vLLM's CPU kernel computes "
                         "in bfloat16 or float16 only, not float32; serve it with --dtype "
                         "bfloat16")


def resolve(config: ServerConfig, verify: bool = True) -> ServerConfig:
    """``config`` for the location vLLM opens (the default model fetched once), with the
    served name defaulting to the directory's; checked before start-up."""
    check_bindable(config.host, config.port)  # a bad host or a taken port: say so first
    location, name, hf_config = servable(config.model, verify)
    check_parallel(config.model, hf_config, config.tensor_parallel, config.pipeline_parallel)
    check_quantized(config.model, hf_config, config.dtype)
    config.environment()  # enough CPUs for the ranks (server/cpu.py)
    if not is_loopback(config.host) and not config.api_key:
        log.warning("serving on %s with no --api-key: anyone who can reach this machine can use "
                    "the model; pass --api-key (or bind 127.0.0.1)", config.host)
    return replace(config, model=location, served_name=config.served_name or name)


def _raise_interrupt(_signum, _frame):
    raise KeyboardInterrupt


# Ctrl-C, kill, a closed terminal. Our own handler for each, SIGINT included: a process started
# in the background inherits SIGINT ignored, and libraries imported on the way may replace it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_serve(config: ServerConfig, on_ready: Callable[[VllmServer], None],
              say: Callable[[str], None]) -> int:
    """Serve until Ctrl-C / SIGTERM / SIGHUP (exit 0) or until the server dies (exit 1).

    ``on_ready`` may raise KeyboardInterrupt to stop at once (``--once``)."""
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
    server = VllmServer(config, say=say)
    try:
        server.start()
        on_ready(server)
        while server.alive():
            time.sleep(1.0)
        say(f"vLLM exited (code {server.proc.returncode}); last lines of {server.log_path}:\n"
            f"{server.log_tail()}")
        return 1
    except KeyboardInterrupt:
        say("stopping vLLM ...")
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kv_summary(server: VllmServer) -> str:
    info = server.kv_capacity()
    if not info:
        return "KV cache: not reported by /metrics"
    tokens = int(info.get("kv_cache_tokens", 0))
    parts = [f"KV cache: {tokens:,} tokens ({int(info['num_gpu_blocks']):,} blocks of "
             f"{int(info['block_size'])})"]
    if "kv_cache_max_concurrency" in info:
        parts.append(
            f"max concurrency {info['kv_cache_max_concurrency']:.2f}x at the max model length"
        )
    if "kv_cache_memory_bytes" in info:
        parts.append(f"{info['kv_cache_memory_bytes'] / 2**30:.2f} GiB")
    return ", ".join(parts)
