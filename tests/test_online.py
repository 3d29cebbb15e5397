"""The online loops end to end on a small gym: iterative DPO raises the gold reward over the SFT model, the
reference stays π_0, a killed run resumes to the same weights and table, bad input fails before sampling,
rejection sampling and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from imitalign.config import ConfigError, load_config
from imitalign.data.records import DataError
from imitalign.gym.build import GymConfig, build_gym
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.iterate import Interrupted, parse_iterate_config, round_table, run_iterate
from imitalign.loops.scoring import read_rows
from imitalign.loops.stages import model_fingerprint, seal_stage, train_or_reuse
from imitalign.reward.base import RewardError


@pytest.fixture(scope="module")
def gym(tmp_path_factory):
    """A 4-topic gym and an SFT model (3000 base-process demos, 3 epochs): ≈10 s on 2 idle cores."""
    root = tmp_path_factory.mktemp("online_gym")
    files = build_gym(
        GymConfig(n_topics=4, n_sft=3000, n_expert=10, n_pref_prompts=10, n_online_prompts=400, n_eval_prompts=64,
                  style_shift=False),
        root / "gym",
    )
    sft = load_config(None, raw={
        "run": {"output_dir": str(root / "sft"), "seed": 0},
        "model": {"config": tiny_llama_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
                  "tokenizer": str(files.tokenizer)},
        "data": {"train": {"path": str(files.sft), "format": "demonstration"}, "chat_template": "none",
                 "max_length": 64},
        "objective": {"name": "mle"},
        "train": {"lr": 3e-3, "epochs": 3, "batch_size": 32, "log_every": 50, "warmup_ratio": 0.05},
    })
    summary = train_or_reuse(sft, say=lambda m: None, quiet=True)
    return {"root": root, "files": files, "sft": summary["model_dir"]}


def iterate_raw(gym: dict, out: Path, **over) -> dict:
    raw = {
        "run": {"output_dir": str(out), "seed": 0},
        "policy": gym["sft"],
        "rounds": 2,
        "prompts": {"source": {"path": str(gym["files"].online_prompts)}, "per_round": 128},
        "generate": {"k": 4, "max_new_tokens": 20, "batch_size": 64},
        "reward": {"kind": "gold"},
        "train": {
            "objective": {"name": "dpo", "options": {"beta": 0.1}},
            "train": {"lr": 3e-4, "epochs": 2, "batch_size": 8, "warmup_ratio": 0.0, "schedule": "constant",
                      "log_every": 100},
            "data": {"chat_template": "none", "max_length": 64},
        },
        "eval": {"prompts": {"path": str(gym["files"].eval_prompts)}, "n": 4, "reward": {"kind": "gold"},
                 "batch_size": 128},
    }
    for key, value in over.items():
        node = raw
        *path, last = key.split("__")
        for p in path:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def quiet(_: str) -> None:
    return None


@pytest.fixture(scope="module")
def run_a(gym):
    cfg = parse_iterate_config(iterate_raw(gym, gym["root"] / "run_a"))
    return run_iterate(cfg, say=quiet)


def test_two_rounds_of_iterative_dpo_raise_the_gold_reward_over_sft(gym, run_a):
    r0, r2 = run_a.rows[0], run_a.rows[2]
    gain = r2["gold_reward"]["mean"] - r0["gold_reward"]["mean"]
    se = max(r0["gold_reward"]["se"], r2["gold_reward"]["se"])
    assert gain > 2 * se, f"gold {r0['gold_reward']} → {r2['gold_reward']}"
    assert r2["win_rate_vs_baseline"]["mean"] > 0.55
    assert r2["train_examples"] == 128 and r2["gold_agreement"] == 1.0  # the gold reward labels the pairs
    # the reference is π_0 in every round
    pi0 = model_fingerprint(gym["sft"])
    assert [r["reference_fingerprint"] for r in run_a.rows[1:]] == [pi0, pi0]
    for t in (1, 2):
        assert load_config(run_a.root / f"round_{t}" / "train" / "config.yaml").reference.name_or_path == gym["sft"]
    # every stage wrote its files; the report has the table and the plot
    for name in ("prompts.jsonl", "samples.jsonl", "scored.jsonl", "train_data.jsonl", "eval.json"):
        assert (run_a.root / "round_2" / name).is_file()
    samples = read_rows(run_a.root / "round_2" / "samples.jsonl")
    assert len(samples) == 128 * 4 and samples[0]["policy"] == "pi_1"
    assert "| 2 |" in (run_a.root / "report.md").read_text() and (run_a.root / "reward_per_round.png").is_file()
    # a rerun of a finished run redoes nothing
    again = run_iterate(parse_iterate_config(iterate_raw(gym, gym["root"] / "run_a")), say=quiet)
    assert again.ran == [] and round_table(again.rows, timings=False) == round_table(run_a.rows, timings=False)


def test_killed_after_round_2_sampling_resumes_to_the_same_weights_and_table(gym, run_a):
    out = gym["root"] / "run_b"
    cfg = parse_iterate_config(iterate_raw(gym, out))

    def kill(t: int, stage: str) -> None:
        if (t, stage) == (2, "samples"):
            raise Interrupted("killed")

    with pytest.raises(Interrupted):
        run_iterate(cfg, on_stage=kill, say=quiet)
    assert (out / "round_2" / "samples.jsonl").exists() and not (out / "round_2" / "scored.jsonl").exists()
    resumed = run_iterate(cfg, say=quiet)
    assert resumed.ran == [(2, "scored"), (2, "pairs"), (2, "train"), (2, "eval")]  # nothing finished is redone
    a = load_file(run_a.root / "round_2" / "train" / "model" / "model.safetensors")
    b = load_file(out / "round_2" / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert round_table(resumed.rows, timings=False) == round_table(run_a.rows, timings=False)


def test_reference_previous_iterate_is_used_only_when_asked(gym):
    out = gym["root"] / "run_prev"
    raw = iterate_raw(gym, out, reference="previous", eval=None, prompts__per_round=16)
    said: list[str] = []
    res = run_iterate(parse_iterate_config(raw), say=said.append)
    assert any("WARNING: reference = previous iterate" in m for m in said)
    fps = [r["reference_fingerprint"] for r in res.rows[1:]]
    assert fps[0] == model_fingerprint(gym["sft"])
    assert fps[1] == model_fingerprint(out / "round_1" / "train" / "model") != fps[0]


def _no_samples(out: Path) -> bool:
    return not list(out.glob("round_*/samples*.jsonl"))


def test_bad_input_fails_before_sampling(gym, tmp_path):
    empty = tmp_path / "no_prompts.jsonl"
    empty.write_text(json.dumps({"question": "hi"}) + "\n")
    cases = [
        (dict(prompts__source={"path": str(empty)}), DataError, "prompt"),
        (dict(reward={"kind": "function", "function": "no_such_pkg_abc.scores:f"}), RewardError, "cannot import"),
        (dict(reward={"kind": "function", "function": "tests.test_reward:three"}), RewardError, "3 scores for 2 rows"),
        (dict(reward={"kind": "function", "function": "tests.test_reward:nan_scores"}), RewardError, "non-finite"),
        (dict(train__objective={"name": "mle"}), ConfigError, "needs a 'pair' objective"),
        (dict(rejection={"etas": [1.0, 2.0]}), ConfigError, "strictly decrease"),
        (dict(rounds=1, rejection={"etas": [1.0], "acceptance": "best_of_n", "form": "rso"}), ConfigError,
         "best_of_n accepts one per prompt"),
    ]
    for i, (over, error, match) in enumerate(cases):
        out = tmp_path / f"bad{i}"
        with pytest.raises(error, match=match):
            run_iterate(parse_iterate_config(iterate_raw(gym, out, **over)), say=quiet)
        assert _no_samples(out)
    with pytest.raises(ConfigError, match="generate.k must be >= 2 to pair samples"):
        parse_iterate_config(iterate_raw(gym, tmp_path / "k1", generate__k=1))


def test_a_sampling_k_that_differs_from_the_scoring_k_is_an_error(gym, tmp_path):
    from imitalign.generate.kshot import generate_k, load_prompt_set
    from imitalign.gym.tokenizer import load_tokenizer

    out = tmp_path / "kmix"
    cfg = parse_iterate_config(iterate_raw(gym, out, eval=None, prompts__per_round=8))

    def stop(t: int, stage: str) -> None:
        if (t, stage) == (1, "samples"):
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        run_iterate(cfg, on_stage=stop, say=quiet)
    # the samples file is replaced by one drawn with K = 3, and sealed (as a run with another K would leave it;
    # an unsealed replacement is detected as changed and resampled: tests/test_faults.py)
    rd = out / "round_1"
    ps = load_prompt_set(str(rd / "prompts.jsonl"), load_tokenizer(gym["sft"]), chat_template="none")
    generate_k(gym["sft"], ps, rd / "samples.jsonl", k=3, max_new_tokens=8)
    seal_stage(rd, "samples", [rd / "samples.jsonl", rd / "generation.json"], [rd / "prompts.jsonl"])
    with pytest.raises(ValueError, match="24 samples for 8 prompts is not K = 4 per prompt"):
        run_iterate(cfg, say=quiet)
    assert not (out / "round_1" / "scored.jsonl").exists()


@pytest.mark.parametrize(
    ("rejection", "objective"),
    [
        ({"etas": [0.2, 0.05], "acceptance": "statistical", "form": "sft"}, {"name": "mle"}),
        ({"etas": [0.05], "acceptance": "best_of_n", "form": "sft"}, {"name": "mle"}),
        ({"etas": [0.5], "acceptance": "statistical", "form": "rso"}, {"name": "dpo", "options": {"beta": 0.1}}),
    ],
)
def test_rejection_sampling_steps(gym, tmp_path, rejection, objective):
    rounds = len(rejection["etas"])
    raw = iterate_raw(gym, tmp_path / "rs", rounds=rounds, rejection=rejection, train__objective=objective,
                      eval=None, prompts__per_round=32, prompts__fresh=False)
    res = run_iterate(parse_iterate_config(raw), say=quiet)
    sel = [json.loads((res.root / f"round_{t}" / "selection.json").read_text()) for t in range(1, rounds + 1)]
    if rejection["acceptance"] == "statistical" and rounds == 2:
        # step 2 accepts with 1/η'_2 = 1/η_2 − 1/η_1, so that the two tilts compose to π_0·exp(r/η_2)
        assert [s["rejection"]["eta_step"] for s in sel] == pytest.approx([0.2, 1 / (1 / 0.05 - 1 / 0.2)])
        assert all(32 <= s["rejection"]["accepted"] <= 128 for s in sel)
        demos = read_rows(res.root / "round_1" / "train_data.jsonl")
        assert set(demos[0]) == {"prompt", "response", "score"}
    elif rejection["acceptance"] == "best_of_n":
        assert sel[0]["rejection"]["accepted"] == 32  # one per prompt
        best = read_rows(res.root / "round_1" / "train_data.jsonl")
        scored = read_rows(res.root / "round_1" / "scored.jsonl")
        top = {}
        for r in scored:
            top[r["prompt_index"]] = max(top.get(r["prompt_index"], -1.0), r["score"])
        assert sorted(r["score"] for r in best) == sorted(top.values())
    if rejection["form"] == "rso":  # pairs of accepted samples (best vs worst accepted of each prompt)
        assert 0 < sel[0]["pairs"]["pairs"] <= 32
        accepted = {(r["prompt_index"], r["sample_idx"]) for r in read_rows(res.root / "round_1" / "accepted.jsonl")}
        for p in read_rows(res.root / "round_1" / "train_data.jsonl"):
            assert (p["prompt_index"], p["chosen_sample_idx"]) in accepted
            assert (p["prompt_index"], p["rejected_sample_idx"]) in accepted
    prompts = [read_rows(res.root / f"round_{t}" / "prompts.jsonl") for t in range(1, rounds + 1)]
    assert all(p == prompts[0] for p in prompts)  # fresh: false — the same prompts every step


def test_cli_generate_score_pairs(gym, tmp_path):
    from imitalign.cli import app

    runner = CliRunner()
    prompts = tmp_path / "prompts.jsonl"
    rows = read_rows(gym["files"].eval_prompts)[:5]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples, scored, pairs = tmp_path / "s.jsonl", tmp_path / "sc.jsonl", tmp_path / "p.jsonl"
    res = runner.invoke(app, ["generate", gym["sft"], str(prompts), "--out", str(samples), "--k", "3",
                              "--max-new-tokens", "12", "--chat-template", "none"])
    assert res.exit_code == 0, res.output
    assert len(read_rows(samples)) == 15
    res = runner.invoke(app, ["score", str(samples), "--kind", "gold", "--k", "3", "--out", str(scored)])
    assert res.exit_code == 0, res.output
    got = read_rows(scored)
    assert all("score" in r and "logp" in r and "sample_idx" in r for r in got)  # other columns kept
    res = runner.invoke(app, ["score", str(samples), "--kind", "gold", "--k", "4", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "is not K = 4" in res.output
    res = runner.invoke(app, ["pairs", str(scored), "--out", str(pairs)])
    assert res.exit_code == 0, res.output
    assert "pairs from 5 prompts" in res.output
    assert all(p["chosen_score"] > p["rejected_score"] for p in read_rows(pairs))


def test_retrain_on_union_with_an_enhancer(gym, tmp_path):
    raw = iterate_raw(gym, tmp_path / "union", start="retrain_union", eval=None, prompts__per_round=16,
                      generate__enhancer={"fraction": 0.25, "policy": "initial", "temperature": 0.7})
    res = run_iterate(parse_iterate_config(raw), say=quiet)
    r2 = res.root / "round_2"
    assert len(read_rows(r2 / "union_train_data.jsonl")) == sum(
        len(read_rows(res.root / f"round_{t}" / "train_data.jsonl")) for t in (1, 2))
    cfg2 = load_config(r2 / "train" / "config.yaml")
    assert cfg2.model.name_or_path == gym["sft"]  # retrained from π_0
    samples = read_rows(r2 / "samples.jsonl")
    assert [r["policy"] for r in samples[:4]] == ["pi_1", "pi_1", "pi_1", "enhancer"]
    assert json.loads((r2 / "generation.json").read_text())["enhancer"]["k"] == 1


def test_offline_baseline_and_summary_over_seeds(gym, run_a, tmp_path):
    from imitalign.loops.iterate import summarize_runs

    pairs = run_a.root / "round_1" / "train_data.jsonl"
    outs = []
    for seed in (0, 1):
        raw = iterate_raw(gym, tmp_path / f"offline{seed}", rounds=1, offline={"path": str(pairs)}, prompts=None,
                          reward=None, run__seed=seed, run__name="offline")
        res = run_iterate(parse_iterate_config(raw), say=quiet)
        assert res.ran == [(0, "eval"), (1, "pairs"), (1, "train"), (1, "eval")]
        assert res.rows[1]["train_examples"] == 128 and res.rows[1]["gold_reward"]["mean"] > 0
        outs.append(res.root)
    table, arms = summarize_runs(outs)
    assert arms[0]["arm"] == "offline" and arms[0]["seeds"] == 2
    means = [json.loads((o / "results.json").read_text())["rows"][-1]["gold_reward"]["mean"] for o in outs]
    assert arms[0]["gold_reward"]["mean"] == pytest.approx(sum(means) / 2)
    assert arms[0]["gold_reward"]["se"] == pytest.approx(abs(means[0] - means[1]) / 2)  # sd/√2 of two values
    assert "| offline | 2 |" in table
    with pytest.raises(ConfigError, match="prompts are required"):
        parse_iterate_config(iterate_raw(gym, tmp_path / "x", prompts=None))
