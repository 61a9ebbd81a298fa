"""Files the library writes: each goes through a temporary beside it and an atomic rename (a kill or a full disk
never leaves a torn file), temporaries of killed writes are cleaned up by name, output folders are made with one-line
errors, and a run folder is locked while a process writes into it."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

# temporaries are ".NAME.<8 random characters>.parscale-ear.tmp" beside the file they become: a name no user file
# has by accident, so removing stale ones never touches anything else
TEMP_SUFFIX = ".parscale-ear.tmp"
_TEMP_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room for the file: said in one line naming it
SHARED_LOCK_NAME = ".parscale-ear.shared.lock"  # held by every process working in a shared folder
LOCK_NAME = ".parscale-ear.lock"  # in a run folder: held (flock) by the process that trains into it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`
    (then fsync the folder), else remove it. A kill or power loss never leaves a torn `path`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        tmp = Path(name)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        if e.errno not in _FULL:
            raise
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise OSError(f"cannot write {path}: {e.strerror or e} ({kept}); free some space") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (folders: where the OS allows opening them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete temporaries that `atomic_path` left beside `folder/NAME` (a killed write), for the given NAMEs
    (glob patterns, e.g. "step_*.png") only; never the files themselves. Returns what was removed."""
    import fnmatch
    import re

    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for name in names:
        pattern = re.compile(r"\." + fnmatch.translate(name).removeprefix("(?s:").removesuffix(")\\Z")
                             + r"\." + _TEMP_RANDOM + re.escape(TEMP_SUFFIX) + r"\Z", re.S)
        for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file() and pattern.match(tmp.name):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` atomically (indented, sorted keys)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically: a kill or a full disk mid-write never leaves a broken file. torch.save writes
    through a Python file, so a full disk is an OSError (ENOSPC), not torch's unexplained RuntimeError."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def prepare_output_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create folder `path` (and parents) if needed, with a one-line error where it cannot be one."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: the folder is not writable")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock (flock on FOLDER/.parscale-ear.lock) while the block runs: a second process asking for
    it gets a one-line error at once instead of writing into the same files. The lock file is removed when the block
    ends (the system releases the lock of a process that dies); a process that opened the file just before its
    holder removed it sees that and opens it again, so two processes never hold two locks of one folder."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(f"{what} {folder} is in use by another process training into it (it holds "
                                  f"{LOCK_NAME}); wait for it to end or choose another {what}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed it between our open and our lock: open the path again
    else:
        raise BlockingIOError(f"{what} {folder}: its lock file {LOCK_NAME} keeps being replaced; another process is "
                              f"starting and stopping trainings in it")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: whoever opened it meanwhile finds it gone and opens it again
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def shared_folder(folder: str | os.PathLike, stale: Iterable[str]) -> Iterator[None]:
    """Work in a folder that other processes may work in at the same time (a VAE run's latent shards and teacher
    pairs, shared by every generator run on it): hold a shared lock (flock on FOLDER/.parscale-ear.shared.lock) while
    the block runs, and remove the temporaries of killed writes (`stale`: `remove_stale_temporaries`' patterns) only
    where no other process holds it, so a temporary another process is writing is never taken from it."""
    import fcntl

    fd = os.open(Path(folder) / SHARED_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone in the folder: earlier writers are dead
            remove_stale_temporaries(folder, stale)
        except BlockingIOError:
            pass  # others are at work: their temporaries are alive
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
