"""Self-play on demonstrations as a pairing mode of the iterative loop: SPIN (DPO) and GSIL (DIL-BCE) pairs come
from the right sources (chosen = the prompt's demonstration, rejected = the current policy's own sample) and the
reference advances to the previous iterate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.config import ConfigError
from imitalign.gym.build import GymConfig, build_gym, read_jsonl, write_jsonl
from imitalign.loops.iterate import parse_iterate_config, run_iterate
from imitalign.loops.pairs import demo_lookup, prompt_key, self_play_pairs


def test_self_play_pairs_hand_made() -> None:
    demos = demo_lookup(
        [
            {"prompt": "p0", "response": "demo zero"},
            {"prompt": [{"role": "user", "content": "p1"}], "response": "demo one"},
            {"prompt": "p2", "response": "a"},
            {"prompt": "p2", "response": "b"},
        ]
    )
    assert prompt_key("p1") == prompt_key([{"role": "user", "content": "p1"}])
    rows = [
        {"prompt": "p0", "prompt_index": 0, "sample_idx": 0, "response": "own zero", "score": 0.3, "gold": 0.2},
        {"prompt": "p0", "prompt_index": 0, "sample_idx": 1, "response": "demo zero", "score": 0.9},  # = demo
        {"prompt": "p1", "prompt_index": 1, "sample_idx": 0, "response": " ", "score": 0.0},  # empty
        {"prompt": "p2", "prompt_index": 2, "sample_idx": 0, "response": "own two", "score": 0.5},
        {"prompt": "p3", "prompt_index": 3, "sample_idx": 0, "response": "own three", "score": 0.5},  # no demo
    ]
    pairs, stats = self_play_pairs(rows, demos, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs][0] == ("demo zero", "own zero")
    assert pairs[0]["rejected_gold"] == 0.2 and pairs[0]["rejected_score"] == 0.3
    assert pairs[1]["chosen"] in ("a", "b") and pairs[1]["rejected"] == "own two"
    again, _ = self_play_pairs(rows, demos, seed=0)
    assert again == pairs  # the draw among several demonstrations is seeded
    assert stats.pairs == 2 and stats.empty_responses == 1
    assert dict(stats.dropped) == {"tie": 1, "no_demo": 1}


def _cfg(tmp_path: Path, objective: str, rounds: int, init: Path, demos: Path, name: str) -> dict:
    return {
        "run": {"output_dir": str(tmp_path / name), "seed": 0},
        "policy": str(init),
        "rounds": rounds,
        "prompts": {"source": {"path": str(demos)}, "per_round": 6, "fresh": True},
        "generate": {"k": 1, "max_new_tokens": 8, "batch_size": 16},
        "reward": {"kind": "gold"},
        "pairs": {"mode": "self_play", "demos": {"path": str(demos)}},
        "reference": "previous",
        "train": {
            "objective": {"name": objective, "options": {"beta": 0.1} if objective == "dpo" else {}},
            "train": {"max_steps": 2, "batch_size": 3, "lr": 1e-3, "warmup_ratio": 0.0, "log_every": 1},
            "data": {"chat_template": "none", "max_length": 64},
        },
    }


def test_spin_and_gsil_pairs_and_the_reference_advancing(tmp_path: Path) -> None:
    from tests.test_afd_rewards import save_lm

    files = build_gym(
        GymConfig(n_sft=0, n_expert=24, n_pref_prompts=0, n_online_prompts=0, n_eval_prompts=4), tmp_path / "gym"
    )
    demos = tmp_path / "demos.jsonl"
    write_jsonl(demos, [{"prompt": r["prompt"], "response": r["response"]} for r in read_jsonl(files.expert)])
    init = save_lm(tmp_path / "pi0", 4)
    by_prompt = demo_lookup(read_jsonl(demos))

    spin = run_iterate(parse_iterate_config(_cfg(tmp_path, "dpo", 2, init, demos, "spin")), say=lambda m: None)
    models = {}
    for t in (1, 2):
        rd = spin.root / f"round_{t}"
        samples = {r["prompt_index"]: r for r in read_jsonl(rd / "samples.jsonl")}
        pairs = read_jsonl(rd / "train_data.jsonl")
        assert pairs
        for p in pairs:
            assert p["chosen"] in by_prompt[prompt_key(p["prompt"])]  # chosen: the demonstration
            assert p["rejected"] == samples[p["prompt_index"]]["response"]  # rejected: π_{t-1}'s own sample
        models[t] = json.loads((rd / "training.json").read_text())
    # round 1: init = reference = π_0; round 2: init = reference = π_1 (the previous iterate)
    assert models[1]["init"] == str(init) and models[1]["reference"] == str(init)
    pi1 = str(spin.root / "round_1" / "train" / "model")
    assert models[2]["init"] == pi1 and models[2]["reference"] == pi1
    assert models[2]["reference_fingerprint"] != models[1]["reference_fingerprint"]

    # GSIL: DIL-BCE on exactly the same pairs (same seed, same π_0)
    gsil = run_iterate(parse_iterate_config(_cfg(tmp_path, "dil_bce", 1, init, demos, "gsil")), say=lambda m: None)
    assert read_jsonl(gsil.root / "round_1" / "train_data.jsonl") == read_jsonl(
        spin.root / "round_1" / "train_data.jsonl"
    )
    cfg_saved = (gsil.root / "round_1" / "train" / "config.yaml").read_text()
    assert "dil_bce" in cfg_saved


def test_self_play_config_needs_its_demonstrations(tmp_path: Path) -> None:
    raw = _cfg(tmp_path, "dpo", 1, tmp_path / "m", tmp_path / "d.jsonl", "x")
    del raw["pairs"]["demos"]
    with pytest.raises(ConfigError, match="pairs.demos"):
        parse_iterate_config(raw)
    raw["pairs"] = {"mode": "max_min", "demos": {"path": "d.jsonl"}}
    with pytest.raises(ConfigError, match="only with it"):
        parse_iterate_config(raw)
