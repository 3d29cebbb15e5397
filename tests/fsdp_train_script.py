"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2``: one training run from a JSON config.

``python fsdp_train_script.py CONFIG.json [--resume] [--stop-after-checkpoint]``: with ``--stop-after-checkpoint``
every process leaves right after the first checkpoint is complete (a kill at that point, as far as the run
folder can tell); ``--resume`` continues from the newest checkpoint."""

from __future__ import annotations

import json
import sys

import imitalign.train.checkpoint as checkpoint
from imitalign.config import load_config
from imitalign.train.loop import train


def _stop_after_checkpoint() -> None:
    original = checkpoint.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise SystemExit(0)

    for module in list(sys.modules.values()):  # wherever the loop imported it from
        ours = getattr(module, "__name__", "").startswith("imitalign.")
        if ours and getattr(module, "save_checkpoint", None) is original:
            module.save_checkpoint = save_then_stop


if __name__ == "__main__":
    if "--stop-after-checkpoint" in sys.argv:
        _stop_after_checkpoint()
    cfg = load_config(None, raw=json.loads(open(sys.argv[1]).read()))
    train(cfg, resume="--resume" in sys.argv, quiet=True)
