"""The launcher's settings for vLLM's CPU backend.

By default vLLM's CPU server runs the model in a worker process of its own, beside the API
server and the engine-core (scheduler) process; it binds the worker's OpenMP threads itself and,
on x86, keeps one core per rank free for those other processes (``VLLM_CPU_NUM_OF_RESERVED_CPU``):
on a 2-core machine the model computes on one core. Its install guide also recommends preloading
tcmalloc and Intel OpenMP. ``bench/cpu_config.py`` measures these choices, dense and pruned; the
settings that served fastest are the launcher's defaults, given to every vLLM server it starts
on a CPU build of vLLM: with one rank, the model in the engine-core process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, vLLM's UniProcExecutor, threads left to the OS); with
several ranks, a worker per rank on its own cores, none reserved; tcmalloc and Intel OpenMP
preloaded in both. A variable the user sets wins over the default, and ``GRASP_CPU_TUNING=0``
leaves all of them to vLLM. What a server ran with is printed in the banner and in every report
(``shown``).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from ..core.errors import GraspError

SWITCH = "GRASP_CPU_TUNING"  # "0": vLLM's own CPU settings
# "0": the model runs in the engine-core process (vLLM's UniProcExecutor) instead of a worker
# process of its own; vLLM then binds no OpenMP threads (its binding is for worker processes).
ONE_PROCESS = "VLLM_ENABLE_V1_MULTIPROCESSING"
KEYS = (ONE_PROCESS, "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND", "LD_PRELOAD",
        "OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME")
TCMALLOC = "libtcmalloc_minimal.so.4"
# Which of the measured choices the launcher applies. bench/results/cpu-config-smollm2-r50 (2-core
# AMD EPYC, AVX-512 BF16): both together served fastest over both models and both loads, output
# tok/s x1.31 / x1.35 dense and x1.02 / x1.18 pruned at concurrency 8 / 32 against vLLM's own.
ALL_CORES = True
# bench/results/cpu-config-one-process-smollm2-r50: with one rank, the model in the engine-core
# process (its threads unpinned) served faster than in a worker process of its own, dense and
# pruned (figures there). vLLM reads its core binding only for worker processes, so with one
# process ALL_CORES has nothing to bind; several ranks always get worker processes.
ONE_PROCESS_DEFAULT = True
PRELOAD = True  # only with both libraries found: the pair is what was measured


def cpu_backend() -> bool:
    """Whether the installed vLLM is its CPU build (``vllm-cpu``)."""
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def preload_libraries() -> list[str]:
    """tcmalloc (the system's, e.g. Debian's ``libtcmalloc-minimal4``) and Intel OpenMP (the
    ``intel-openmp`` wheel vLLM's CPU build installs), those that are present."""
    tcmalloc = [str(p) for p in Path("/usr/lib").glob(f"*-linux-gnu/{TCMALLOC}")]
    if not tcmalloc and ctypes.util.find_library("tcmalloc_minimal"):
        tcmalloc = [TCMALLOC]  # on the loader's path: the name is enough
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    return tcmalloc[:1] + ([str(iomp)] if iomp.is_file() else [])


def preload() -> str | None:
    """``LD_PRELOAD`` for the server: tcmalloc and Intel OpenMP together, or nothing."""
    libraries = preload_libraries()
    return ":".join(libraries) if len(libraries) == 2 else None


def all_cores(cpus: int | None = None, ranks: int = 1) -> dict[str, str]:
    """The workers' threads on every CPU this process may use, no core held back: with several
    ranks (tensor x pipeline parallel), each rank its own equal run of CPUs, as vLLM's
    ``VLLM_CPU_OMP_THREADS_BIND`` spells it ("0,1|2,3")."""
    allowed = sorted(os.sched_getaffinity(0)) if cpus is None else list(range(cpus))
    if ranks > len(allowed):
        raise GraspError(f"{ranks} parallel ranks need a CPU each and this process may use "
                         f"{len(allowed)}; use a smaller --tensor-parallel-size or "
                         "--pipeline-parallel-size")
    share = len(allowed) // ranks  # CPUs beyond ranks x share stay free for the engine
    runs = [allowed[r * share:(r + 1) * share] for r in range(ranks)]
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, run)) for run in runs)}


def defaults(env: Mapping[str, str], ranks: int = 1) -> dict[str, str]:
    """The settings to add to a server's environment ``env`` for ``ranks`` worker processes:
    none off a CPU build of vLLM or with ``GRASP_CPU_TUNING=0``, and none the environment
    already sets."""
    if env.get(SWITCH, "1") == "0" or not cpu_backend():
        return {}
    chosen: dict[str, str] = {}
    if ONE_PROCESS_DEFAULT and ranks == 1 and env.get(ONE_PROCESS, "0") == "0":
        chosen[ONE_PROCESS] = "0"
    elif ALL_CORES:  # a binding the user gives is theirs to fit to the ranks
        chosen.update(all_cores(ranks=ranks) if "VLLM_CPU_OMP_THREADS_BIND" not in env
                      else {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    if PRELOAD and (libraries := preload()):
        chosen["LD_PRELOAD"] = libraries
    return {k: v for k, v in chosen.items() if k not in env}


def shown(env: Mapping[str, str]) -> str:
    """The CPU settings of a server's environment, as banners and reports print them."""
    if not cpu_backend():
        return ""
    told = [f"{k}={env[k]}" for k in KEYS if env.get(k)]
    return ", ".join(told) if told else "vLLM's own (no core binding or preload set)"
