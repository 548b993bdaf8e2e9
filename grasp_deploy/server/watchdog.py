"""Stops a server's process group when the process that started it dies, however it dies.

Run as ``python .../watchdog.py PGID`` (by path: it imports nothing else) in a session of its
own, with a pipe on stdin whose other end only the launching process holds. A clean stop writes
one byte before closing it (nothing to do); end-of-file with no byte means the launcher died
(SIGKILL, a crash, a closed terminal), and the watchdog terminates the group, then kills what is
left.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def group_alive(pgid: int) -> bool:
    """Is any process of the group still running? (Zombies waiting to be reaped are not.)"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def stop_group(pgid: int, grace: float = 15.0) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    pgid = int(sys.argv[1])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.stdin.buffer.read(1) == b"":  # the launcher is gone without saying goodbye
        stop_group(pgid)


if __name__ == "__main__":
    main()
