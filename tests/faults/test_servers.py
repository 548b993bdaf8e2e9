"""Server faults without vLLM: a fake server (an HTTP process with a child) started through the
real launcher; SIGHUP and SIGKILL of the process that started it leave nothing running.
Host and port errors say what is wrong; the API key stays off command lines and banners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.server import launcher
from grasp_deploy.server.launcher import ServerConfig, VllmServer
from grasp_deploy.server.net import check_bindable, free_port, is_loopback, url_host

FAKE_SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""

DRIVER = f"""
import sys
from grasp_deploy.server import launcher
launcher.require_vllm = lambda: None
class Fake(launcher.ServerConfig):
    def command(self):
        return [sys.executable, "-c", {FAKE_SERVER!r}, str(self.port)]
from grasp_deploy.jobs.serve import run_serve
config = Fake(model="fake", port=int(sys.argv[1]), startup_timeout=60)
def ready(server):
    print("READY", server.proc.pid, flush=True)
sys.exit(run_serve(config, ready, say=lambda message: None))
"""


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                if os.getpgid(int(entry)) == pgid and ") Z " not in stat:
                    pids.append(int(entry))
            except (OSError, ProcessLookupError):
                continue
    return pids


def _start_driver():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", proc.stderr.read()
    pgid = int(line[1])
    assert len(_group(pgid)) == 2  # the server and its child
    return proc, pgid


def _gone_within(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _group(pgid):
            return True
        time.sleep(0.3)
    return False


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_server_and_its_child(sig):
    proc, pgid = _start_driver()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    assert _gone_within(pgid, 5)


def test_sigkill_of_the_launcher_still_stops_the_server():
    proc, pgid = _start_driver()
    proc.kill()
    proc.wait()
    assert _gone_within(pgid, 30), f"left running: {_group(pgid)}"


def test_no_log_is_made_when_the_port_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        server = VllmServer(ServerConfig(model="m", port=s.getsockname()[1]))
        with pytest.raises(GraspError, match="is in use"):
            server.start()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("host,expect", [("10.255.255.1", "not an address of this machine"),
                                         ("no-such-host.invalid", "unknown host")])
def test_host_problems_are_named(host, expect):
    with pytest.raises(GraspError, match=expect):
        check_bindable(host, free_port())


def test_ipv6_hosts_are_bracketed_and_loopback_is_known():
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1"
    assert ServerConfig(model="m", host="::1", port=8000).port == 8000
    assert VllmServer(ServerConfig(model="m", host="::1", port=8000)).url == "http://[::1]:8000"
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_the_api_key_stays_off_command_lines():
    config = ServerConfig(model="m", api_key="sk-very-secret-key")
    assert not any("secret" in part for part in config.command())
    assert config.environment()["VLLM_API_KEY"] == "sk-very-secret-key"
    assert "secret" not in config.masked_key
    assert "VLLM_API_KEY" not in ServerConfig(model="m").environment()


def test_aot_compilation_is_off_by_default_and_the_users_setting_wins(monkeypatch):
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert ServerConfig(model="m").environment()["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert ServerConfig(model="m").environment()["VLLM_USE_AOT_COMPILE"] == "1"
