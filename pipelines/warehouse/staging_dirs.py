"""Per-run staging folders that a killed run does not leave behind for ever.

A sync stages (and spills) in its own folder under the warehouse's ``.staging``; it removes it on
exit, but a process killed with SIGKILL (or by the OOM killer) cannot. Each folder therefore
holds an exclusive ``flock`` on its ``.lock`` file for as long as its run lives; the operating
system drops the lock when the process dies, however it dies. Whenever a run creates its folder
it first removes the folders whose lock nobody holds: runs of other processes that are still
alive keep theirs.

Creation and locking are one step as any sweeper sees them. Making a folder, creating its
``.lock`` and taking the ``flock`` are three system calls; a sweep (of another feed's thread, or
of another process) that ran between the second and the third found an existing, unlocked
``.lock`` and removed the live folder (a large sync then failed creating its ``spill`` folder).
So a folder is built under a pending name (``.new-<prefix>...``), its lock taken there, and only
then renamed to its real name: a folder with a real name always has a held lock while its run
lives (``rename`` moves the directory with the open, locked file in it). Sweepers never touch a
lock of a pending folder; they remove one only once it is old (its creator was killed within the
few microseconds of creating it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"
# A folder under construction: created, locked and renamed to its real name by one process.
PENDING_PREFIX = ".new-"
# A folder without a lock file (a version without locks, or one killed before it made its lock)
# or a pending folder: removed only once it is this old, since a live one is being created now.
UNLOCKED_GRACE_SECONDS = 600


class StagingDir:
    """A fresh folder under ``root``, owned by this process until :meth:`remove`."""

    def __init__(self, root: Path, prefix: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root)
        pending = Path(tempfile.mkdtemp(prefix=PENDING_PREFIX + prefix, dir=root))
        try:
            self._lock: IO | None = (pending / LOCK_NAME).open("w")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.path = _publish(pending, root, pending.name[len(PENDING_PREFIX):])
        except BaseException:
            shutil.rmtree(pending, ignore_errors=True)
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _publish(pending: Path, root: Path, name: str) -> Path:
    """Rename the locked ``pending`` folder to ``name`` (another name if that one is taken)."""
    for _attempt in range(100):
        target = root / name
        try:
            # A non-empty folder of that name (a live or stale run's, which has its .lock) makes
            # the rename fail; an empty one can only be a leftover and is replaced.
            os.rename(pending, target)
            return target
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            name = f"{name}-{secrets.token_hex(3)}"
    raise FileExistsError(f"no free staging folder name under {root}")


def remove_stale(root: Path) -> list[Path]:
    """Remove the folders of ``root`` whose run is gone; returns them."""
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        if folder.name.startswith(PENDING_PREFIX):
            # Its lock may exist and not be taken *yet*: never judged by it, only by age.
            if time.time() - _mtime(folder) > UNLOCKED_GRACE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
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
