"""Run by tests/test_distributed.py: one training run from a JSON config (``python ... CONFIG.json``), alone
or under ``accelerate launch --num_processes N --cpu``."""

from __future__ import annotations

import json
import sys

from imitalign.config import load_config
from imitalign.train.loop import train

if __name__ == "__main__":
    cfg = load_config(None, raw=json.loads(open(sys.argv[1]).read()))
    train(cfg, quiet=True)
