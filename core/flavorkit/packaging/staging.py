"""Crash-safe staging folders for the packager, and the reclaiming of those a killed process left.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Every packaging call works in one staging folder that flavorkit owns: a hidden sibling of the
output path (``.NAME.flavorkit-<random>``), or, when the model is logged to MLflow instead of
saved, a folder under ``<flavorkit cache>/staging``. It holds the scratch files (``work/``), the
model MLflow writes (``model/``) and, while an existing model is being replaced, that previous
model (``old/``).

The folder is marked by a lock file, ``flavorkit-stage.lock``, which names the output and the
owner, and on which the owner holds an exclusive ``flock`` for the folder's whole life. The kernel
drops that lock when the owner dies, however it dies (SIGKILL included), so liveness needs no PID
and no clock: a later call that can take the lock knows the owner is gone. It works across hosts
that share the filesystem where the filesystem supports locks (NFSv4 does), and PID reuse does not
matter. The marker is renamed into place only once its lock is held and its content written, so a
folder without it, or with a lock someone holds, is never touched.

Reclaiming a stale folder first puts a previous model back when the owner died between moving it
aside and renaming the new one in (the output path is then missing), then deletes the folder.
So the output path is always either the previous model or the complete new one. Windows has no
flock: there staging folders work the same but are never reclaimed.
"""

from __future__ import annotations

import contextvars
import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from flavorkit.errors import PackagingError
from flavorkit.packaging.cache import try_lock

__all__ = ["LOCK_NAME", "Stage", "current_stage", "open_stage", "reclaim", "scratch_root"]

log = logging.getLogger(__name__)

LOCK_NAME = "flavorkit-stage.lock"
_INFIX = ".flavorkit-"
_FORMAT = 1
_CURRENT: contextvars.ContextVar[Stage | None] = contextvars.ContextVar("flavorkit_stage", default=None)
# This process's live folders. flock already keeps other threads off them; this also covers
# filesystems where flock falls back to per-process POSIX locks (NFS), which a process never
# conflicts with itself on.
_LIVE: set[Path] = set()


class Stage:
    """One live staging folder; its lock is held until :func:`open_stage` exits."""

    def __init__(self, path: Path, target: Path | None, lock_fd: int) -> None:
        self.path = path
        self.target = target
        self.lock_fd = lock_fd

    @property
    def work(self) -> Path:
        """Scratch space for backend artifacts, the manifest and the shipped code."""
        return self.path / "work"

    @property
    def model(self) -> Path:
        """Where MLflow writes the model before it is renamed onto the target."""
        return self.path / "model"

    @property
    def backup(self) -> Path:
        """Where a previous model waits while the new one is renamed into place."""
        return self.path / "old"


def scratch_root() -> Path:
    """The folder that holds staging folders for models logged to MLflow (no output path)."""
    from flavorkit.packaging.cache import cache_root

    return cache_root() / "staging"


def current_stage() -> Stage:
    """The stage opened by the innermost :func:`open_stage` in this context."""
    stage = _CURRENT.get()
    if stage is None:
        raise RuntimeError("no flavorkit staging folder is open in this context")
    return stage


@contextmanager
def open_stage(target: Path | None) -> Iterator[Stage]:
    """Create and lock a staging folder beside ``target`` (or under :func:`scratch_root`), then remove it.

    Stale folders in the same parent are reclaimed first. On exit the folder is deleted, after a
    previous model still in it has been put back on a missing target.
    """
    parent = target.parent if target is not None else scratch_root()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        reclaim(parent)
        stage = _create(parent, target)
    except OSError as exc:
        raise PackagingError(f"cannot create a staging folder in {parent}: {exc}") from exc
    _LIVE.add(stage.path)
    token = _CURRENT.set(stage)
    try:
        yield stage
    finally:
        _CURRENT.reset(token)
        try:
            _dispose(stage.path, target)
        finally:
            os.close(stage.lock_fd)
            _LIVE.discard(stage.path)


