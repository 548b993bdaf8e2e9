"""Output directories that are safe to write: checked before work, built beside the target,
swapped into place atomically, never replacing anything this tool did not write.

* ``--force`` replaces only a directory of the kind being written (a ``DirKind``: its marker
  file present, such as ``plan.json`` for a plan) or an empty one;
  never the current directory or one of its ancestors, never through a symlink.
* The new directory is written as ``.NAME.tmp-PID-XXXX`` beside the target, fsynced, and
  exchanged with the old one in one rename (``renameat2(RENAME_EXCHANGE)``; where that is
  missing, two renames with the old copy restored on failure). Its mode follows the umask.
* Temporaries of that naming whose process is gone (``kill -9``) are removed by the next run,
  which says so in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import GraspError

log = logging.getLogger("grasp_deploy")

_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class DirKind:
    """A kind of output directory, and the file it holds once this tool has written it (each
    is defined where its format is: ``core.plan.PLAN_DIR``, ``jobs.export.CHECKPOINT_DIR``, ...)."""

    name: str
    marker: str


def check_target(out: Path, force: bool, kind: DirKind, flag: str = "--out") -> None:
    """Fail before any work if ``out`` cannot be (re)written, or is not ours to replace."""
    out = Path(out)
    if out.is_symlink():
        raise GraspError(f"{flag} {out} is a symbolic link; give the real directory's path")
    if out.exists():
        if not force:
            raise GraspError(f"{flag} {out} already exists; pass --force to replace it")
        _check_replaceable(out, flag, kind)
    _check_writable(out, flag)


def _check_replaceable(out: Path, flag: str, kind: DirKind) -> None:
    if not out.is_dir():
        raise GraspError(f"{flag} {out} exists and is not a directory; choose another path")
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise GraspError(f"{flag} {out} is the current directory or contains it; --force never "
                         "replaces that, choose a new directory")
    if any(out.iterdir()) and not (out / kind.marker).is_file():
        raise GraspError(f"{flag} {out} is not a {kind.name} directory written by grasp-deploy "
                         f"(no {kind.marker}); --force replaces only those, choose another path")


def _check_writable(out: Path, flag: str) -> None:
    """The first existing ancestor must be a writable directory (missing parents are made)."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise GraspError(f"{flag} {out}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GraspError(f"cannot write into {parent} (permission denied); choose another {flag}")
    try:  # os.access says yes to root everywhere; only a real directory tells (/proc, read-only)
        os.rmdir(tempfile.mkdtemp(prefix=".grasp-probe-", dir=parent))
    except OSError as e:
        raise GraspError(f"cannot write into {parent} ({e.strerror or e}); choose another "
                         f"{flag}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_of(temporary: Path) -> int | None:
    """The process that made ``.NAME.tmp-PID-XXXX`` (None for other spellings)."""
    tail = temporary.name.rsplit(".tmp-", 1)[-1].rsplit(".old-", 1)[-1]
    head = tail.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove temporaries of ``out`` left by runs that died; return what was removed."""
    removed = []
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for path in sorted(out.parent.glob(pattern)):
            pid = _pid_of(path)
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue  # another run is writing it now
            (
                shutil.rmtree(path, ignore_errors=True)
                if path.is_dir()
                else path.unlink(missing_ok=True)
            )
            log.info("removed %s, left by an interrupted run", path)
            removed.append(path)
    return removed


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(directory))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic rename (Linux renameat2); False where unsupported."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no exchange on this file system
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
    elif _exchange(tmp, out):  # tmp now holds the old copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{os.urandom(3).hex()}")
        out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            old.rename(out)  # the old copy stays in place
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


@contextmanager
def atomic_dir(out: Path, force: bool, kind: DirKind, flag: str = "--out") -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``out``, on error it is removed
    and ``out`` is left as it was."""
    out = Path(out)
    check_target(out, force, kind, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
        _swap_into_place(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GraspError(
            f"could not write {out}: {err.strerror or err}; nothing was changed"
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
