"""Manifests: the size and SHA-256 of every file of a unit of work, written last and atomically.

A stage (or a model folder, or a cache) is *done* when its manifest exists and every file it names still has
the recorded size and content hash — not when its files exist. A kill before the manifest is written leaves a
unit that is redone; a file edited, truncated or removed afterwards is detected (:func:`check`, which says
which file and how it differs). Inputs can be recorded too: a stage whose input changed is redone as well.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VERSION = 1


def digest(path: str | Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex, "mtime_ns": m}`` of a file (read in 1 MiB chunks); ``m`` is the
    modification time when the read began, so a file written while it was hashed never matches it later."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        mtime_ns = os.fstat(f.fileno()).st_mtime_ns
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest(), "mtime_ns": mtime_ns}


def _key(path: Path, base: Path) -> str:
    """A file's name in a manifest: relative to the manifest's folder when inside it, else absolute."""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def _files(paths: Iterable[str | Path], base: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file() and x.name != MODEL_MANIFEST):
                out[_key(f, base)] = digest(f)
        else:
            out[_key(p, base)] = digest(p)
    return out


def write(path: str | Path, outputs: Iterable[str | Path], inputs: Iterable[str | Path] = (), **extra: Any) -> Path:
    """Record ``outputs`` (files or folders, every file under them) and ``inputs`` in the manifest ``path``,
    atomically (a temporary file renamed into place): write it after the outputs are complete."""
    path = Path(path)
    base = path.parent
    body = {"version": VERSION, "outputs": _files(outputs, base), "inputs": _files(inputs, base), **extra}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _differs(name: str, want: dict[str, Any], base: Path, sizes_only: bool = False, full: bool = False) -> str | None:
    """Why the file ``name`` is not the one recorded in ``want``, or None. Its content is re-hashed only when its
    size or modification time differs from the recorded ones (or with ``full``): a file whose size and
    nanosecond mtime are those it had when hashed is taken as unchanged — the check make and rsync rely on, and
    what keeps the check of a multi-GB model folder from reading it again at every stage. Blind spot: a write
    that keeps the size and then resets the mtime by hand; ``full=True`` re-hashes every file."""
    p = Path(name) if os.path.isabs(name) else base / name
    if not p.is_file():
        return f"{p} is missing"
    st = p.stat()
    if st.st_size != want.get("bytes"):
        return f"{p} has {st.st_size} bytes, {want.get('bytes')} were written"
    if sizes_only or (not full and want.get("mtime_ns") == st.st_mtime_ns):
        return None
    if digest(p)["sha256"] != want.get("sha256"):
        return f"{p} changed since it was written (its content hash differs)"
    return None


def check(
    path: str | Path, inputs: Iterable[str | Path] | None = None, sizes_only: bool = False, full: bool = False
) -> str | None:
    """None when the manifest ``path`` exists and every file it records is unchanged (and, given ``inputs``,
    they are the inputs it records); else the reason, in words. ``sizes_only``: compare sizes, not hashes (a
    cheap check for truncation before a load). A file is re-hashed only when its size or mtime moved, unless
    ``full`` (see :func:`_differs`)."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} (its manifest) is missing: the stage was not finished"
    try:
        body = json.loads(path.read_text())
        outputs, recorded_inputs = dict(body["outputs"]), dict(body.get("inputs", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path} is not a readable manifest"
    base = path.parent
    for name, want in {**outputs, **recorded_inputs}.items():
        reason = _differs(name, want, base, sizes_only, full)
        if reason:
            return reason
    if inputs is not None:
        now = {_key(Path(p), base) for p in inputs}
        if now != set(recorded_inputs):
            return f"its inputs are now {sorted(now)}, it was made from {sorted(recorded_inputs)}"
    return None


# ------------------------------------------------------------------------------------------ model folders
MODEL_MANIFEST = "imitalign_manifest.json"


def seal_model(model_dir: str | Path) -> Path:
    """Record every file of a saved model folder (its weights, config, tokenizer) in the folder's manifest."""
    folder = Path(model_dir)
    return write(folder / MODEL_MANIFEST, [folder])


def check_model(model_dir: str | Path, sizes_only: bool = False, full: bool = False) -> str | None:
    """None when the model folder matches the manifest written when it was saved; else the reason (a truncated
    weights file, a file edited or removed, no manifest: the save did not finish)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return f"{folder} does not exist"
    return check(folder / MODEL_MANIFEST, sizes_only=sizes_only, full=full)
