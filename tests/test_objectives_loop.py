"""Every registered objective (``imitalign objectives``) trains through the loop: 6 steps on one fixed batch (the
whole training set, so the steps see the same examples) lower its training loss, and step 1 — where the policy
is its own reference — logs the loss the objective's formula gives at log-ratio 0 where that has a closed form."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from imitalign import objectives
from imitalign.config import load_config
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA
from tests.test_train import BAD, GOOD, write_demos, write_pairs

N = 16
STEPS = 6


def chi2(t):
    """A user Bregman generator (``package.module:function``): f(t) = (t − 1)² / 2, LSIF's up to a linear term."""
    return 0.5 * (t - 1.0) ** 2


OPTIONS = {"bregman": {"generator": f"{__name__}:chi2"}, "dpo": {"beta": 0.5}, "ipo": {"beta": 0.5},
           "hinge": {"beta": 0.5}}
# step-1 loss with the policy as its own reference (log-ratios 0, rewards 0), β = 0.5
AT_REFERENCE = {"dpo": math.log(2), "ipo": 1.0, "hinge": 1.0, "dil_bce": 2 * math.log(2)}


def _labelled(path: Path) -> Path:
    rng = random.Random(0)
    rows = [{"prompt": "write about sea", "response": " ".join(rng.choice(GOOD if i % 2 else BAD) for _ in range(4)),
             "label": i % 2} for i in range(N)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path: Path, name: str):
    kind = objectives.get(name).kind
    data = {"token": lambda p: write_demos(p, N, 2), "classifier": _labelled}.get(kind, lambda p: write_pairs(p, N, 2))
    raw = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 1},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(data(tmp_path / "data.jsonl"))}, "eval_fraction": 0.0, "chat_template": "none",
                 "max_length": 64},
        "objective": {"name": name, "options": OPTIONS.get(name, {})},
        "train": {"batch_size": N, "lr": 3e-3, "max_steps": STEPS, "log_every": 1, "schedule": "constant",
                  "warmup_ratio": 0.0},
    }
    return load_config(None, raw=raw)


def test_every_registered_objective_is_covered():
    assert set(objectives.names()) == {"bradley_terry", "bregman", "dil_bce", "dil_lsif", "dil_ukl",
                                       "discriminator_bce", "dpo", "hinge", "ipo", "iqlearn", "mle", "simpo"}


@pytest.mark.parametrize("name", objectives.names())
def test_objective_trains_through_the_loop(tmp_path, name):
    result = train(_cfg(tmp_path, name), quiet=True)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], (name, losses)
    if name in AT_REFERENCE:
        assert losses[0] == pytest.approx(AT_REFERENCE[name], rel=1e-5), (name, losses[0])
