"""Stages that write files: the pieces loops are made of (shared by the quickstart, AfD and the online loops).

A *stage* is finished when its output exists: every output is written atomically (a temporary name renamed
into place), so an interrupted stage leaves no file that looks finished, and a rerun redoes exactly the
unfinished stages. Training stages are finished when the run folder holds a ``summary.json`` written by the
*same* configuration (:func:`train_or_reuse`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from imitalign.config import Config
from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.processes import barrier, is_main, main_decides

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def todo(path: str | Path) -> bool:
    """Whether the stage whose output is ``path`` still has to run — the main process's view, on every process
    (so a process that looks after the main one has written the file still runs the stage with it)."""
    return main_decides(not Path(path).exists())


def train_or_reuse(
    cfg: Config, say: Callable[[str], None] = _say, quiet: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Train, unless the run folder already holds a finished run of exactly this configuration; returns the
    run's ``summary.json``. An unfinished or different run in the folder is removed and trained again — or, with
    ``resume``, an unfinished run with a checkpoint of this configuration is continued from its newest checkpoint.
    Under ``accelerate launch`` every process trains (data-parallel); the main process decides and cleans up."""
    from imitalign.train.loop import train

    run_dir = Path(cfg.run.output_dir)
    summary, saved = run_dir / "summary.json", run_dir / "config.yaml"
    if main_decides(summary.exists() and saved.exists() and _same_config(saved, cfg)):
        if is_main():
            say(f"reusing {run_dir}")
        return json.loads(summary.read_text())
    go_on = resume and main_decides(_resumable(run_dir, cfg))
    if is_main() and run_dir.exists() and not go_on:
        shutil.rmtree(run_dir)  # an unfinished or different run: start it again
    if go_on and is_main():
        say(f"resuming {run_dir} from its newest checkpoint")
    barrier()
    result = train(cfg, quiet=quiet, resume=go_on)  # (returns on every process once the main one wrote summary.json)
    return json.loads((result.run_dir / "summary.json").read_text())


def _resumable(run_dir: Path, cfg: Config) -> bool:
    """The run folder holds a complete checkpoint written by this configuration."""
    from imitalign.train.checkpoint import STATE_FILE, latest_checkpoint
    from imitalign.train.loop import config_fingerprint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return False
    return json.loads((ckpt / STATE_FILE).read_text()).get("config_fingerprint") == config_fingerprint(cfg)


def _same_config(saved: Path, cfg: Config) -> bool:
    """Whether the run config saved in ``saved`` is ``cfg``. The saved YAML is validated with the current schema
    first, so a field added later with a default does not invalidate finished runs."""
    from imitalign.config import ConfigError, load_config

    raw = yaml.safe_load(saved.read_text())
    if raw == cfg.model_dump(mode="json"):
        return True
    try:
        return load_config(None, raw=raw).model_dump(mode="json") == cfg.model_dump(mode="json")
    except ConfigError:  # a field that no longer exists: a different configuration
        return False


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def settings_fingerprint(**fields: Any) -> str:
    """16 hex digits of the sha256 of ``fields`` as sorted JSON (non-JSON values by ``str``): what a cached
    file was made from."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cached_rows(path: Path, fingerprint: str) -> list[dict[str, Any]] | None:
    """The rows of the JSONL file ``path`` when its ``.meta.json`` beside it holds ``fingerprint`` (it was made
    from the same settings), else None."""
    meta = path.with_suffix(".meta.json")
    if not (path.is_file() and meta.is_file()):
        return None
    if json.loads(meta.read_text()).get("fingerprint") != fingerprint:
        return None
    return read_jsonl(path)


def write_cached_rows(path: Path, rows: Sequence[dict[str, Any]], fingerprint: str | None = None) -> None:
    """Write ``rows`` as JSONL (atomically) and, with ``fingerprint``, the ``.meta.json`` that
    :func:`read_cached_rows` checks."""
    write_jsonl(path, rows)
    if fingerprint is not None:
        path.with_suffix(".meta.json").write_text(json.dumps({"fingerprint": fingerprint}) + "\n")


def model_fingerprint(model_dir: str | Path) -> str:
    """16 hex digits of the sha256 of a model folder's weight files (``*.safetensors``/``*.bin``, by name):
    equal iff the weights are byte-identical."""
    folder = Path(model_dir)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
