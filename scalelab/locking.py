"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock``, held for the whole run.

The lock file records who holds it (host, PID, start time), so a second process is told whom it
waits for. ``flock`` locks belong to the open file description: the kernel drops them when the
holder exits, however it exits (SIGKILL included), so a lock file left by a dead process is
simply taken over by the next run; nothing has to decide whether a PID is stale. On several
hosts only process 0 writes, so only process 0 locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from scalelab.errors import ScalelabError

LOCK_NAME = ".lock"


class RunDirLocked(ScalelabError):
    """Another process is writing this run directory: exit 1."""


def describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        return f"PID {holder['pid']} on {holder['host']} (since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """``with RunLock(run_dir) as lock:`` holds the run directory's lock (``RunDirLocked`` if taken);
    ``lock.announce()`` then names this process in the lock file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        file = open(self.path, "a+")  # held open for as long as the lock
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = describe_holder(file.read())
            file.close()
            raise RunDirLocked(
                f"{self.path.parent} is being written by {holder}; wait for it to finish or stop it, then --resume"
            ) from None
        self.file = file
        return self

    def announce(self) -> None:
        """Records this process as the holder: once the run's checks have passed, so that a refused
        command leaves the lock file as it found it."""
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
        self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None
