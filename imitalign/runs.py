"""Who owns a run folder: one process at a time (an advisory lock), and a record of what wrote it.

    with owned(folder, "train", fingerprint, overwrite=False):
        ...   # the command's work

* **The lock** is ``fcntl.flock`` on ``<folder>/.imitalign.lock``, held for the command's lifetime. The kernel
  drops it when the process ends, however it ends (``kill -9`` included), so a lock file left behind by a dead
  process never blocks: only a live holder does. A second command on the folder stops at once with one
  sentence naming the holder (pid, command, start time) — a :class:`RunBusy`, exit 2 at the CLI. Under
  ``accelerate launch`` only the main process holds it; the others wait at the broadcast that tells them
  whether it was taken.
* **The record** ``<folder>/run.json`` says which command and which configuration (a fingerprint of what is
  trained, not of where it lives) wrote the folder, and whether that run finished. A command with a different
  configuration on a folder holding a *finished* run is refused (:class:`RunConflict`) unless ``overwrite`` is
  given, which empties the folder first. On an unfinished run (one that failed or was killed) the command's own
  checks decide (``train`` refuses a folder with checkpoints of another configuration; ``iterate`` one whose
  ``iterate_config.yaml`` differs); ``overwrite`` empties it too.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imitalign.config import ConfigError

LOCK_FILE = ".imitalign.lock"
RECORD_FILE = "run.json"


class RunBusy(ConfigError):
    """Another live process holds the run folder."""


class RunConflict(ConfigError):
    """The run folder holds a run of a different configuration (or command)."""


@dataclass
class FolderLock:
    """A held lock: the open descriptor (the lock lives as long as it is open) and the lock file's path."""

    fd: int
    path: Path

    def release(self) -> None:
        """Remove the lock file while still holding it, then drop the lock (a process that opened the old file
        meanwhile sees that it is gone, and retries on a fresh one)."""
        if self.fd < 0:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "a process that is still starting"
    except OSError:
        return "another process"


def acquire(folder: str | Path, command: str, wait: bool = False) -> FolderLock:
    """Take ``folder``'s lock (creating the folder). Raises :class:`RunBusy` when a live process holds it, or
    with ``wait`` blocks until it is free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunBusy(
                f"{folder} is in use by {_holder(path)}: one process per run folder — wait for it to finish, "
                "or give this run another output folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released (and unlinked) by its holder after we opened it: try again on the new file
            os.close(fd)
            continue
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} (imitalign {command}, since {stamp})\n".encode())
        return FolderLock(fd, path)


def fingerprint_of(dumped: dict, leave_out: dict | set | None = None) -> str:
    """16 hex digits of the sha256 of ``dumped`` (a config's JSON dump) without the fields of ``leave_out``
    (``{"run": {"output_dir", "name"}}``: where a run lives and what it is called are not what it trains)."""

    def drop(node: Any, spec: Any) -> Any:
        if not isinstance(node, dict) or spec is None:
            return node
        if isinstance(spec, set):
            return {k: v for k, v in node.items() if k not in spec}
        return {k: drop(v, spec.get(k)) for k, v in node.items()}

    kept = drop(dumped, leave_out or {})
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


WHERE = {"run": {"output_dir", "name"}}  # where a run lives and what it is called


def train_fingerprint(cfg: Any) -> str:
    """What an ``imitalign train`` config trains: everything but where it lives (``run.output_dir``), what it is
    called (``run.name``) and how it is logged (``log_every``, ``eval_every``, ``save_every``, ``trackers``) —
    a moved or renamed run folder resumes."""
    return fingerprint_of(
        cfg.model_dump(mode="json"),
        {**WHERE, "train": {"log_every", "eval_every", "save_every", "trackers"}},
    )


def legacy_train_fingerprint(cfg: Any) -> str:
    """The checkpoint fingerprint of earlier versions (it held ``run.output_dir`` and ``run.name``): checkpoints
    written by them still resume."""
    keep = cfg.model_dump(mode="json", exclude={"train": {"log_every", "eval_every", "save_every", "trackers"}})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def read_record(folder: str | Path) -> dict | None:
    """The folder's ``run.json`` (None without one, or when it is not a readable record)."""
    path = Path(folder) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: str | Path, command: str, fingerprint: str, finished: bool) -> None:
    """Write ``run.json`` atomically."""
    folder = Path(folder)
    tmp = folder / f".{RECORD_FILE}.tmp{os.getpid()}"
    record = {"command": command, "fingerprint": fingerprint, "finished": finished, "time": round(time.time(), 3)}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / RECORD_FILE)