def reclaim(parent: Path) -> list[Path]:
    """Delete the staging folders in ``parent`` whose owner is gone; return the ones removed.

    Only folders named ``.NAME.flavorkit-*`` that hold a complete marker whose lock nobody holds
    are touched. A previous model left in one is moved back onto its missing output path first.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and _INFIX in entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        if folder in _LIVE:
            continue
        fd, target = _lock_if_stale(folder)
        if fd is None:
            continue
        try:
            if _dispose(folder, target):
                log.info("removed the staging folder %s left by an interrupted packaging", folder)
                removed.append(folder)
        finally:
            os.close(fd)
    return removed


def _create(parent: Path, target: Path | None) -> Stage:
    label = target.name if target is not None else "logged-model"
    while True:
        path = parent / f".{label}{_INFIX}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    pending = path / (f"{LOCK_NAME}.new" if _CAN_LOCK else LOCK_NAME)
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        if _CAN_LOCK and not try_lock(fd):
            raise OSError(errno.EWOULDBLOCK, "a new marker is locked by someone else", str(pending))
        owner = {
            "flavorkit_stage": _FORMAT,
            "target": target.name if target is not None else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created": time.time(),
        }
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
        if _CAN_LOCK:
            os.replace(pending, path / LOCK_NAME)  # the marker appears complete and already locked
        (path / "work").mkdir()
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Stage(path, target, fd)


def _lock_if_stale(folder: Path) -> tuple[int | None, Path | None]:
    """Take the lock of a flavorkit staging folder whose owner is gone; (None, None) otherwise."""
    if not _CAN_LOCK:
        return None, None  # no way to tell a live owner from a dead one: leave every folder
    lock = folder / LOCK_NAME
    try:
        # Read-write where allowed: on NFS, flock is emulated with fcntl locks, and an exclusive one
        # needs a file open for writing (flock(2), NOTES).
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError:
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None, None
    except OSError:
        return None, None  # no marker (not ours, or not finished), or a link
    try:
        locked = try_lock(fd)
    except OSError as exc:
        log.debug("cannot lock %s: %s", lock, exc)
        locked = False  # the filesystem cannot say whether the owner lives: leave it
    if not locked:
        os.close(fd)
        return None, None
    try:
        info = os.fstat(fd)
        now = os.stat(lock, follow_symlinks=False)
        if (info.st_dev, info.st_ino) != (now.st_dev, now.st_ino):
            raise OSError("the marker was replaced")  # another process reclaimed it meanwhile
        owner = json.loads(os.read(fd, 65536) or b"{}")
        if not isinstance(owner, dict) or owner.get("flavorkit_stage") != _FORMAT:
            raise ValueError("not a flavorkit staging marker")
        name = owner.get("target")
        if name is not None and (not isinstance(name, str) or name in ("", ".", "..") or "/" in name):
            raise ValueError(f"bad target name {name!r}")
    except (OSError, ValueError, RecursionError):
        os.close(fd)
        return None, None
    return fd, (folder.parent / name if name is not None else None)


_CAN_LOCK = sys.platform != "win32"


def _dispose(folder: Path, target: Path | None) -> bool:
    """Put a previous model back on a missing ``target``, then delete ``folder``; False if it is kept.

    The folder is kept (and the next call tries again) only when it still holds a previous model
    that could not be moved back, so no model is ever deleted for want of a rename.
    """
    backup = folder / "old"
    if target is not None and os.path.lexists(backup) and _vacant(target):
        try:
            if target.is_dir() and not target.is_symlink():
                target.rmdir()  # an empty directory made meanwhile; rename cannot replace it with a file
            os.replace(backup, target)
            log.warning("restored the previous model at %s after an interrupted packaging", target)
        except OSError as exc:
            log.warning("could not restore the previous model %s to %s (%s); it is kept there", backup, target, exc)
            return False
    _remove(folder)
    return True


def _remove(folder: Path) -> None:
    """Delete ``folder``, its marker last, so a removal cut short stays marked and is reclaimed later."""
    with suppress(OSError), os.scandir(folder) as entries:
        for entry in list(entries):
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with suppress(OSError):
                    os.unlink(entry.path)
    with suppress(OSError):
        os.unlink(folder / LOCK_NAME)
    shutil.rmtree(folder, ignore_errors=True)


def _vacant(target: Path) -> bool:
    """True when ``target`` is missing or an empty directory, so a previous model may go back there."""
    if not os.path.lexists(target):
        return True
    if target.is_dir() and not target.is_symlink():
        with suppress(OSError), os.scandir(target) as it:
            return next(it, None) is None
    return False
