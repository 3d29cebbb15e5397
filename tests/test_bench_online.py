"""``benchmarks/bench_online.py``: the table arithmetic (step-function reads, the seconds ratio), the iterate arm's
config, and (slow: ≈ 1–2 min on 2 idle cores, several under load) the ``--quick`` smoke run of every kind of arm."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import online_arms
    import online_table
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def _pt(q, s, gold, se=0.01):
    return {"queries": q, "seconds": s, "cpu_seconds": s / 2, "gold_reward": {"mean": gold, "se": se},
            "kl_to_reference": {"mean": 0.1, "se": 0.01}, "distinct_2": 0.5}


def _arm(name, kind, points):
    return {"name": name, "kind": kind, "points": [_pt(0, 0.0, 0.40), *points], "load_before": 2.0,
            "load_after": 2.5}


def test_reads_are_the_last_checkpoint_at_or_before_x():
    pts = [_pt(0, 0.0, 0.40), _pt(100, 10.0, 0.45), _pt(200, 20.0, 0.50)]
    assert online_table.at(pts, "seconds", 9.99)["gold_reward"]["mean"] == 0.40  # not yet reached: π_0's
    assert online_table.at(pts, "seconds", 10.0)["gold_reward"]["mean"] == 0.45
    assert online_table.at(pts, "queries", 1000)["gold_reward"]["mean"] == 0.50
    assert online_table.first_reaching(pts, 0.46)["queries"] == 200
    assert online_table.first_reaching(pts, 0.40)["queries"] == 100  # π_0 itself never counts as reaching
    assert online_table.first_reaching(pts, 0.51) is None


def test_ratio_of_seconds_to_reach_the_peers_final_reward():
    ours = _arm("it", "iterate", [_pt(512, 8.0, 0.47), _pt(1024, 16.0, 0.52)])
    peer = _arm("trl_grpo", "grpo", [_pt(1024, 40.0, 0.50)])
    slow_peer_beats_us = _arm("trl_rloo", "rloo", [_pt(2048, 80.0, 0.60)])
    text = online_table.ratio_table([ours, peer, slow_peer_beats_us], clock="seconds")
    row = text.splitlines()[2]
    assert "×0.40 time, ×1.00 queries" in row  # 16 s / 40 s, 1024 / 1024 queries
    assert "not reached (best 0.520)" in row
    text = online_table.ratio_table([ours, peer], clock="cpu_seconds")
    assert "×0.40 time" in text.splitlines()[2]  # (8 / 20 CPU s)
    table = online_table.main_table([ours, peer], _arm("pi0", "pi0", []), clock="seconds")
    assert "gold @ 16 wall s" in table and "gold @ 1024 queries" in table
    assert "| it | 1024 | 8 (16) |" in table


def test_iterate_arm_config(tmp_path):
    from imitalign.loops.iterate import parse_iterate_config

    spec = {"name": "x", "seed": 3, "sft": "/m", "prompts": "/p.jsonl", "temperature": 1.0, "max_new_tokens": 32,
            "lr": 5e-4, "threads": 1, "queries": 3000,
            "params": {"objective": "dil_lsif", "k": 4, "per_round": 128}}
    cfg = parse_iterate_config(online_arms.iterate_raw(spec, tmp_path))
    assert cfg.rounds == 5  # ⌊3000 / (128·4)⌋: the query budget is never exceeded
    assert (cfg.generate.k, cfg.prompts.per_round, cfg.generate.max_new_tokens) == (4, 128, 32)
    assert cfg.train.objective.name == "dil_lsif" and cfg.reward.kind == "gold" and cfg.eval is None
    assert cfg.train.train["num_threads"] == 1 and cfg.train.train["lr"] == 5e-4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed (pip install -e '.[bench]')")
def test_quick_run_every_kind_of_arm(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_online
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    record = bench_online.main(["--quick", "--out", str(tmp_path)])
    arms = {a["name"]: a for a in record["arms"]}
    assert set(arms) == {"pi0", *bench_online.QUICK_ARMS}
    for name, arm in arms.items():
        if name == "pi0":
            continue
        first, last = arm["points"][0], arm["points"][-1]
        assert first["queries"] == 0 and first["gold_reward"] == arms["pi0"]["points"][0]["gold_reward"]
        assert 0 < last["queries"] <= 32, name  # the query budget
        assert 0.0 <= last["gold_reward"]["mean"] <= 1.0 and last["kl_to_reference"]["mean"] is not None
    assert (tmp_path / "online_curves.png").stat().st_size > 0
    assert "gold @" in (tmp_path / "table.md").read_text()
