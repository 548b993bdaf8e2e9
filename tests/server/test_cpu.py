"""The launcher's CPU server settings: added only on a CPU build of vLLM, never over the user's
own, all off with GRASP_CPU_TUNING=0, and shown as they were applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.server import cpu
from grasp_deploy.server.launcher import ServerConfig


@pytest.fixture
def tuned(monkeypatch):
    """Both measured choices on, on a CPU build of vLLM, with both libraries found."""
    monkeypatch.setattr(cpu, "cpu_backend", lambda: True)
    monkeypatch.setattr(cpu, "ALL_CORES", True)
    monkeypatch.setattr(cpu, "PRELOAD", True)
    monkeypatch.setattr(cpu, "ONE_PROCESS_DEFAULT", True)
    monkeypatch.setattr(cpu, "preload_libraries", lambda: ["/lib/tc.so", "/venv/lib/libiomp5.so"])
    for key in (*cpu.KEYS, cpu.SWITCH):
        monkeypatch.delenv(key, raising=False)


def test_every_cpu_is_bound_and_none_reserved():
    assert cpu.all_cores(4) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                                "VLLM_CPU_OMP_THREADS_BIND": "0,1,2,3"}


def test_each_parallel_rank_gets_its_own_cpus():
    assert cpu.all_cores(2, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert cpu.all_cores(4, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    assert cpu.all_cores(5, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"  # 4 left free
    with pytest.raises(GraspError, match="2 parallel ranks need a CPU each and this process "
                                         "may use 1; use a smaller --tensor-parallel-size"):
        cpu.all_cores(1, ranks=2)


def test_one_rank_runs_the_model_in_the_engine_process(tuned):
    """No binding to give: vLLM binds threads only in worker processes."""
    assert cpu.defaults({}) == {cpu.ONE_PROCESS: "0",
                                "LD_PRELOAD": "/lib/tc.so:/venv/lib/libiomp5.so"}


def test_several_ranks_or_the_users_word_get_worker_processes(tuned):
    assert cpu.ONE_PROCESS not in cpu.defaults({}, ranks=2)
    assert cpu.defaults({}, ranks=2)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    chosen = cpu.defaults({cpu.ONE_PROCESS: "1", "VLLM_CPU_OMP_THREADS_BIND": "1"})
    assert cpu.ONE_PROCESS not in chosen and "VLLM_CPU_OMP_THREADS_BIND" not in chosen
    assert chosen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"  # the user's binding stays
    assert chosen["LD_PRELOAD"] == "/lib/tc.so:/venv/lib/libiomp5.so"


def test_the_switch_and_a_gpu_build_leave_everything_to_vllm(tuned, monkeypatch):
    assert cpu.defaults({cpu.SWITCH: "0"}) == {}
    monkeypatch.setattr(cpu, "cpu_backend", lambda: False)
    assert cpu.defaults({}) == {}
    assert cpu.shown({"LD_PRELOAD": "x"}) == ""


@pytest.mark.parametrize("found", [[], ["/venv/lib/libiomp5.so"]])
def test_no_preload_without_both_libraries(tuned, monkeypatch, found):
    monkeypatch.setattr(cpu, "preload_libraries", lambda: found)
    assert cpu.defaults({}) == {cpu.ONE_PROCESS: "0"}


def test_the_server_environment_carries_them_and_says_so(tuned, monkeypatch):
    config = ServerConfig(model="m", env={cpu.ONE_PROCESS: "1",
                                          "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})
    env = config.environment()
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"  # the config's own env wins too
    assert env["LD_PRELOAD"] == "/lib/tc.so:/venv/lib/libiomp5.so"
    assert config.cpu_settings().startswith(f"{cpu.ONE_PROCESS}=1, "
                                            "VLLM_CPU_NUM_OF_RESERVED_CPU=1, "
                                            "VLLM_CPU_OMP_THREADS_BIND=")
    assert ServerConfig(model="m").cpu_settings() == (
        f"{cpu.ONE_PROCESS}=0, LD_PRELOAD=/lib/tc.so:/venv/lib/libiomp5.so")
    monkeypatch.setenv(cpu.SWITCH, "0")
    assert config.cpu_settings() == f"{cpu.ONE_PROCESS}=1, VLLM_CPU_NUM_OF_RESERVED_CPU=1"
    assert ServerConfig(model="m").cpu_settings() == "vLLM's own (no core binding or preload set)"


def test_the_libraries_found_exist():
    """Each is a file, or a bare name the dynamic loader resolves (on its search path)."""
    for library in cpu.preload_libraries():
        assert Path(library).is_file() or "/" not in library, library


def test_parallel_ranks_reach_the_command_and_the_binding(tuned, monkeypatch):
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    config = ServerConfig(model="m", tensor_parallel=2, pipeline_parallel=1)
    assert config.ranks == 2
    command = config.command()
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert "--pipeline-parallel-size" not in command
    assert config.environment()["VLLM_CPU_OMP_THREADS_BIND"] == "0,1|2,3"
    assert ServerConfig(model="m", pipeline_parallel=4).environment()[
        "VLLM_CPU_OMP_THREADS_BIND"] == "0|1|2|3"
    with pytest.raises(GraspError, match="8 parallel ranks need a CPU each"):
        ServerConfig(model="m", tensor_parallel=4, pipeline_parallel=2).environment()


@pytest.mark.parametrize("extra", [("-tp", "2"), ("--tensor-parallel-size=2",),
                                   ("--pipeline-parallel-size", "2")])
def test_parallel_sizes_after_the_dashes_are_refused(extra):
    with pytest.raises(GraspError, match="would leave the CPU threads bound for one worker"):
        ServerConfig(model="m", extra_args=extra)
    with pytest.raises(GraspError, match="--tensor-parallel-size 0 must be an integer >= 1"):
        ServerConfig(model="m", tensor_parallel=0)
