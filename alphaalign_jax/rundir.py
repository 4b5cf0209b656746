"""One writer per run directory.

Two trainers on one workdir delete each other's in-progress checkpoints and interleave
their metrics. ``RunDirLock`` takes an exclusive ``flock`` on ``<dir>/.lock`` for as long
as the owner holds it; the kernel drops the lock when the process dies (kill -9 included),
so a lock left by a dead process is simply taken over. The file names the holder (host,
pid, command) for the error a second writer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import sys
import time

import jax

from alphaalign_jax import config as config_lib


class RunDirLocked(RuntimeError):
    """The directory is held by another live process."""


class RunDirLock:
    """Hold ``directory`` for this process: ``acquire()`` or fail naming the holder."""

    def __init__(self, directory: str | os.PathLike[str], role: str) -> None:
        self.path = pathlib.Path(directory) / ".lock"
        self.role = role
        self._file = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held open: the lock lives with it)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown holder"
            handle.close()
            try:
                h = json.loads(holder)
                holder = (f"{h['role']} pid {h['pid']} on host {h['host']} since {h['since']} "
                          f"({h['command']})")
            except (ValueError, KeyError, TypeError):
                pass
            raise RunDirLocked(f"{self.path.parent} is in use by {holder}; wait for it to end "
                               "or choose another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"role": self.role, "pid": os.getpid(),
                                 "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)[:300]}) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def open_run(workdir: pathlib.Path, config, *, resume: bool) -> RunDirLock | None:
    """Take ``workdir`` for a trainer (process 0; the others get None) and record the config
    in force, after checking what a run resumed from a checkpoint may change
    (config.check_resume)."""
    changes = config_lib.check_resume(workdir, config) if resume else {}
    if jax.process_index() != 0:
        return None
    lock = RunDirLock(workdir, "trainer").acquire()
    config_lib.record(workdir, config, changes)
    return lock
