"""The gym experiments end to end on a tiny plan (smoke test: every command runs, writes its table, and resumes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imitalign.experiments.afd_bon import exp_bon
from imitalign.experiments.afd_distill import exp_distill
from imitalign.experiments.afd_selfplay import exp_selfplay
from imitalign.experiments.afd_sft import exp_sft
from imitalign.experiments.common import GymPlan
from imitalign.experiments.iqlearn_frontier import exp_iqlearn
from imitalign.gym.build import GymConfig
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.afd import TrainSpec

TINY = GymPlan(
    gym=GymConfig(n_sft=400, n_expert=48, n_pref_prompts=0, n_online_prompts=16, n_eval_prompts=6),
    model=tiny_llama_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4),
    init=TrainSpec(lr=3e-3, epochs=1, batch_size=32, num_threads=1),
    sft=TrainSpec(lr=3e-3, epochs=1, batch_size=16, num_threads=1),
    disc=TrainSpec(lr=1e-3, epochs=1, batch_size=16, num_threads=1),
    pref=TrainSpec(lr=1e-3, epochs=1, batch_size=8, num_threads=1),
    n_max=4,
    eval_n=2,
    max_new_tokens=10,
    sample_batch=64,
)


@pytest.mark.slow
def test_gym_experiments_run_on_a_tiny_plan(tmp_path: Path) -> None:
    out = tmp_path / "afd_gym"
    assert "demonstrator" in exp_sft(out, TINY)
    text = exp_bon(out, TINY, styles=("plain",))
    assert "init-sft" in text and "closed-form" in text and "gold (oracle)" in text
    assert (out / "afd_bon.png").is_file()
    assert "best-of-2 reranking" in exp_distill(out, TINY, seeds=1, n=2, rounds=1)
    assert "GSIL" in exp_selfplay(out, TINY, seeds=1, rounds=1)
    frontier = exp_iqlearn(out, TINY, lams=(0.0, 0.1), alphas=(0.5,))
    assert "α=0.5" in frontier and (out / "iqlearn_frontier.png").is_file()
    assert exp_bon(out, TINY, styles=("plain",)).split("Wall")[1].split("\n", 1)[1] == text.split("Wall")[1].split(
        "\n", 1
    )[1]  # a rerun reuses every stage: the same numbers
