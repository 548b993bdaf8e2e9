"""Generated code runs contained: a program that loops, forks without end, allocates without
end, opens a socket or writes outside its directory fails and harms nothing; a correct one
passes. (Skipped, with the reason, where the sandbox cannot be made: not root, no util-linux.)"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.tasks.sandbox import Limits, check_sandbox, run_program

from conftest import cmdline

try:
    check_sandbox()
    REASON = ""
except GraspError as err:
    REASON = str(err)

pytestmark = pytest.mark.skipif(bool(REASON), reason=f"no sandbox here: {REASON}")
QUICK = Limits(wall_seconds=8, cpu_seconds=4, memory_mb=256, processes=16)


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program("assert sum(range(5)) == 10\n", QUICK).passed
    out = run_program("assert 1 == 2, 'wrong'\n", QUICK)
    assert not out.passed and "AssertionError: wrong" in out.reason


def test_an_endless_loop_is_stopped_by_the_clock():
    t0 = time.monotonic()
    out = run_program("while True:\n    pass\n", QUICK)
    assert not out.passed and time.monotonic() - t0 < QUICK.wall_seconds + 5


def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing():
    marker = f"bomb-{uuid.uuid4().hex}"
    program = (f"import os, time\n# {marker}\n"
               "for _ in range(200):\n"
               "    try:\n        os.fork()\n    except OSError:\n        break\n"
               "time.sleep(30)\n")
    out = run_program(program, QUICK)
    assert not out.passed
    time.sleep(0.5)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and marker.encode() in cmdline(p)]
    assert left == []


def test_memory_is_bounded():
    out = run_program("x = bytearray(2 * 1024 ** 3)\n", QUICK)
    assert not out.passed and "MemoryError" in out.reason


def test_there_is_no_network():
    """A server on this machine's loopback is out of reach: the program's loopback is its own."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port, accepted = server.getsockname()[1], []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    program = ("import socket\n"
               f"socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'x')\n")
    out = run_program(program, QUICK)
    server.close()
    assert not out.passed and accepted == []


def test_writing_outside_its_directory_harms_nothing(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    os.chmod(tmp_path, 0o777)  # even a world-writable directory of ours is out of its reach
    shared_tmp = Path("/tmp") / f"grasp-sandbox-{uuid.uuid4().hex}"
    program = (f"open({str(victim)!r}, 'w').write('overwritten')\n")
    assert not run_program(program, QUICK).passed
    assert victim.read_text() == "mine"
    # what it writes to /tmp lands in its own tmpfs and is gone afterwards
    assert run_program(f"open({str(shared_tmp)!r}, 'w').write('x')\n", QUICK).passed
    assert not shared_tmp.exists()


def test_the_callers_environment_does_not_reach_it(monkeypatch):
    monkeypatch.setenv("GRASP_API_KEY", "secret-key")
    out = run_program("import os\nassert 'GRASP_API_KEY' not in os.environ\n", QUICK)
    assert out.passed


def test_the_interpreter_lies_outside_what_the_sandbox_hides(monkeypatch):
    from grasp_deploy.tasks import sandbox

    python = sandbox.interpreter()
    assert os.path.isfile(python) and not os.path.islink(python)
    assert not python.startswith(sandbox.MASKED)
    monkeypatch.setattr(sandbox, "interpreter", lambda: "/tmp/venv/bin/python3")
    with pytest.raises(GraspError, match=r"mounts an empty /tmp, which hides the Python that "
                                         r"would run the programs \(/tmp/venv/bin/python3\)"):
        check_sandbox()
