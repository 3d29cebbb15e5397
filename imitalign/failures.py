"""Operational failures in one sentence: a full disk, a folder that cannot be written, a local model path that
does not exist — said plainly, before (or instead of) a long traceback.

* :func:`ensure_space` checks before a large write (a checkpoint, a model) that the folder's filesystem has
  room for it, naming the folder and how much is needed and free.
* :func:`describe_os_error` turns an ``OSError`` that escaped (no space, permission denied, read-only
  filesystem) into one sentence naming the file; the CLI prints it and exits 2.
* :func:`check_local_path`: a model path that looks local (starts with ``/``, ``./``, ``../``, ``~``, has
  more than one ``/``, or its first part is a local folder) and does not exist is an error at once — never a
  hub lookup that retries for a minute before blaming the internet connection.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from imitalign.config import ConfigError


class NoSpace(ConfigError):
    """Not enough free space for a write."""


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_space(folder: str | Path, need_bytes: int, what: str, margin: float = 1.1) -> None:
    """Raise :class:`NoSpace` (one sentence: folder, needed, free) when ``folder``'s filesystem has less than
    ``margin × need_bytes`` free for ``what``."""
    free = shutil.disk_usage(_existing_parent(Path(folder))).free
    if free < need_bytes * margin:
        raise NoSpace(
            f"no space left for {what} in {folder}: it needs about {_mb(need_bytes)}, {_mb(free)} are free on "
            "that filesystem; free some space or give the run another output folder"
        )


_FULL = ("No space left on device", "os error 28", "StorageFull")


def describe_os_error(e: BaseException) -> str | None:
    """One sentence for an operational ``OSError`` (no space, permission denied, read-only filesystem), naming
    the file — or for a library's error that wraps a full disk (torch's and safetensors' writers); None for
    other errors."""
    if not isinstance(e, OSError):
        if any(s in str(e) for s in _FULL):
            return "no space left on the device while writing; free some space or give the run another output folder"
        return None
    target = e.filename or "a file"
    if e.errno == errno.ENOSPC:
        where = Path(str(e.filename)).parent if e.filename else None
        free = f" ({_mb(shutil.disk_usage(_existing_parent(where)).free)} free)" if where is not None else ""
        return (
            f"no space left on the device while writing {target}{free}; free some space or give the run another "
            "output folder"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {target} cannot be written or read by this user; fix its permissions or " \
               "give the run another output folder"
    if e.errno == errno.EROFS:
        return f"{target} is on a read-only filesystem; give the run an output folder on a writable one"
    return None


def looks_local(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (``org/name``)."""
    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", ".."):
        return True
    parts = name.replace("\\", "/").split("/")
    if len(parts) > 2:  # hub ids have at most one slash
        return True
    return len(parts) == 2 and Path(parts[0]).is_dir()  # runs/model when ./runs exists


def check_local_path(name: str | None, what: str = "model") -> None:
    """A :class:`ConfigError` when ``name`` looks like a local path that does not exist."""
    if name is None or not looks_local(name):
        return
    path = Path(os.path.expanduser(name))
    if not path.exists():
        parent = _existing_parent(path)
        raise ConfigError(
            f"{what} path {name} does not exist (nearest existing folder: {parent}); it looks like a local path, "
            "so it is not looked up on the hub"
        )
