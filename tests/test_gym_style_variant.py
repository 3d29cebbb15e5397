"""The gym's sorted demonstration style (an order style): r* and word frequencies unchanged, deterministic, written
as a separate file that leaves the gym's own files and fingerprint alone; the --styles option of gym-sft / gym-bon."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from imitalign.cli import app
from imitalign.commands.afd import _styles
from imitalign.experiments.afd_bon import order_share
from imitalign.experiments.common import PLAN, STYLES, styles_suffix
from imitalign.gym.build import (
    GymConfig,
    build_expert_variant,
    build_gym,
    expert_rows,
    expert_variant_path,
    expert_variant_rows,
    gym_dir,
    gym_fingerprint,
)
from imitalign.gym.task import (
    DEMO_VARIANTS,
    all_prompts,
    ascending_share,
    expert_response,
    gold_reward,
    sort_content,
    stylize,
)

runner = CliRunner()

HAND = [
    # (prompt, response, sorted response)
    ("write about sea and forest , medium =>", "whale the deer wave some root bark fern .",
     "bark the deer fern some root wave whale ."),
    ("describe city and space , short =>", "star bus with moon taxi .", "bus moon with star taxi ."),
    ("tell me about music and food , long =>", "truly soup the piano indeed apple",
     "truly apple the piano indeed soup"),
    ("a short text on art and farm =>", "the quiet .", "the quiet ."),
    ("write about sea and forest , medium =>", "", ""),
]


@pytest.mark.parametrize(("prompt", "response", "expected"), HAND)
def test_sort_content_on_hand_made_rows(prompt: str, response: str, expected: str) -> None:
    out = sort_content(response)
    assert out == expected
    assert gold_reward(prompt, out) == gold_reward(prompt, response)  # exactly
    assert Counter(out.split()) == Counter(response.split())  # word frequencies unchanged
    assert sort_content(out) == out  # idempotent


def test_gold_of_the_hand_made_rows() -> None:
    # r* of the first row: cov = (min(1, 4/3) + min(1, 2/3)) / 2 = 5/6, on = u = 1, len = 1 - |8-10|/10, end = 1
    prompt, response, expected = HAND[0]
    want = 0.35 * 5 / 6 + 0.25 + 0.15 + 0.15 * 0.8 + 0.10
    assert gold_reward(prompt, response) == pytest.approx(want, abs=1e-12)
    assert gold_reward(prompt, expected) == pytest.approx(want, abs=1e-12)


def test_sorted_style_keeps_gold_on_many_expert_and_styled_rows() -> None:
    rng, srng = random.Random(3), random.Random(4)
    for prompt in all_prompts()[:400]:
        y = expert_response(prompt, rng)
        for candidate in (y, stylize(y, srng)):
            s = sort_content(candidate)
            assert gold_reward(prompt, s) == gold_reward(prompt, candidate)
            assert ascending_share(s) == 1.0


def test_ascending_share_numbers() -> None:
    assert ascending_share("bark the deer fern .") == 1.0
    assert ascending_share("whale deer wave root .") == pytest.approx(1 / 3)  # w>d, d<w, w>r
    assert ascending_share("boat boat .") == 0.5  # an equal pair counts one half
    assert ascending_share("the quiet .") == 0.5  # fewer than two content words: chance
    assert ascending_share("") == 0.5
    row = {"response": "indeed whale the deer ."}
    assert order_share(row) == {"style_share": 0.2, "order_share": 0.0}


def test_variant_file_is_deterministic_and_leaves_the_gym_alone(tmp_path: Path) -> None:
    cfg = GymConfig(n_sft=30, n_expert=40, n_pref_prompts=0, n_online_prompts=5, n_eval_prompts=4)
    files = build_gym(cfg, gym_dir(tmp_path, cfg))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.root.iterdir() if p.is_file()}
    fingerprint = json.loads(files.manifest.read_text())["fingerprint"]
    path = build_expert_variant(cfg, files.root, "sorted")
    assert path == expert_variant_path(files.root, "sorted") == files.root / "expert_sorted.jsonl"
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.root.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "expert_sorted.jsonl"} == before  # nothing else changed
    assert json.loads(files.manifest.read_text())["fingerprint"] == fingerprint == gym_fingerprint(cfg)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    plain = expert_rows(cfg)
    assert len(rows) == 40
    for r, p in zip(rows, plain, strict=True):  # the same demonstrations, row by row
        assert r["prompt"] == p["prompt"] and r["plain"] == p["response"]
        assert r["response"] == sort_content(p["response"]) and r["gold"] == p["gold"]
        assert ascending_share(r["response"]) == 1.0
    assert expert_variant_rows(cfg, "sorted") == rows  # deterministic
    mtime = path.stat().st_mtime_ns
    assert build_expert_variant(cfg, files.root, "sorted") == path and path.stat().st_mtime_ns == mtime  # reused
    with pytest.raises(ValueError, match="unknown demonstration variant"):
        expert_variant_rows(cfg, "shouty")


def test_default_gym_names_unchanged() -> None:
    # the cached folder of the gym experiments' gym (seed 0) and of the default GymConfig keep their names
    assert gym_dir("x", PLAN.gym.model_copy(update={"seed": 0})).name == "gym-026ed84b72a3c0d5"
    assert "style_variant" not in GymConfig.model_fields and set(DEMO_VARIANTS) == {"sorted"}


def test_styles_option_validates() -> None:
    assert STYLES == ("plain", "style", "sorted")
    assert _styles("sorted") == ["sorted"]
    assert _styles(" plain , sorted ") == ["plain", "sorted"]
    for bad in ("", "foo", "plain,plain", "plain,shouty"):
        with pytest.raises(typer.BadParameter):
            _styles(bad)
    assert styles_suffix(("plain", "style")) == "" and styles_suffix(("plain",)) == ""
    assert styles_suffix(("sorted",)) == "_sorted" and styles_suffix(("plain", "sorted")) == "_plain_sorted"
    for cmd in ("gym-bon", "gym-sft"):
        result = runner.invoke(app, ["afd", cmd, "--styles", "shouty", "--out", "unused"])
        assert result.exit_code == 2 and "--styles takes distinct names" in result.output


@pytest.mark.slow
def test_sorted_style_runs_through_gym_sft_and_gym_bon(tmp_path: Path) -> None:
    from imitalign.experiments.afd_bon import exp_bon
    from imitalign.experiments.afd_sft import exp_sft
    from tests.test_afd_gym import TINY

    out = tmp_path / "afd_gym"
    assert "π_SFT on sorted demos" in exp_sft(out, TINY, styles=("sorted",))
    assert (out / "afd_sft_sorted.md").is_file() and not (out / "afd_sft.md").exists()
    text = exp_bon(out, TINY, styles=("sorted",))
    assert "sorted demos: order_share" in text and "order share of the AfD classes" in text
    assert "| demonstrations | 0.000 | 1.000 |" in text  # the sorted demonstrations: no style words, all in order
    assert "can the discriminators see the style?" in text and "| sft_demo |" in text
    assert (out / "afd_bon_sorted.md").is_file() and (out / "afd_bon_sorted.png").is_file()
    assert not (out / "afd_bon.md").exists()
