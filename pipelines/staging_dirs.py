"""Per-run staging folders that a killed run does not leave behind for ever.

A sync stages (and spills) in its own folder under the warehouse's ``.staging``; it removes it on
exit, but a process killed with SIGKILL (or by the OOM killer) cannot. Each folder therefore
holds an exclusive ``flock`` on its ``.lock`` file for as long as its run lives; the operating
system drops the lock when the process dies, however it dies. Whenever a run creates its folder
it first removes the folders whose lock nobody holds: runs of other processes that are still
alive keep theirs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"
# A folder without a lock file is being created right now, or was left by a run killed in that
# instant (or by a version without locks): removed only once it is this old.
UNLOCKED_GRACE_SECONDS = 600


class StagingDir:
    """A fresh folder under ``root``, owned by this process until :meth:`remove`."""

    def __init__(self, root: Path, prefix: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        self._lock: IO | None = (self.path / LOCK_NAME).open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def remove_stale(root: Path) -> list[Path]:
    """Remove the folders of ``root`` whose run is gone; returns them."""
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        lock_path = folder / LOCK_NAME
        try:
            lock = lock_path.open("r+")
        except FileNotFoundError:
            if time.time() - _mtime(folder) > UNLOCKED_GRACE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its run is alive
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return time.time()
