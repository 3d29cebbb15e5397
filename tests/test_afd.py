"""AfD: the discriminator loss equals its formula; the pipeline builds the classes from a demonstration file
(empty responses counted and skipped), trains discriminators through the one loop, and on gym classes the
init-SFT discriminator separates held-out π_SFT from π_init samples; folders of the wrong kind are errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from imitalign import objectives
from imitalign.gym.build import GymConfig, build_gym, read_jsonl, write_jsonl
from imitalign.gym.tokenizer import build_tokenizer, tiny_llama_config
from imitalign.loops.afd import labelled, load_afd_config, read_demos, run_afd
from imitalign.reward import RewardError, load_reward


def test_discriminator_bce_equals_its_formula() -> None:
    z = torch.tensor([2.0, -1.0, 0.5, -3.0], dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1])
    losses, metrics = objectives.discriminator_bce(z, y)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0)), -math.log(1 - sig(0.5)), -math.log(sig(-3.0))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # 2.0 → 1 ✓, −1 → 0 ✓, 0.5 → 1 ✗, −3 → 0 ✗
    assert metrics["logits/positive"].item() == pytest.approx(-0.5)
    assert metrics["logits/negative"].item() == pytest.approx(-0.25)


def test_labelled_classes_come_from_the_right_sources() -> None:
    demos = [{"prompt": "p0", "response": "d0", "split": "train"}, {"prompt": "p1", "response": "d1", "split": "eval"}]

    def samples(tag: str) -> list[dict]:
        return [
            {
                "prompt": f"p{i}",
                "response": f"{tag}{i}.{j}",
                "sample_idx": j,
                "prompt_index": i,
                "split": demos[i]["split"],
            }
            for i in range(2)
            for j in range(2)
        ]

    init, sft = samples("init"), samples("sft")
    parts = labelled("init_sft", demos, init, sft)
    assert {(r["response"], r["label"]) for r in parts["train"]} == {
        ("sft0.0", 1),
        ("sft0.1", 1),
        ("init0.0", 0),
        ("init0.1", 0),
    }
    parts = labelled("init_demo", demos, init, sft)
    assert {(r["response"], r["label"]) for r in parts["eval"]} == {("d1", 1), ("init1.0", 0)}  # balanced
    parts = labelled("sft_demo", demos, init, sft)
    assert {(r["response"], r["label"]) for r in parts["train"]} == {("d0", 1), ("sft0.0", 0)}


def test_read_demos_counts_and_skips_empty_responses(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"write about sea and forest , short => {i}", "response": "wave ." if i % 3 else "  "}
        for i in range(12)
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_afd_config(
        None, raw={"demos": {"path": str(tmp_path / "d.jsonl")}, "init_model": "x", "heldout_fraction": 0.25}
    )
    demos, counts = read_demos(cfg)
    assert counts["skipped"] == {"empty_response": 4} and counts["used"] == 8 and len(demos) == 8
    assert counts["eval_rows"] == 2  # a quarter of the 8 distinct prompts
    with pytest.raises(Exception, match="alpha|modes"):
        load_afd_config(None, raw={"demos": {"path": "d"}, "init_model": "x", "modes": ["sft_init"]})


def _save_init(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in tiny_llama_config(hidden_size=32, num_hidden_layers=1).items() if k != "model_type"}
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def test_init_sft_discriminator_separates_heldout_sft_and_init_samples(tmp_path: Path) -> None:
    files = build_gym(
        GymConfig(n_sft=0, n_expert=160, n_pref_prompts=0, n_online_prompts=0, n_eval_prompts=8), tmp_path / "gym"
    )
    demos = read_jsonl(files.expert)
    demos[3]["response"] = ""  # an empty demonstration: counted, skipped
    write_jsonl(tmp_path / "demos.jsonl", demos)
    init = _save_init(tmp_path / "init")  # an untrained π_init: its samples are word salad
    cfg = load_afd_config(
        None,
        raw={
            "demos": {"path": str(tmp_path / "demos.jsonl")},
            "init_model": str(init),
            "modes": ["init_sft", "sft_demo"],
            "heldout_fraction": 0.25,
            "seed": 1,
            "sampling": {"max_new_tokens": 16, "batch_size": 64},
            "sft": {"lr": 1e-2, "epochs": 10, "batch_size": 16},
            "discriminator": {"lr": 2e-3, "epochs": 3, "batch_size": 16},
            "chat_template": "none",
            "max_length": 64,
            "output_dir": str(tmp_path / "afd"),
        },
    )
    summary = run_afd(cfg)
    assert summary["demos"]["skipped"] == {"empty_response": 1} and summary["demos"]["used"] == 159
    out = tmp_path / "afd"
    for name in (
        "demos.jsonl",
        "init_samples.jsonl",
        "sft_samples.jsonl",
        "init_sft/train.jsonl",
        "init_sft/eval.jsonl",
        "sft_demo/train.jsonl",
    ):
        assert (out / "classes" / name).is_file(), name
    heldout = read_jsonl(out / "classes" / "init_sft" / "eval.jsonl")
    assert {r["label"] for r in heldout} == {0, 1}
    acc = summary["modes"]["init_sft"]["eval"]["accuracy"]
    assert acc >= 0.75, acc  # chance is 0.5
    # the reward source scores the held-out classes apart: mean logit of π_SFT samples above π_init's
    disc = load_reward(
        {
            "kind": "discriminator",
            "path": summary["modes"]["init_sft"]["model_dir"],
            "chat_template": "none",
            "max_length": 64,
        }
    )
    scores = disc.score(heldout)
    pos = [s for s, r in zip(scores, heldout, strict=True) if r["label"] == 1]
    neg = [s for s, r in zip(scores, heldout, strict=True) if r["label"] == 0]
    assert sum(pos) / len(pos) > sum(neg) / len(neg) + 1.0
    assert disc.meta["mode"] == "init_sft"
    # rewards.yaml lists every discriminator and the closed form, loadable as they are
    listed = __import__("yaml").safe_load((out / "rewards.yaml").read_text())["rewards"]
    assert [r["name"] for r in listed] == ["init-sft", "sft-demo", "closed-form", "closed-form/token"]
    cf = load_reward(listed[2]).score(heldout[:4])
    assert len(cf) == 4
    # a second run reuses everything
    again = run_afd(cfg)
    assert again["modes"]["init_sft"]["eval"]["accuracy"] == acc
    # wrong kinds: a policy folder as a discriminator, a discriminator as a closed-form policy
    with pytest.raises(RewardError, match="a policy"):
        load_reward({"kind": "discriminator", "path": summary["sft_model"]})
    with pytest.raises(RewardError, match="not a causal language model"):
        load_reward({"kind": "closed_form", "path": summary["modes"]["init_sft"]["model_dir"], "reference": str(init)})


def test_bradley_terry_folder_is_not_a_discriminator(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = {k: v for k, v in tiny_llama_config(hidden_size=32, num_hidden_layers=1).items() if k != "model_type"}
    model_dir = tmp_path / "rm" / "model"
    LlamaForSequenceClassification(LlamaConfig(num_labels=1, **cfg)).save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    (tmp_path / "rm" / "config.yaml").write_text("objective:\n  name: bradley_terry\n")
    with pytest.raises(RewardError, match="use kind 'bradley_terry'"):
        load_reward({"kind": "discriminator", "path": str(model_dir)})
    (tmp_path / "rm" / "config.yaml").write_text(json.dumps({"objective": {"name": "discriminator_bce"}}))
    assert load_reward({"kind": "discriminator", "path": str(model_dir)}).meta is None


@pytest.mark.parametrize(
    ("name", "loader"),
    [
        ("afd_gym_style.yaml", "afd"),
        ("afd_hh_gemma2b.yaml", "afd"),
        ("afd_bon_gym.yaml", "bon"),
        ("afd_spin_gym.yaml", "iterate"),
        ("iqlearn_online_gym.yaml", "iterate"),
        ("iqlearn_tldr_qwen.yaml", "train"),
    ],
)
def test_shipped_configs_validate(name: str, loader: str) -> None:
    import yaml

    from imitalign.config import load_config
    from imitalign.loops.bon import load_bon_config
    from imitalign.loops.iterate import parse_iterate_config
    from tests.helpers import REPO

    path = REPO / "configs" / name
    if loader == "afd":
        cfg = load_afd_config(path)
        assert cfg.modes
    elif loader == "bon":
        assert load_bon_config(path).n_max == 64
    elif loader == "iterate":
        assert parse_iterate_config(yaml.safe_load(path.read_text())).pairs.mode in ("self_play", "own_samples")
    else:
        cfg = load_config(path)
        assert cfg.objective.name == "iqlearn"
