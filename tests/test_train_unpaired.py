"""Unpaired feedback end to end on a tiny Llama, from a KTO-layout file (messages + boolean label): unpaired
DIL, KTO and BCO learn to tell desirable from undesirable responses; ``mle`` trains on the desirable rows only
and says how many it dropped; BCO's running reward shift survives a resume; KTO's on-the-fly reference equals
the precomputed one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imitalign.config import load_config
from imitalign.gym.task import TOPICS as GYM_TOPICS
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.train import loop
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA

GOOD, BAD = list(GYM_TOPICS["sea"]), list(GYM_TOPICS["city"])
TOPICS = ["forest", "space", "music", "food"]


def write_kto(path: Path, n: int, seed: int = 0) -> Path:
    """KTO layout (LLaMA-Factory's kto_en_demo, TRL's unpaired conversational): desirable responses use one
    word set, undesirable ones another; 3 desirable rows for every 2 undesirable ones."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            label = i % 5 < 3
            words = " ".join(rng.choice(GOOD if label else BAD) for _ in range(rng.randint(2, 5)))
            messages = [
                {"role": "user", "content": f"write about {rng.choice(TOPICS)} , short =>"},
                {"role": "assistant", "content": words},
            ]
            f.write(json.dumps({"messages": messages, "label": label}) + "\n")
    return path


def make_cfg(tmp_path: Path, objective: str, options: dict | None = None, reference: dict | None = None, **train_kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = {
        "run": {"output_dir": str(tmp_path / f"run_{objective}"), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "data": {
            "train": {"path": str(write_kto(tmp_path / "kto.jsonl", 160))},
            "eval_fraction": 0.2,
            "chat_template": "none",
            "max_length": 64,
        },
        "objective": {"name": objective, "options": options or {}},
        "reference": reference or {},
        "train": {"batch_size": 8, "lr": 3e-3, "epochs": 2, "warmup_ratio": 0.0, "log_every": 5,
                  "schedule": "constant", **train_kw},
    }  # fmt: skip
    return load_config(None, raw=raw)


@pytest.mark.parametrize(
    ("objective", "options"), [("kto", {"beta": 0.5}), ("bco", {"beta": 0.5}), ("dil_bce_unpaired", {})]
)
def test_unpaired_objectives_separate_desirable_from_undesirable(tmp_path, objective, options):
    result = train(make_cfg(tmp_path, objective, options), quiet=True)
    ev = result.eval_metrics
    assert ev["rewards/desirable"] > 0 > ev["rewards/undesirable"], ev
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["kind"] == "unpaired" and report["train"]["labels"] == {"desirable": 96, "undesirable": 64}
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    key = {"kto": "train/kl", "bco": "train/delta", "dil_bce_unpaired": "train/ratio/clamped"}[objective]
    assert any(key in r for r in rows)


def test_mle_on_a_labelled_file_trains_on_desirable_rows_only(tmp_path):
    result = train(make_cfg(tmp_path, "mle"), quiet=True)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["train"]["undesirable_dropped"] == 64 and report["train"]["examples"] == 96 - 19
    assert "64 undesirable rows (label false) dropped" in " ".join(report["train"]["notes"])


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_bco_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    whole = train(make_cfg(tmp_path / "a", "bco", {"beta": 0.5}, save_every=4, epochs=1), quiet=True)
    original = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after a checkpoint")

    cfg = make_cfg(tmp_path / "b", "bco", {"beta": 0.5}, save_every=4, epochs=1)
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", original)
    state = json.loads((Path(cfg.run.output_dir) / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert state["loss_state"]["reward_shift"]["counts"][0] > 0
    resumed = train(cfg, resume=True, quiet=True)
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kto_reference_on_the_fly_equals_precomputed(tmp_path):
    pre = train(make_cfg(tmp_path / "a", "kto", {"beta": 0.5}, epochs=1), quiet=True)
    live = train(make_cfg(tmp_path / "b", "kto", {"beta": 0.5}, {"precompute": False}, epochs=1), quiet=True)
    a, b = _weights(pre.model_dir), _weights(live.model_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
