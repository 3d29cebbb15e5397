"""Stages that write files: the pieces loops are made of (shared by the quickstart, AfD and the online loops).

A *stage* is finished when its manifest (:mod:`imitalign.manifest`) exists and every file it records — the
stage's data and its statistics, as one unit — still has the recorded size and content hash, and its recorded
inputs are still the files it was made from (:func:`stage_todo`, :func:`seal_stage`). The manifest is written
last, atomically, so a kill anywhere inside a stage leaves a stage that is redone; an edited or truncated file
is detected and its stage redone, and the run says so. Training stages are finished when the run folder holds
a ``summary.json`` written by the *same* configuration and a model folder that matches the manifest written
when it was saved (:func:`train_or_reuse`). Cached rows (:func:`read_cached_rows`) carry their content hash.
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

from imitalign import manifest
from imitalign.config import Config
from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.faults import fault
from imitalign.processes import barrier, is_main, main_decides, on_main

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def stage_manifest(folder: str | Path, stage: str) -> Path:
    return Path(folder) / f"manifest_{stage}.json"


def stage_todo(
    folder: str | Path,
    stage: str,
    inputs: Sequence[str | Path] | None = None,
    say: Callable[[str], None] = _say,
    outputs: Sequence[str | Path] = (),
) -> bool:
    """Whether stage ``stage`` of ``folder`` still has to run: its manifest is missing, or a file it records
    (outputs and ``inputs``) is not what was written, or its inputs are now other files. A stage that had been
    written (its manifest, or one of its ``outputs``, is there) and is not finished is reported through ``say``.
    The main process decides, for every process."""

    def decide() -> bool:
        path = stage_manifest(folder, stage)
        reason = manifest.check(path, inputs)
        if reason is not None and (path.exists() or any(Path(p).exists() for p in outputs)):
            say(f"{Path(folder).name} {stage}: {reason}; redoing the stage")
        return reason is not None

    return main_decides(decide() if is_main() else True)


def seal_stage(
    folder: str | Path,
    stage: str,
    outputs: Sequence[str | Path],
    inputs: Sequence[str | Path] = (),
    optional: Sequence[str | Path] = (),
) -> None:
    """Write the manifest of a finished stage (on the main process; the others wait): its ``outputs`` (and
    those of ``optional`` that exist), its ``inputs``. Call it once every output is in place."""

    def seal() -> None:
        fault(f"stage:{stage}:sealing")
        present = [p for p in optional if Path(p).exists()]
        manifest.write(stage_manifest(folder, stage), [*outputs, *present], inputs)

    on_main(seal)


def train_or_reuse(
    cfg: Config, say: Callable[[str], None] = _say, quiet: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Train, unless the run folder already holds a finished run of exactly this configuration whose model
    folder is the one that was saved; returns the run's ``summary.json``. An unfinished or different run, or a
    model folder that does not match its manifest (truncated, edited, never sealed), is removed and trained
    again, and the run says why — or, with ``resume``, an unfinished run with a checkpoint of this configuration
    is continued from its newest checkpoint. Under ``accelerate launch`` every process trains (data-parallel);
    the main process decides and cleans up."""
    from imitalign.train.loop import train

    run_dir = Path(cfg.run.output_dir)
    summary, saved = run_dir / "summary.json", run_dir / "config.yaml"

    def reusable() -> bool:
        if not (summary.exists() and saved.exists() and _same_config(saved, cfg)):
            return False
        reason = manifest.check_model(run_dir / "model")
        if reason is not None:
            say(f"{run_dir}: the trained model is not the one that was saved ({reason}): training again")
        return reason is None

    if main_decides(reusable() if is_main() else False):
        if is_main():
            say(f"reusing {run_dir}")
        return json.loads(summary.read_text())
    go_on = resume and main_decides(_resumable(run_dir, cfg))
    if is_main() and run_dir.exists() and not go_on:
        shutil.rmtree(run_dir)  # an unfinished or different run: start it again
    if go_on and is_main():
        say(f"resuming {run_dir} from its newest checkpoint")
    barrier()
    # (returns on every process once the main one has written summary.json; the model folder is sealed by then)
    result = train(cfg, quiet=quiet, resume=go_on)
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
    from the same settings) and the file's size and content hash recorded when it was written, else None (a
    cache whose file changed since is reported in the log, and rebuilt)."""
    meta = path.with_suffix(".meta.json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        recorded = json.loads(meta.read_text())
    except ValueError:
        recorded = {}
    if recorded.get("fingerprint") != fingerprint:
        return None
    now = manifest.digest(path)
    if (recorded.get("bytes"), recorded.get("sha256")) != (now["bytes"], now["sha256"]):
        log.warning("cache %s changed since it was written (size or content hash differs): rebuilding it", path)
        return None
    return read_jsonl(path)


def write_cached_rows(path: Path, rows: Sequence[dict[str, Any]], fingerprint: str | None = None) -> None:
    """Write ``rows`` as JSONL (atomically) and, with ``fingerprint``, the ``.meta.json`` that
    :func:`read_cached_rows` checks (written last, atomically: the settings, the file's size and hash)."""
    write_jsonl(path, rows)
    if fingerprint is not None:
        write_json(path.with_suffix(".meta.json"), {"fingerprint": fingerprint, **manifest.digest(path)})


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
