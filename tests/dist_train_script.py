"""Run by tests/test_distributed.py: training runs from JSON configs, one after the other in the same processes
(``python ... A.json [B.json ...]``), alone or under ``accelerate launch --multi_gpu --num_processes N``."""

from __future__ import annotations

import json
import sys

from imitalign.config import load_config
from imitalign.train.loop import train

if __name__ == "__main__":
    for path in sys.argv[1:]:
        cfg = load_config(None, raw=json.loads(open(path).read()))
        train(cfg, quiet=True)
