"""One writer per folder: `folder_lock(path)` makes a second writer fail at once, in one line.

The lock is `fcntl.flock` on a file beside the folder, `PARENT/.NAME.lock` (so a folder that does
not exist yet, or is built elsewhere and renamed into place, can be locked). flock rather than an
`O_CREAT|O_EXCL` marker because the kernel drops a flock when its holder dies, however it dies
(SIGKILL, OOM): a stale lock file of a dead writer is simply locked again, with no guessing from a
pid (which may be reused) and no race between two writers taking it over. The file holds the
holder's pid, host and start time, only to say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dtlens.errors import DtlensError

HOST = socket.gethostname()


def lock_path(path: str | os.PathLike) -> Path:
    """Where the lock of folder `path` lives: `PARENT/.NAME.lock`."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}.lock"


def _holder(fd: int) -> str:
    """'pid N since T' (with the host when it is another), from the lock file's contents."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        host = "" if info["host"] == HOST else f" on {info['host']}"
        return f"pid {info['pid']}{host} since {info['since']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written its record yet
        return "another process"


@contextmanager
def folder_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive write lock of folder `path` (created or not) for the block.

    Raises DtlensError if another process holds it. The lock file is removed on release.
    """
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DtlensError(
                f"{path} is being written by {holder}; wait for it to finish, or stop it"
            ) from None
        # The previous holder unlinks the file before unlocking: if ours is no longer the file
        # at `lock`, we locked a removed inode and must lock the new file instead.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        record = json.dumps({"pid": os.getpid(), "host": HOST, "since": since}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the flock