def empty_folder(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file."""
    for child in folder.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def claim(folder: str | Path, command: str, fingerprint: str, overwrite: bool = False) -> None:
    """Check that ``folder`` holds nothing, a run of this command and configuration, or an unfinished one; a
    finished run of another is a :class:`RunConflict` unless ``overwrite`` (which empties the folder, also of an
    unfinished run). Records this run as unfinished."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None and (record.get("command"), record.get("fingerprint")) != (command, fingerprint):
        state = "a finished" if record.get("finished") else "an unfinished"
        what = f"imitalign {record.get('command')}, configuration {record.get('fingerprint')}"
        if not overwrite and not record.get("finished"):  # (a run that failed or was killed: the command's own
            write_record(folder, command, fingerprint, finished=False)  # resume checks decide what is kept)
            return
        if not overwrite:
            raise RunConflict(
                f"{folder} holds {state} run of a different configuration ({what}; this one is {fingerprint}): "
                "pass --overwrite to replace it, or give this run another output folder"
            )
        print(f"--overwrite: removing {state} run ({what}) from {folder}", flush=True)
        empty_folder(folder)
    write_record(folder, command, fingerprint, finished=False)


@contextmanager
def owned(
    folder: str | Path, command: str, fingerprint: str | None = None, *, overwrite: bool = False
) -> Iterator[None]:
    """Hold ``folder`` for the block (lock, then :func:`claim` when a ``fingerprint`` is given; the record is
    marked finished when the block ends without an error). Under ``accelerate launch`` the main process does
    this and every process raises the same error when it fails."""
    from imitalign.processes import from_main, is_main

    lock, error = None, None
    folder = Path(folder)
    existed, prior = folder.exists(), read_record(folder)
    if is_main():
        try:
            lock = acquire(folder, command)
            if fingerprint is not None:
                claim(folder, command, fingerprint, overwrite)
        except ConfigError as e:
            error = (type(e).__name__, str(e))
            if lock is not None:
                lock.release()
                lock = None
    error = from_main(error)
    if error is not None:
        raise {"RunBusy": RunBusy, "RunConflict": RunConflict}.get(error[0], ConfigError)(error[1])
    remove = False
    try:
        yield
        if lock is not None and fingerprint is not None:
            write_record(folder, command, fingerprint, finished=True)
    except BaseException:
        if lock is not None:
            remove = _undo_claim(folder, existed, prior)
        raise
    finally:
        if lock is not None:
            lock.release()
        if remove:
            try:
                folder.rmdir()
            except OSError:
                pass


def _undo_claim(folder: Path, existed: bool, prior: dict | None) -> bool:
    """After a failure before the command wrote anything (bad data, a missing model, ...): the folder as it was —
    its earlier record restored, or (returns True) to be removed when this command created it — so a corrected
    rerun starts clean. A run that wrote something keeps its (unfinished) record."""
    if any(child.name not in (LOCK_FILE, RECORD_FILE) for child in folder.iterdir()):
        return False
    if prior is None:
        (folder / RECORD_FILE).unlink(missing_ok=True)
    else:
        write_record(folder, str(prior.get("command")), str(prior.get("fingerprint")), bool(prior.get("finished")))
    return not existed
