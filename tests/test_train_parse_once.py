"""``train()`` reads, parses and tokenises each data file once: the records parsed by the fail-fast check
(before any model loads) are the ones tokenised, and the run's data report is the one a fresh build gives."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from imitalign.config import load_config
from imitalign.data import dataset
from imitalign.data.records import DataError
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.model.load import load_tokenizer
from imitalign.train import loop
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA
from tests.test_train import write_demos, write_pairs

BAD_DEMOS = [{"prompt": "write about forest , short =>", "response": ""}] * 2 + [{"prompt": "", "response": "sea"}]


def _append(path: Path, rows: list[dict]) -> Path:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _cfg(tmp_path: Path, objective: str, data: dict, options: dict | None = None):
    raw = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "data": {"chat_template": "none", "max_length": 64, **data},
        "objective": {"name": objective, "options": options or {}},
        "train": {"batch_size": 4, "lr": 1e-3, "max_steps": 2, "warmup_ratio": 0.0, "log_every": 1},
    }
    return load_config(None, raw=raw)


@pytest.fixture
def spy(monkeypatch):
    """Counts reads (``iter_rows``) and parses (``parse_rows``) per file, records tokenised, and the order of
    parsing and model loading."""
    calls = {"read": Counter(), "parse": Counter(), "tokenised": [], "events": []}
    iter_rows, parse_rows, tokenize_records = dataset.iter_rows, dataset.parse_rows, dataset.tokenize_records
    load_policy = loop.load_policy

    def counting_iter_rows(path, *a, **k):
        calls["read"][Path(path).name] += 1
        return iter_rows(path, *a, **k)

    def counting_parse_rows(rows, *a, source="", **k):
        calls["parse"][Path(source).name] += 1
        calls["events"].append(f"parse {Path(source).name}")
        return parse_rows(rows, *a, source=source, **k)

    def counting_tokenize(records, *a, **k):
        calls["tokenised"].append(len(records))
        return tokenize_records(records, *a, **k)

    def logged_load_policy(*a, **k):
        calls["events"].append("model")
        return load_policy(*a, **k)

    monkeypatch.setattr(dataset, "iter_rows", counting_iter_rows)
    monkeypatch.setattr(dataset, "parse_rows", counting_parse_rows)
    monkeypatch.setattr(dataset, "tokenize_records", counting_tokenize)
    monkeypatch.setattr(loop, "load_policy", logged_load_policy)
    return calls


def test_train_parses_each_file_once_with_the_same_report(tmp_path, spy, caplog):
    demos = _append(write_demos(tmp_path / "demos.jsonl", 40, 0), BAD_DEMOS)  # 43 rows, 3 skipped
    own = _append(write_demos(tmp_path / "own.jsonl", 12, 1), BAD_DEMOS[:1])  # 13 rows, 1 skipped
    cfg = _cfg(
        tmp_path, "iqlearn",
        {"train": {"path": str(demos)}, "eval_fraction": 0.25, "policy_samples": {"path": str(own)}},
        {"alpha": 0.1},
    )
    with caplog.at_level(logging.WARNING, logger="imitalign.data"):
        train(cfg, quiet=True)

    assert spy["read"] == {"demos.jsonl": 1, "own.jsonl": 1}
    assert spy["parse"] == {"demos.jsonl": 1, "own.jsonl": 1}
    # train 30 + eval 10 (the 40 parsed rows, eval_fraction 0.25) + 12 own samples, each tokenised once
    assert spy["tokenised"] == [30, 10, 12]
    assert spy["events"] == ["parse demos.jsonl", "parse own.jsonl", "model"]  # errors still before the model
    skip_lines = [r.getMessage() for r in caplog.records if "rows skipped" in r.getMessage()]
    assert len(skip_lines) == 1 and "3 rows skipped (2 empty_response, 1 empty_prompt)" in skip_lines[0]

    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert (saved["train"]["rows_read"], saved["train"]["parsed"], saved["train"]["skipped"]) == (
        43, 40, {"empty_response": 2, "empty_prompt": 1}
    )
    assert (saved["train"]["examples"], saved["eval"]["examples"]) == (30, 10)
    assert saved["policy_samples"]["name"] == "policy_samples"
    assert (saved["policy_samples"]["rows_read"], saved["policy_samples"]["skipped"]) == (13, {"empty_response": 1})

    # the report of reading, parsing and tokenising from scratch (as train() did before) is the same
    tok = load_tokenizer(cfg.model)
    fresh = dataset.build_datasets(cfg.data, tok, "demonstration", seed=cfg.run.seed, log=False).report.to_dict()
    _, own_report = dataset.load_split(cfg.data.policy_samples, "demonstration", tok, cfg.data, name="policy_samples")
    fresh["policy_samples"] = own_report.to_dict()
    assert saved == fresh


def test_a_separate_eval_file_is_read_once_too(tmp_path, spy):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24, 0)
    held = write_pairs(tmp_path / "held.jsonl", 8, 1)
    cfg = _cfg(tmp_path, "dpo", {"train": {"path": str(pairs)}, "eval": {"path": str(held)}}, {"beta": 0.5})
    train(cfg, quiet=True)
    assert spy["read"] == {"pairs.jsonl": 1, "held.jsonl": 1}
    assert spy["parse"] == {"pairs.jsonl": 1, "held.jsonl": 1}
    assert spy["tokenised"] == [24, 8]


def test_unusable_data_fails_before_the_model_loads(tmp_path, spy):
    bad = _append(tmp_path / "bad.jsonl", BAD_DEMOS)
    cfg = _cfg(tmp_path, "mle", {"train": {"path": str(bad)}})
    with pytest.raises(DataError, match="no usable rows, all 3 were skipped"):
        train(cfg, quiet=True)
    assert spy["parse"] == {"bad.jsonl": 1}
    assert "model" not in spy["events"] and spy["tokenised"] == []


def test_parsed_data_is_reused_unchanged(tmp_path):
    demos = _append(write_demos(tmp_path / "demos.jsonl", 20, 0), BAD_DEMOS)
    cfg = _cfg(tmp_path, "mle", {"train": {"path": str(demos)}, "eval_fraction": 0.2})
    tok = load_tokenizer(cfg.model)
    parsed = dataset.parse_data(cfg.data, "demonstration", seed=5)
    before = json.dumps(parsed.report.to_dict())
    once = dataset.build_datasets(cfg.data, tok, "demonstration", seed=5, parsed=parsed, log=False)
    twice = dataset.build_datasets(cfg.data, tok, "demonstration", seed=5, parsed=parsed, log=False)
    fresh = dataset.build_datasets(cfg.data, tok, "demonstration", seed=5, log=False)
    assert json.dumps(parsed.report.to_dict()) == before  # tokenising did not write into the parsed report
    assert once.report.to_dict() == twice.report.to_dict() == fresh.report.to_dict()
    assert [e.source for e in once.eval] == [e.source for e in fresh.eval]
    with pytest.raises(ValueError, match="seed 5"):
        dataset.build_datasets(cfg.data, tok, "demonstration", seed=6, parsed=parsed)


def test_a_discriminator_run_reads_its_labels_from_the_parsed_records(tmp_path, spy):
    """Kind ``classifier`` (``discriminator_bce``): the labels come from the records parsed once; a training split
    with one class is an error before the model loads."""
    rows = [{"prompt": "write about sea", "response": w, "label": i % 2} for i, w in enumerate(["wave tide"] * 20)]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(_cfg(tmp_path, "discriminator_bce", {"train": {"path": str(path)}, "eval_fraction": 0.25}), quiet=True)
    assert spy["read"] == {"labelled.jsonl": 1} and spy["parse"] == {"labelled.jsonl": 1}
    assert spy["tokenised"] == [15, 5]

    one = tmp_path / "one_class.jsonl"
    one.write_text("".join(json.dumps({**r, "label": 1}) + "\n" for r in rows))
    with pytest.raises(DataError, match="every training row has label 1.0"):
        train(_cfg(tmp_path / "b", "discriminator_bce", {"train": {"path": str(one)}}), quiet=True)
