"""Running code a model wrote, contained.

Each program runs in its own process tree with:

- no network: a network namespace of its own (only a loopback interface, down), and a PID
  namespace of its own (when the program ends, everything it started ends with it);
- its own filesystem view of the writable places: fresh size-limited tmpfs mounts over
  ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (a mount namespace), the program's working directory
  an empty one inside them; everything else it can reach is read-only to it, because
- it runs as an unprivileged user (``nobody``), with no supplementary groups;
- limits: CPU seconds, address space, processes (a fork bomb stops at the limit), file size,
  open files; and a wall-clock timeout after which the whole process group is killed.

The program is read from standard input, so no file of it exists outside the sandbox. This
needs root (to create the namespaces and drop to ``nobody``) and util-linux's ``unshare``,
``setpriv`` and ``prlimit``; where they are missing, ``check_sandbox`` says so in one line and
nothing runs unsandboxed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from ..core.errors import GraspError

TOOLS = ("unshare", "setpriv", "prlimit")
MASKED = ("/tmp", "/var/tmp", "/dev/shm")  # each an empty tmpfs inside the sandbox


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024  # address space
    processes: int = 32  # per user inside the sandbox
    file_mb: int = 16  # largest file it may write
    tmpfs_mb: int = 64  # each writable mount
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed", "failed: <last line>", "timed out", "killed by signal N"


def check_sandbox() -> None:
    """Raise GraspError (one line) unless programs can be contained here."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise GraspError(f"running generated code needs {', '.join(missing)} (util-linux) for "
                         "its sandbox; install it, or score elsewhere")
    if os.geteuid() != 0:
        raise GraspError("running generated code needs root to create its sandbox (network and "
                         "mount namespaces, then dropping to user nobody); run as root in a "
                         "container or VM")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise GraspError("running generated code needs the unprivileged user 'nobody'") from None
    python = interpreter()
    hidden = [where for where in MASKED if python == where or python.startswith(where + "/")]
    if hidden:
        raise GraspError(f"the sandbox mounts an empty {hidden[0]}, which hides the Python that "
                         f"would run the programs ({python}); use a Python installed outside "
                         f"{', '.join(MASKED)}")
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise GraspError(f"cannot create the sandbox's namespaces here ({why}); run where "
                         "unshare may (a container with CAP_SYS_ADMIN, or a VM)")


def interpreter() -> str:
    """The Python that runs the programs: the real interpreter behind this one's virtual
    environment (a program may use only the standard library, ``-I -S``), so a project or
    venv under /tmp, which the sandbox replaces, does not hide it."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _command(limits: Limits) -> list[str]:
    """unshare (net + mount) -> mount tmpfs over the writable places -> prlimit -> setpriv
    (drop to nobody) -> python reading the program from stdin, in an empty directory."""
    nobody = pwd.getpwnam("nobody")
    mounts = " && ".join(f"mount -t tmpfs -o size={limits.tmpfs_mb}m,mode=1777 tmpfs {where}"
                         for where in MASKED)
    inner = (f"{mounts} && mkdir /tmp/run && chown {nobody.pw_uid}:{nobody.pw_gid} /tmp/run && "
             "cd /tmp/run && exec \"$@\"")
    limits_args = [f"--cpu={limits.cpu_seconds}", f"--as={limits.memory_mb << 20}",
                   f"--nproc={limits.processes}", f"--fsize={limits.file_mb << 20}",
                   f"--nofile={limits.open_files}"]
    return ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "--",
            "sh", "-c", inner, "sandbox",
            "prlimit", *limits_args, "--",
            "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
            "--inh-caps=-all", "--no-new-privs", "--",
            interpreter(), "-I", "-S", "-"]


def run_program(program: str, limits: Limits | None = None) -> Outcome:
    """Run ``program`` contained; passed when it exits 0 within the limits."""
    limits = limits or Limits()
    proc = subprocess.Popen(_command(limits), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=_environment())
    try:
        _out, err = proc.communicate(program.encode(), timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        return Outcome(False, "timed out")
    finally:
        _kill_group(proc)  # whatever it forked and left behind
    if proc.returncode == 0:
        return Outcome(True, "passed")
    if proc.returncode < 0:
        return Outcome(False, f"killed by signal {-proc.returncode}")
    last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return Outcome(False, f"failed: {last[0][:200]}")


def _environment() -> dict[str, str]:
    """A minimal environment: nothing of the caller's (keys, tokens) reaches the program."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
