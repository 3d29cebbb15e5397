"""From a DataConfig to examples: eval splits, kinds, the report, validation without a tokenizer, preview."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imitalign.config import DataConfig
from imitalign.data.dataset import build_datasets, load_split, validate_data
from imitalign.data.preview import preview
from imitalign.data.records import DataError
from imitalign.data.tokenize import TokenizedDemo, TokenizedPair, TokenizedPrompt

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # ../shared/data/real
pytestmark = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")
HH = REAL / "hh_rlhf" / "harmless-base_test.jsonl.gz"


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(REAL / "tokenizers" / "gpt2"))


def write_pairs(path: Path, n: int, long_every: int = 0) -> Path:
    rows = []
    for i in range(n):
        prompt = f"Question {i}?" + (" filler" * 60 if long_every and i % long_every == 0 else "")
        rows.append({"prompt": prompt, "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}.", "id": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_fraction_is_a_seeded_disjoint_hold_out(tmp_path, gpt2):
    cfg = DataConfig(train={"path": str(write_pairs(tmp_path / "p.jsonl", 40))}, eval_fraction=0.25, max_length=64)
    train, evals, report = build_datasets(cfg, gpt2, "preference", seed=3)
    assert (len(train), len(evals)) == (30, 10)
    assert all(isinstance(x, TokenizedPair) for x in train + evals)
    assert not {x.source for x in train} & {x.source for x in evals}
    again = build_datasets(cfg, gpt2, "preference", seed=3)
    assert [x.source for x in again.eval] == [x.source for x in evals]
    other = build_datasets(cfg, gpt2, "preference", seed=4)
    assert [x.source for x in other.eval] != [x.source for x in evals]
    assert (report.train.records, report.eval.records) == (30, 10)
    assert "10 rows held out for eval (eval_fraction 0.25, seed 3)" in report.summary()
    train, evals, _ = build_datasets(cfg.model_copy(update={"eval_fraction": 0.99}), gpt2, "preference")
    assert (len(train), len(evals)) == (1, 39)  # floor(0.99 · 40): never more than asked, one row always trains


def test_eval_fraction_never_eats_a_tiny_file(tmp_path, gpt2):
    cfg = DataConfig(train={"path": str(write_pairs(tmp_path / "p.jsonl", 3))}, eval_fraction=0.1, max_length=64)
    train, evals, report = build_datasets(cfg, gpt2, "preference")
    assert (len(train), len(evals), report.eval) == (3, 0, None)
    assert "eval_fraction 0.1 of 3 rows is less than one row: nothing held out, no eval split" in report.summary()
    assert report.to_dict()["train"]["notes"] == [
        "eval_fraction 0.1 of 3 rows is less than one row: nothing held out, no eval split (give data.eval, or more "
        "rows)"
    ]


def test_eval_source_and_kinds(tmp_path, gpt2):
    train_path = write_pairs(tmp_path / "train.jsonl", 6)
    eval_path = write_pairs(tmp_path / "eval.jsonl", 2)
    cfg = DataConfig(train={"path": str(train_path)}, eval={"path": str(eval_path)}, eval_fraction=0.5)
    train, evals, report = build_datasets(cfg, gpt2, "preference")
    assert (len(train), len(evals)) == (6, 2) and evals[0].source == f"{eval_path}:1"
    assert "eval_fraction ignored: data.eval is given" in report.summary()

    demos, _, report = build_datasets(cfg, gpt2, "demonstration")
    assert isinstance(demos[0], TokenizedDemo)
    assert gpt2.decode(demos[0].response_ids) == "Good answer 0.<|endoftext|>"  # the chosen response
    assert "6 preference rows used as demonstrations (their chosen responses)" in report.summary()
    prompts, _, _ = build_datasets(cfg, gpt2, "prompt")
    assert isinstance(prompts[0], TokenizedPrompt) and gpt2.decode(prompts[0].prompt_ids) == "Question 0?\n"

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    with pytest.raises(DataError, match=r"rows in format 'alpaca' have no chosen/rejected pair"):
        validate_data(DataConfig(train={"path": str(alpaca)}), "preference")


def test_report_counts_truncated_and_dropped_rows(tmp_path, gpt2, caplog):
    path = write_pairs(tmp_path / "p.jsonl", 10, long_every=5)  # rows 1 and 6 have 60-word prompts
    cfg = DataConfig(train={"path": str(path)}, max_length=40)
    with caplog.at_level(logging.WARNING, logger="imitalign.data"):
        train, _, report = build_datasets(cfg, gpt2, "preference", check_boundary=True)
    split = report.train
    assert (split.rows_read, split.parsed, split.examples, split.n_dropped) == (10, 10, 8, 2)
    assert dict(split.dropped) == {"prompt_too_long": 2}
    assert split.drop_examples["prompt_too_long"] == [f"{path}:1 (64 prompt tokens)", f"{path}:6 (64 prompt tokens)"]
    assert split.boundary_merges == 0
    assert split.max_sequence_tokens == max(len(x.prompt_ids) + len(x.chosen_ids) for x in train)
    text = report.summary()
    assert "2 × prompt longer than max_length on its own [prompt_too_long]" in text
    assert "examples: 8 kept of 10" in text
    assert "2 dropped (2 prompt_too_long)" in caplog.text
    json.dumps(report.to_dict())  # the trainer writes it next to the run

    capped = build_datasets(cfg.model_copy(update={"max_prompt_length": 20}), gpt2, "preference", log=False)
    assert len(capped.train) == 10 and capped.report.train.prompt_truncated == 2
    assert {len(x.prompt_ids) for x in capped.train if x.source in (f"{path}:1", f"{path}:6")} == {20}

    with pytest.raises(DataError, match="every row was dropped by truncation"):
        build_datasets(cfg.model_copy(update={"max_length": 4}), gpt2, "preference", log=False)


def test_validate_data_needs_no_tokenizer_and_fails_early(tmp_path):
    good = write_pairs(tmp_path / "p.jsonl", 5)
    report = validate_data(DataConfig(train={"path": str(good)}, eval_fraction=0.2), "preference")
    assert (report.train.records, report.eval.records, report.template) == (4, 1, None)
    assert "records: 4 (not tokenised)" in report.summary()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejectd": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'rejected'.*Did you mean 'rejectd'\?"):
        validate_data(DataConfig(train={"path": str(bad)}), "preference")
    with pytest.raises(DataError, match="unknown chat template 'lama3'"):
        validate_data(DataConfig(train={"path": str(good)}, chat_template="lama3"), "preference")
    with pytest.raises(DataError, match="data file not found"):
        validate_data(DataConfig(train={"path": str(tmp_path / "missing.jsonl")}), "preference")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"no usable rows, all 1 were skipped[\s\S]*empty_chosen"):
        validate_data(DataConfig(train={"path": str(empty)}), "preference")
    with pytest.raises(DataError, match=r"empty\.jsonl:1: empty chosen response"):
        validate_data(DataConfig(train={"path": str(empty)}), "preference", strict=True)


def test_real_hh_report(gpt2):
    cfg = DataConfig(train={"path": str(HH), "limit": 400}, max_length=256)
    examples, split = load_split(cfg.train, "preference", gpt2, cfg)
    assert (split.rows_read, split.parsed, dict(split.skipped)) == (400, 399, {"empty_chosen": 1})
    assert split.examples + split.n_dropped == 399 and split.examples == len(examples)
    assert all(len(x.prompt_ids) + max(len(x.chosen_ids), len(x.rejected_ids)) <= 256 for x in examples)
    # long dialogues lose whole earliest turns instead of the row, and every kept prompt starts at a turn
    assert split.n_dropped == 0 and split.prompt_turns_dropped == split.prompt_truncated > 0
    texts = [gpt2.decode(x.prompt_ids) for x in examples]
    assert all(t.startswith("Human: ") or "\n\nHuman:" not in t for t in texts)


def test_preview_marks_the_boundary(tmp_path, gpt2):
    path = write_pairs(tmp_path / "p.jsonl", 4, long_every=3)
    cfg = DataConfig(train={"path": str(path)}, max_length=40)
    text = preview(cfg, gpt2, "preference", n=2)
    assert f"━━ example 1 · {path}:2 · tokens: prompt 4, chosen 5, rejected 5" in text
    assert "Question 1?↵\n⟦CHOSEN⟧Good answer 1.<|endoftext|>⟦END⟧" in text
    assert "(same prompt) …⟦REJECTED⟧Bad answer 1.<|endoftext|>⟦END⟧" in text
    assert "(boundary ids: …[352, 30, 198] ⟦CHOSEN⟧ [10248, 3280, 352]…, last [50256])" in text
    assert "2 × prompt longer than max_length on its own [prompt_too_long]" in text
    assert "example 3" not in text
    coloured = preview(cfg, gpt2, "preference", n=1, color=True, max_rows=2)
    assert "\x1b[32mGood answer 1.<|endoftext|>\x1b[0m" in coloured and "rows: 2 read" in coloured
