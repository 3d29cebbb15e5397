"""Best-of-N: the argmax with ties to the first, N = 1 is plain sampling with the same seed, the sweep's numbers,
and bad input (N < 1, a reward of the wrong kind) as clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.config import ConfigError
from imitalign.loops.bon import (
    best_index,
    candidates,
    draw,
    load_bon_config,
    load_prompts,
    n_grid,
    run_bon,
    select,
    sweep,
    worst_index,
)

PROMPTS = [
    "write about sea and forest , short =>",
    "describe city and space , medium =>",
    "a long text on music and food =>",
]


def test_best_index_is_the_first_argmax_among_the_first_n() -> None:
    scores = [0.1, 0.7, 0.3, 0.7, 0.9]
    assert best_index(scores) == 4
    assert best_index(scores, 4) == 1  # tie between 1 and 3 goes to the first
    assert best_index(scores, 1) == 0
    assert best_index([0.5, 0.5, 0.5]) == 0
    assert worst_index([0.2, 0.1, 0.1, 0.3]) == 1
    with pytest.raises(ValueError, match="N >= 1"):
        best_index(scores, 0)
    with pytest.raises(ValueError, match="needs 6 candidates"):
        best_index(scores, 6)


def test_n_grid() -> None:
    assert n_grid(1) == [1]
    assert n_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert n_grid(50) == [1, 2, 4, 8, 16, 32, 50]
    with pytest.raises(ValueError):
        n_grid(0)


def test_select_and_sweep_hand_computed() -> None:
    # two prompts, four candidates each (rows deliberately out of order)
    rows = [{"prompt_index": p, "sample_idx": j, "response": "x", "n_tokens": 1 + j} for p in (7, 3) for j in range(4)]
    rows = rows[::-1]
    by = {(r["prompt_index"], r["sample_idx"]): i for i, r in enumerate(rows)}
    proxy = [0.0] * 8
    gold = [0.0] * 8
    for (p, j), i in by.items():
        proxy[i] = {7: [0.2, 0.9, 0.9, 0.1], 3: [0.5, 0.1, 0.6, 0.8]}[p][j]
        gold[i] = {7: [0.3, 0.2, 1.0, 0.6], 3: [0.4, 0.9, 0.5, 0.1]}[p][j]
    groups = [[by[(p, j)] for j in range(4)] for p in (3, 7)]
    assert select(groups, proxy, 1) == [by[(3, 0)], by[(7, 0)]]
    assert select(groups, proxy, 2) == [by[(3, 0)], by[(7, 1)]]
    assert select(groups, proxy, 4) == [by[(3, 3)], by[(7, 1)]]  # 7: tie 0.9 at j=1 and j=2 -> j=1
    baseline = {7: [0.25, 0.6], 3: [0.4, 0.95]}
    res = {(r["source"], r["n"]): r for r in sweep(rows, {"proxy": proxy}, gold, baseline, [1, 2, 4])}
    # N=4 picks: prompt 3 -> j=3 (gold 0.1), prompt 7 -> j=1 (gold 0.2)
    assert res[("proxy", 4)]["gold"][0] == pytest.approx(0.15)
    assert res[("proxy", 4)]["gold"][1] == pytest.approx(0.05)  # sd 0.0707 / √2
    # wins: 0.1 vs [0.4, 0.95] -> 0; 0.2 vs [0.25, 0.6] -> 0
    assert res[("proxy", 4)]["win_rate"][0] == 0.0
    # N=1 picks j=0: 0.4 vs [0.4, 0.95] -> (½ + 0)/2 = 0.25; 0.3 vs [0.25, 0.6] -> ½ ; mean 0.375
    assert res[("proxy", 1)]["win_rate"][0] == pytest.approx(0.375)
    assert res[("proxy", 2)]["proxy"][0] == pytest.approx((0.5 + 0.9) / 2)
    assert res[("proxy", 4)]["length"][0] == pytest.approx((4 + 2) / 2)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_afd_rewards import save_lm

    return save_lm(tmp_path_factory.mktemp("bon") / "pi", 5)


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def bon_cfg(tmp_path: Path, policy: Path, **kw):
    raw = {
        "model": str(policy),
        "prompts": {"path": str(write_prompts(tmp_path / "prompts.jsonl"))},
        "rewards": [
            {"kind": "gold", "name": "oracle"},
            {"kind": "function", "name": "short", "function": "tests.test_bon:shortness"},
        ],
        "n_max": 4,
        "baseline_n": 2,
        "seed": 11,
        "sampling": {"max_new_tokens": 8, "batch_size": 16},
        "chat_template": "none",
        "output_dir": str(tmp_path / "out"),
        **kw,
    }
    return load_bon_config(None, raw=raw)


def shortness(rows: list[dict]) -> list[float]:
    """A toy reward: minus the number of words (ties are common)."""
    return [-float(len(r["response"].split())) for r in rows]


def test_n_equal_one_is_plain_sampling_with_the_same_seed(tmp_path, policy) -> None:
    cfg = bon_cfg(tmp_path, policy)
    from imitalign.config import ModelConfig
    from imitalign.model.load import load_tokenizer

    prompts, ids = load_prompts(cfg, load_tokenizer(ModelConfig(name_or_path=str(policy))))
    assert prompts == PROMPTS
    plain = draw(str(policy), prompts, ids, 1, cfg.seed, cfg.sampling)
    summary = run_bon(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.scored.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 4
    first = {r["prompt_index"]: r["response"] for r in rows if r["sample_idx"] == 0}
    assert first == {r["prompt_index"]: r["response"] for r in plain}
    res = {(r["source"], r["n"]): r for r in summary["results"]}
    # at N = 1 every source picks sample 0
    from imitalign.gym.build import gold_rewards

    g1 = gold_rewards(plain)
    assert res[("oracle", 1)]["gold"][0] == pytest.approx(sum(g1) / 3)
    assert res[("short", 1)]["gold"][0] == pytest.approx(sum(g1) / 3)
    # the oracle's pick never loses gold as N grows; the picks are the per-prompt maxima of the first N
    golds = [res[("oracle", n)]["gold"][0] for n in (1, 2, 4)]
    assert golds == sorted(golds)
    best4 = [max(r["gold"] for r in rows if r["prompt_index"] == p) for p in range(3)]
    assert res[("oracle", 4)]["gold"][0] == pytest.approx(sum(best4) / 3)
    for p in (tmp_path / "out" / "bon.md", tmp_path / "out" / "bon.png", tmp_path / "out" / "results.json"):
        assert p.is_file()


def test_candidates_are_reused_and_resampled_when_the_setup_changes(tmp_path, policy) -> None:
    cfg = bon_cfg(tmp_path, policy)
    rows, _ = candidates(cfg)
    path = tmp_path / "out" / "samples.jsonl"
    stamp = path.stat().st_mtime_ns
    again, _ = candidates(cfg)
    assert again == rows and path.stat().st_mtime_ns == stamp
    more, _ = candidates(bon_cfg(tmp_path, policy, seed=12))
    assert path.stat().st_mtime_ns != stamp and more != rows


def test_bad_input_is_a_clear_error(tmp_path, policy) -> None:
    with pytest.raises(ConfigError, match="n_max"):
        bon_cfg(tmp_path, policy, n_max=0)
    with pytest.raises(ConfigError, match="ns must be"):
        bon_cfg(tmp_path, policy, ns=[1, 8])
    with pytest.raises(ConfigError, match="distinct"):
        bon_cfg(tmp_path, policy, rewards=[{"kind": "gold"}, {"kind": "gold"}])
    from imitalign.reward import RewardError

    cfg = bon_cfg(tmp_path, policy, rewards=[{"kind": "discriminator", "path": str(policy)}])
    with pytest.raises(RewardError, match="discriminator"):
        run_bon(cfg)
    assert not (tmp_path / "out" / "samples.jsonl").exists()  # failed before sampling
