"""The run lock: one writer per run directory, freed by the kernel however its holder exits.

``fcntl.flock`` on ``RUN_DIR/kinmerge.lock`` belongs to the open file, so the kernel drops it when
the holder exits — ``kill -9`` included — and there is never a stale lock to delete. The pid
written into the file is only for the error message. POSIX only (kinmerge targets Linux/macOS);
``fcntl`` is imported inside the functions so that importing the store never fails elsewhere.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> fd = acquire(run); is_locked(run)
    True
    >>> release(fd); is_locked(run)
    False
"""

from __future__ import annotations

import os
from pathlib import Path

from kinmerge.errors import StoreError

__all__ = ["LOCK_NAME", "acquire", "is_locked", "release"]

LOCK_NAME = "kinmerge.lock"


def acquire(run_dir: str | os.PathLike[str]) -> int:
    """Take the exclusive, non-blocking lock of ``run_dir``; returns its file descriptor.

    Raises:
        StoreError: another process (or another open store in this one) holds it; the message
            names the holder's pid.
    """
    import fcntl

    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreError(
            f"run directory {run_dir} is in use by pid {holder}; wait for it to finish or stop "
            "that process (its lock frees itself when it exits; there is nothing to delete)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    """Release a lock taken by :func:`acquire` and close its descriptor."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """Whether some process holds the run lock of ``run_dir`` right now (a run is going)."""
    import fcntl

    lock = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
