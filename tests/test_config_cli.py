"""Configuration errors and the command line: each bad input produces its message, before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from imitalign.cli import app
from imitalign.config import ConfigError, load_config
from imitalign.gym.tokenizer import save_tokenizer
from tests.helpers import TINY_LLAMA

runner = CliRunner()


def _write_run(tmp_path, objective="dpo", **extra):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps({"prompt": f"write about sea and {t} , short =>", "chosen": "wave boat .", "rejected": "bus ."})
            for t in ("forest", "city", "space", "music", "food", "sport", "art", "farm")
        )
        + "\n"
    )
    raw = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 1},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "data": {"train": {"path": str(pairs)}, "chat_template": "none", "max_length": 32},
        "objective": {"name": objective},
        "train": {"batch_size": 4, "lr": 1e-3, "max_steps": 2, "log_every": 1},
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_misspelt_field_names_the_path_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown field — did you mean 'lr'\?"):
        load_config(_write_run(tmp_path), ["train.lrr=1e-3"])


def test_missing_and_wrong_type_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"data: required field is missing"):
        load_config(None, raw={"model": {"name_or_path": "x"}})
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(_write_run(tmp_path), ["train.batch_size=many"])
    with pytest.raises(ConfigError, match="exactly one of model.name_or_path or model.config"):
        load_config(None, raw={"model": {}, "data": {"train": {"path": "x"}}})


def test_set_overrides_are_typed(tmp_path):
    cfg = load_config(_write_run(tmp_path), ["train.lr=3e-6", "objective.options.beta=0.25", "train.trackers=[]"])
    assert cfg.train.lr == 3e-6 and cfg.objective.options == {"beta": 0.25}


def test_cli_unknown_objective_lists_known_ones_and_exits_2(tmp_path):
    result = runner.invoke(app, ["train", str(_write_run(tmp_path, objective="dpp"))])
    assert result.exit_code == 2
    assert "unknown objective 'dpp'" in result.output and "dil_lsif" in result.output and "'dpo'" in result.output
    assert not (tmp_path / "run").exists()  # nothing written, no model loaded


def test_cli_malformed_json_names_file_and_line(tmp_path):
    path = _write_run(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text(data.read_text() + '{"prompt": "x", "chosen": \n')
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert f"{data}:9" in result.output


def test_cli_train_and_preview_end_to_end(tmp_path):
    path = _write_run(tmp_path)
    preview = runner.invoke(app, ["data", "preview", str(path), "-n", "1"])
    assert preview.exit_code == 0, preview.output
    assert "wave boat ." in preview.output and "8 kept" in preview.output
    result = runner.invoke(app, ["train", str(path), "--set", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3  # the resolved config, overrides included
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_cli_eval_reports_kl_zero_against_itself_and_sample_writes_k_rows(tmp_path):
    path = _write_run(tmp_path)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    model = str(tmp_path / "run" / "model")
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["eval", model, "--prompts", str(tmp_path / "pairs.jsonl"), "--reference", model, "--pairs",
         str(tmp_path / "pairs.jsonl"), "--n", "2", "--max-new-tokens", "8", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["n_samples"] == 16 and abs(res["kl_to_reference"]["mean"]) < 1e-4
    assert "win_rate_vs_chosen" in res and "heldout_logp_chosen" in res
    samples = tmp_path / "samples.jsonl"
    result = runner.invoke(app, ["sample", model, str(tmp_path / "pairs.jsonl"), "--out", str(samples), "--k", "3",
                                 "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert len(samples.read_text().splitlines()) == 24
