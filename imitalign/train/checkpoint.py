"""Atomic checkpoints: written to ``step-N.tmp`` and renamed to ``step-N`` only once complete.

A checkpoint folder holds ``accelerate``'s state (model, optimiser, scheduler, RNG states of every process —
so DDP/FSDP/DeepSpeed states are saved the way those back-ends expect) and ``trainer_state.json`` (step,
epoch, the config fingerprint). A folder without ``trainer_state.json`` or with a ``.tmp`` suffix is never
used for resume; the newest complete one is. Only the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from imitalign.faults import fault

STATE_FILE = "trainer_state.json"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    fault("checkpoint:written")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path) -> dict[str, Any]:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
