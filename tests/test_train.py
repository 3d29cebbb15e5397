"""The training loop end to end on a tiny Llama: learning, resume, stopping on a non-finite loss."""

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
from imitalign.train.loop import TrainingError, train
from tests.helpers import TINY_LLAMA

GOOD = list(GYM_TOPICS["sea"])
BAD = list(GYM_TOPICS["city"])
TOPICS = ["forest", "space", "music", "food"]


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """Pairs whose chosen response uses words of one set and the rejected of another: learnable at once."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            topic = rng.choice(TOPICS)
            good = " ".join(rng.choice(GOOD) for _ in range(rng.randint(2, 5)))
            bad = " ".join(rng.choice(BAD) for _ in range(rng.randint(2, 5)))
            f.write(json.dumps({"prompt": f"write about {topic} , short =>", "chosen": good, "rejected": bad}) + "\n")
    return path


def write_demos(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            topic = rng.choice(TOPICS)
            f.write(
                json.dumps(
                    {
                        "prompt": f"write about {topic} , short =>",
                        "response": f"{topic} {rng.choice(GOOD)} {rng.choice(GOOD)} .",
                    }
                )
                + "\n"
            )
    return path


def make_cfg(tmp_path: Path, objective: str, options: dict | None = None, **train_kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    kind_file = (
        write_demos(tmp_path / "demos.jsonl", 96, 0)
        if objective in ("mle", "iqlearn")
        else write_pairs(tmp_path / "pairs.jsonl", 160, 0)
    )
    raw = {
        "run": {"output_dir": str(tmp_path / f"run_{objective}"), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "data": {"train": {"path": str(kind_file)}, "eval_fraction": 0.2, "chat_template": "none", "max_length": 64},
        "objective": {"name": objective, "options": options or {}},
        "train": {
            "batch_size": 8,
            "lr": 3e-3,
            "epochs": 2,
            "warmup_ratio": 0.0,
            "log_every": 5,
            "schedule": "constant",
            **train_kw,
        },
    }
    return load_config(None, raw=raw)


@pytest.mark.parametrize(("objective", "options"), [("dpo", {"beta": 0.5}), ("dil_lsif", {}), ("dil_bce", {})])
def test_preference_training_raises_heldout_accuracy(tmp_path, objective, options):
    cfg = make_cfg(tmp_path, objective, options)
    result = train(cfg, quiet=True)
    assert result.eval_metrics["accuracy"] >= 0.9, result.eval_metrics
    assert result.eval_metrics["rewards/margin"] > 0
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r and "tokens_per_s" in r and "peak_mem_mb" in r for r in rows)
    # a standard model folder that transformers loads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(result.model_dir)
    AutoTokenizer.from_pretrained(result.model_dir)
    assert (result.run_dir / "config.yaml").exists()


def test_mle_and_iqlearn_lower_heldout_nll(tmp_path):
    first = None
    for objective in ("mle", "iqlearn"):
        cfg = make_cfg(tmp_path, objective, {"lam": 0.1} if objective == "iqlearn" else {}, epochs=6)
        result = train(cfg, quiet=True)
        # uniform over the vocabulary is log(|V|) ≈ 5.3; the responses have ~3.3 nats of real entropy per 4 tokens
        assert result.eval_metrics["nll"] < 1.6, result.eval_metrics
        first = first or result
    assert first is not None


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    whole = train(make_cfg(tmp_path / "a", "dpo", {"beta": 0.5}, save_every=4), quiet=True)

    original = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after a checkpoint")

    cfg = make_cfg(tmp_path / "b", "dpo", {"beta": 0.5}, save_every=4)
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", original)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, quiet=True)  # refuses to silently start over in a folder with checkpoints
    resumed = train(cfg, resume=True, quiet=True)
    assert resumed.steps == whole.steps
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = make_cfg(
        tmp_path,
        "dil_lsif",
        {"length_normalize": False, "max_log_ratio": 1e9},
        lr=1e12,
        save_every=1,
        max_grad_norm=None,
    )
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg, quiet=True)
    ckpts = list((Path(cfg.run.output_dir) / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "trainer_state.json").exists() for c in ckpts)
    assert not (Path(cfg.run.output_dir) / "model").exists()


@pytest.mark.parametrize(
    ("objective", "options", "lora"), [("dpo", {"beta": 0.5}, True), ("mle", {}, False)], ids=["dpo-lora", "mle"]
)
def test_resume_after_a_kill_mid_checkpoint_equals_uninterrupted_run(tmp_path, monkeypatch, objective, options, lora):
    """The hard path: cosine schedule with warm-up, gradient accumulation, LoRA (DPO; its reference is the
    adapter-disabled model) or the token objective, and a kill *while* the second checkpoint is written (its
    ``.tmp`` folder holds a partial state). Resume continues from the first, complete checkpoint; the final
    weights equal an uninterrupted run's bit for bit (CPU)."""
    hard = {"schedule": "cosine", "warmup_ratio": 0.3, "batch_size": 4, "grad_accum": 2, "max_steps": 9,
            "save_every": 3, "log_every": 1}

    def cfg_in(folder):
        cfg = make_cfg(folder, objective, options, **hard)
        if lora:
            cfg = load_config(None, raw={**cfg.model_dump(mode="json"),
                                         "model": {**cfg.model.model_dump(mode="json"),
                                                   "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}})
        return cfg

    whole = train(cfg_in(tmp_path / "a"), quiet=True)
    original, calls = loop.save_checkpoint, []

    def die_mid_save(accelerator, run_dir, step, state, keep):
        calls.append(step)
        if len(calls) == 1:
            return original(accelerator, run_dir, step, state, keep)
        tmp = Path(run_dir) / "checkpoints" / f"step-{step:07d}.tmp"
        tmp.mkdir(parents=True)
        accelerator.save_state(str(tmp), safe_serialization=True)  # the state is written, trainer_state is not
        raise KeyboardInterrupt("simulated kill while a checkpoint is written")

    cfg = cfg_in(tmp_path / "b")
    monkeypatch.setattr(loop, "save_checkpoint", die_mid_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", original)
    ckpts = Path(cfg.run.output_dir) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000003", "step-0000006.tmp"]
    resumed = train(cfg, resume=True, quiet=True)
    assert resumed.steps == whole.steps == 9
    assert not list(ckpts.glob("*.tmp"))  # the partial folder was replaced by the complete checkpoint of step 6
    a, b = _weights(whole.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if lora:
        assert (resumed.model_dir / "adapter" / "adapter_config.json").exists()
