"""Online IQLearn through the iterative loop (``pairs.mode: own_samples``): every round re-samples from the current
policy π_{t−1} and trains iqlearn on the round's demonstrations with those samples in the TD term (α > 0), with
no reward; the configuration errors come before any sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.config import ConfigError
from imitalign.gym.build import GymConfig, build_gym, read_jsonl, write_jsonl
from imitalign.loops.iterate import parse_iterate_config, preflight, run_iterate
from imitalign.loops.pairs import demo_lookup, own_sample_data


def test_own_sample_data_hand_made() -> None:
    demos = demo_lookup(
        [{"prompt": "p0", "response": "d0"}, {"prompt": "p1", "response": "d1a"}, {"prompt": "p1", "response": "d1b"}]
    )
    rows = [
        {"prompt": "p0", "prompt_index": 0, "sample_idx": 0, "response": "own 0"},
        {"prompt": "p0", "prompt_index": 0, "sample_idx": 1, "response": "  "},  # empty: dropped, counted
        {"prompt": "p1", "prompt_index": 1, "sample_idx": 0, "response": "own 1"},
        {"prompt": "p2", "prompt_index": 2, "sample_idx": 0, "response": "own 2"},  # no demonstration
        {"prompt": "p1", "prompt_index": 3, "sample_idx": 0, "response": "own 3"},  # p1 drawn again: demos once
    ]
    demo_rows, own_rows, stats = own_sample_data(rows, demos)
    assert demo_rows == [
        {"prompt": "p0", "response": "d0"},
        {"prompt": "p1", "response": "d1a"},
        {"prompt": "p1", "response": "d1b"},
    ]
    assert [r["response"] for r in own_rows] == ["own 0", "own 1", "own 3"]
    assert stats == {
        "prompts": 4,
        "samples": 5,
        "empty_responses": 1,
        "dropped": {"no_demo": 1},
        "demonstrations": 3,
        "own_samples": 3,
    }


def _cfg(tmp_path: Path, init: Path, demos: Path, eval_prompts: Path, **over: object) -> dict:
    raw = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0},
        "policy": str(init),
        "rounds": 2,
        "prompts": {"source": {"path": str(demos)}, "per_round": 6, "fresh": True},
        "generate": {"k": 2, "max_new_tokens": 8, "batch_size": 16},
        "pairs": {"mode": "own_samples", "demos": {"path": str(demos)}},
        "train": {
            "objective": {"name": "iqlearn", "options": {"lam": 0.5, "alpha": 0.5}},
            "train": {"max_steps": 2, "batch_size": 3, "lr": 1e-3, "warmup_ratio": 0.0, "log_every": 1},
            "data": {"chat_template": "none", "max_length": 64},
        },
        "eval": {"prompts": {"path": str(eval_prompts)}, "n": 2, "reward": {"kind": "gold"}},
    }
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    from tests.test_afd_rewards import save_lm

    root = tmp_path_factory.mktemp("iq_online")
    files = build_gym(
        GymConfig(n_sft=0, n_expert=24, n_pref_prompts=0, n_online_prompts=0, n_eval_prompts=4), root / "gym"
    )
    demos = root / "demos.jsonl"
    write_jsonl(demos, [{"prompt": r["prompt"], "response": r["response"]} for r in read_jsonl(files.expert)])
    return root, save_lm(root / "pi0", 4), demos, files.eval_prompts


def test_online_iqlearn_resamples_from_the_current_policy(setup: tuple[Path, Path, Path, Path]) -> None:
    from imitalign.config import ModelConfig
    from imitalign.generate.kshot import generate_k, load_prompt_set
    from imitalign.model.load import load_tokenizer

    root, init, demos, eval_prompts = setup
    res = run_iterate(parse_iterate_config(_cfg(root, init, demos, eval_prompts)), say=lambda m: None)
    demo_by_prompt = demo_lookup(read_jsonl(demos))
    models = {0: str(init)}
    for t in (1, 2):
        rd = res.root / f"round_{t}"
        samples = read_jsonl(rd / "samples.jsonl")
        assert len(samples) == 12 and all("score" not in r for r in samples)  # no reward: nothing scored
        # training data: the round's demonstrations; own samples: exactly the round's non-empty samples
        train = read_jsonl(rd / "train_data.jsonl")
        assert {r["prompt"] for r in train} == {r["prompt"] for r in samples}
        assert all(r["response"] in demo_by_prompt[r["prompt"]] for r in train)
        own = read_jsonl(rd / "policy_samples.jsonl")
        assert [r["response"] for r in own] == [r["response"] for r in samples if r["response"].strip()]
        cfg = (rd / "train" / "config.yaml").read_text()
        assert "policy_samples.jsonl" in cfg and "alpha: 0.5" in cfg
        metrics = [json.loads(line) for line in (rd / "train" / "metrics.jsonl").read_text().splitlines()]
        assert any("train/td_penalty/policy" in m or "td_penalty/policy" in m for m in metrics)
        # sampled from π_{t−1}: sampling the previous round's model again with the round's seed gives these rows
        tok = load_tokenizer(ModelConfig(name_or_path=models[t - 1]))
        prompts = load_prompt_set(str(rd / "prompts.jsonl"), tok, chat_template="none", max_length=64, max_new_tokens=8)
        again = generate_k(models[t - 1], prompts, root / f"again_{t}.jsonl", k=2, max_new_tokens=8, seed=t)
        assert again.samples == 12
        assert [r["response"] for r in read_jsonl(root / f"again_{t}.jsonl")] == [r["response"] for r in samples]
        assert json.loads((rd / "training.json").read_text())["init"] == models[t - 1]  # warm start from π_{t−1}
        models[t] = str(rd / "train" / "model")
    assert read_jsonl(res.root / "round_2" / "samples.jsonl") != read_jsonl(res.root / "round_1" / "samples.jsonl")
    assert len(res.rows) == 3 and all(r.get("gold_reward") for r in res.rows)


def test_online_iqlearn_config_errors_before_sampling(setup: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    root, init, demos, eval_prompts = setup
    raw = _cfg(tmp_path, init, demos, eval_prompts)
    raw["train"]["objective"] = {"name": "iqlearn", "options": {"lam": 0.5}}  # α = 0: the samples would be ignored
    with pytest.raises(ConfigError, match="alpha"):
        preflight(parse_iterate_config(raw), say=lambda m: None)
    raw["train"]["objective"] = {"name": "dpo"}
    with pytest.raises(ConfigError, match="iqlearn with options.alpha > 0"):
        preflight(parse_iterate_config(raw), say=lambda m: None)
    raw = _cfg(tmp_path, init, demos, eval_prompts, pairs={"mode": "max_min"})
    with pytest.raises(ConfigError, match="a reward is required"):
        parse_iterate_config(raw)
    raw = _cfg(tmp_path, init, demos, eval_prompts)
    raw["eval"].pop("reward")
    with pytest.raises(ConfigError, match="eval.reward"):
        parse_iterate_config(raw)
    assert not (tmp_path / "run").exists()
