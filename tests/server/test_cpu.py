"""The launcher's CPU server settings: added only on a CPU build of vLLM, never over the user's
own, all off with GRASP_CPU_TUNING=0, and shown as they were applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from grasp_deploy.server import cpu
from grasp_deploy.server.launcher import ServerConfig


@pytest.fixture
def tuned(monkeypatch):
    """Both measured choices on, on a CPU build of vLLM, with both libraries found."""
    monkeypatch.setattr(cpu, "cpu_backend", lambda: True)
    monkeypatch.setattr(cpu, "ALL_CORES", True)
    monkeypatch.setattr(cpu, "PRELOAD", True)
    monkeypatch.setattr(cpu, "preload_libraries", lambda: ["/lib/tc.so", "/venv/lib/libiomp5.so"])
    for key in (*cpu.KEYS, cpu.SWITCH):
        monkeypatch.delenv(key, raising=False)


def test_every_cpu_is_bound_and_none_reserved():
    assert cpu.all_cores(4) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                                "VLLM_CPU_OMP_THREADS_BIND": "0,1,2,3"}


def test_the_defaults_fill_what_the_environment_leaves_unset(tuned):
    chosen = cpu.defaults({"VLLM_CPU_OMP_THREADS_BIND": "1"})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in chosen  # the user's binding stays
    assert chosen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert chosen["LD_PRELOAD"] == "/lib/tc.so:/venv/lib/libiomp5.so"


def test_the_switch_and_a_gpu_build_leave_everything_to_vllm(tuned, monkeypatch):
    assert cpu.defaults({cpu.SWITCH: "0"}) == {}
    monkeypatch.setattr(cpu, "cpu_backend", lambda: False)
    assert cpu.defaults({}) == {}
    assert cpu.shown({"LD_PRELOAD": "x"}) == ""


@pytest.mark.parametrize("found", [[], ["/venv/lib/libiomp5.so"]])
def test_no_preload_without_both_libraries(tuned, monkeypatch, found):
    monkeypatch.setattr(cpu, "preload_libraries", lambda: found)
    assert "LD_PRELOAD" not in cpu.defaults({})
    assert cpu.defaults({})["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_the_server_environment_carries_them_and_says_so(tuned, monkeypatch):
    config = ServerConfig(model="m", env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})
    env = config.environment()
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"  # the config's own env wins too
    assert env["LD_PRELOAD"] == "/lib/tc.so:/venv/lib/libiomp5.so"
    assert config.cpu_settings().startswith("VLLM_CPU_NUM_OF_RESERVED_CPU=1, "
                                            "VLLM_CPU_OMP_THREADS_BIND=")
    monkeypatch.setenv(cpu.SWITCH, "0")
    assert config.cpu_settings() == "VLLM_CPU_NUM_OF_RESERVED_CPU=1"
    assert ServerConfig(model="m").cpu_settings() == "vLLM's own (no core binding or preload set)"


def test_the_libraries_found_exist():
    """Each is a file, or a bare name the dynamic loader resolves (on its search path)."""
    for library in cpu.preload_libraries():
        assert Path(library).is_file() or "/" not in library, library
