"""Runs that cannot be corrupted: bad settings, two processes on one folder, kills inside checkpoint and stage
writes, truncated and edited files, full disks. Each case asserts the exit code, the message, and that nothing
on disk changed without the run saying so. (≈60 s on 2 idle cores; the kills run in subprocesses.)"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imitalign.cli import app
from imitalign.config import DataConfig, DataSource, LoraConfig, ModelConfig, RunConfig, TrainConfig
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.runs import LOCK_FILE, acquire, read_record
from tests.helpers import REPO, TINY_LLAMA

runner = CliRunner()
def env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: this one's (the session's reference cache included), this repository first."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content hash (the lock file aside): what 'unchanged' means."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def write_pairs(path: Path, n: int = 8) -> Path:
    topics = ("forest", "city", "space", "music", "food", "sport", "art", "farm", "rain", "snow")
    rows = [{"prompt": f"write about sea and {topics[i % 10]} , short =>", "chosen": "wave boat .", "rejected": "bus ."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_yaml(tmp_path: Path, out: Path | None = None, **train: typing.Any) -> Path:
    tok = tmp_path / "tok"
    if not tok.exists():
        save_tokenizer(tok)
    raw = {
        "run": {"output_dir": str(out or tmp_path / "run"), "seed": 1},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tok)},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(write_pairs(tmp_path / "pairs.jsonl"))}, "chat_template": "none",
                 "max_length": 32},
        "objective": {"name": "dpo"},
        "train": {"batch_size": 4, "lr": 1e-3, "max_steps": 3, "log_every": 1, "warmup_ratio": 0.0, **train},
    }
    path = tmp_path / f"run_{len(list(tmp_path.glob('run_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, **kwargs: typing.Any) -> typing.Any:
    return runner.invoke(app, [str(a) for a in args], **kwargs)


# ------------------------------------------------------------------------------------------ bad settings
def _bad_values(field: typing.Any) -> list[typing.Any]:
    """Values just outside each bound of a numeric field (from its pydantic metadata), and nan/inf for floats."""
    out: list[typing.Any] = []
    is_float = float in typing.get_args(field.annotation) or field.annotation is float
    step = 0.5 if is_float else 1
    for m in field.metadata:
        for attr, sign, strict in (("gt", -1, False), ("ge", -1, True), ("lt", 1, False), ("le", 1, True)):
            bound = getattr(m, attr, None)
            if bound is not None:
                out.append(bound + sign * step if strict else bound)
    if is_float:
        out.append("nan")  # (inf is refused by the same check: allow_inf_nan=False)
    return out


SECTIONS = {"train": TrainConfig, "data": DataConfig, "data.train": DataSource, "model": ModelConfig,
            "model.lora": LoraConfig, "run": RunConfig}
NUMERIC = {
    f"{section}.{name}": f for section, schema in SECTIONS.items() for name, f in schema.model_fields.items()
    if {int, float} & ({f.annotation} | set(typing.get_args(f.annotation)))
    and typing.get_origin(f.annotation) is not tuple
}  # (adam_betas, a pair, has its own case below)


def _outside(rule: str) -> float:
    """A value that breaks an objective option's range rule."""
    from imitalign.objectives.rules import holds

    return next(v for v in (0.0, -0.5, 0.5, 1.5, -1e-3) if not holds(rule, v))


def test_every_numeric_setting_has_a_range():
    unchecked = [n for n, f in NUMERIC.items() if not [v for v in _bad_values(f) if v != "nan"]]
    assert unchecked == []
    assert len(NUMERIC) >= 20


def test_bad_settings_exit_2_naming_the_field_before_anything_is_written(tmp_path):
    """Every numeric setting of a train config with each value outside its range, and every objective's options
    outside their rules: exit 2, the field named, the output folder (here holding a finished run's files)
    unchanged."""
    from imitalign import objectives

    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"steps": 3}')
    before = tree(out)
    cases = [([f"{key}={v}"], key) for key, f in NUMERIC.items() for v in _bad_values(f)]
    cases.append((["train.adam_betas=[0.9,1.0]"], "adam_betas"))
    for name in objectives.names():
        extra = ["objective.options.generator=imitalign.objectives.ratio:lsif_generator"] if name == "bregman" else []
        for option, rule in objectives.get(name).rules.items():
            cases.append(([f"objective.name={name}", f"objective.options.{option}={_outside(rule)}", *extra], option))
    assert len(cases) > 40
    path = train_yaml(tmp_path)
    for sets, field in cases:
        result = cli("train", path, *[x for kv in sets for x in ("--set", kv)])
        assert result.exit_code == 2, (sets, result.output)
        assert field.split(".")[-1] in result.output, (sets, result.output)
    assert tree(out) == before
    assert not (out / LOCK_FILE).exists()


def test_bad_train_section_of_iterate_fails_before_any_work(tmp_path):
    raw = {"run": {"output_dir": str(tmp_path / "it")}, "policy": str(tmp_path / "nowhere"),
           "prompts": {"source": {"path": "p.jsonl"}, "per_round": 2}, "reward": {"kind": "gold"},
           "train": {"objective": {"name": "dpo", "options": {"beta": -0.1}}, "train": {"max_grad_norm": -1}}}
    path = tmp_path / "it.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("iterate", path)
    assert result.exit_code == 2 and "max_grad_norm" in result.output and "beta" in result.output, result.output
    assert not (tmp_path / "it").exists()
    raw["train"] = {"train": {"batch_size": 0, "log_every": 0}}
    path.write_text(yaml.safe_dump(raw))
    result = cli("iterate", path)
    assert result.exit_code == 2 and "batch_size" in result.output and "log_every" in result.output
    assert not (tmp_path / "it").exists()


# ------------------------------------------------------------------------------------------ one owner
def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until it is killed."""
    code = f"from imitalign.runs import acquire; acquire({str(folder)!r}, 'train'); print('held', flush=True); " \
           "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_a_run_folder_gets_one_message_and_exit_2(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        before = tree(out)
        result = cli("train", train_yaml(tmp_path, out))
        assert result.exit_code == 2
        assert f"{out} is in use by pid {holder.pid}" in result.output and "imitalign train" in result.output
        assert tree(out) == before  # nothing written by the refused process
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died with its lock file still there: a stale file never blocks
    assert (out / LOCK_FILE).exists() and str(holder.pid) in (out / LOCK_FILE).read_text()
    lock = acquire(out, "test")
    lock.release()
    assert not (out / LOCK_FILE).exists()


def test_a_finished_run_is_not_replaced_by_another_configuration_without_overwrite(tmp_path):
    out = tmp_path / "run"
    first = cli("train", train_yaml(tmp_path, out))
    assert first.exit_code == 0, first.output
    assert read_record(out)["finished"] is True
    before, fingerprint = tree(out), read_record(out)["fingerprint"]
    other = train_yaml(tmp_path, out, lr=2e-3)
    refused = cli("train", other)
    assert refused.exit_code == 2
    assert "holds a finished run of a different configuration" in refused.output and "--overwrite" in refused.output
    assert tree(out) == before
    replaced = cli("train", other, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "--overwrite: removing a finished run" in replaced.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the new run's records only
    assert read_record(out)["fingerprint"] != fingerprint and read_record(out)["finished"] is True


# ------------------------------------------------------------------------------------------ one sentence
def test_a_byte_that_is_not_utf8_is_reported_with_file_line_and_column(tmp_path):
    path = train_yaml(tmp_path)
    data = tmp_path / "pairs.jsonl"
    lines = data.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"sea and", b"sea \xff and")
    data.write_bytes(b"".join(lines))
    result = cli("train", path)
    assert result.exit_code == 2
    assert f"{data}:5:29: byte 0xff is not UTF-8 (line 5, column 29)" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_local_model_path_that_does_not_exist_is_not_looked_up_on_the_hub(tmp_path):
    path = train_yaml(tmp_path)
    t0 = time.perf_counter()
    for name in (str(tmp_path / "no" / "model"), "./no_such_model_dir", "../no/such"):
        result = cli("train", path, "--set", "model.config=null", "--set", f"model.name_or_path={name}")
        assert result.exit_code == 2
        assert f"path {name} does not exist" in result.output and "not looked up on the hub" in result.output
    assert time.perf_counter() - t0 < 10  # (a hub lookup retries for about a minute)


def test_no_space_and_permission_denied_are_one_sentence(tmp_path, monkeypatch):
    import imitalign.train.loop as loop

    path = train_yaml(tmp_path)
    for err, said in ((OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "data_report.json")),
                       "no space left on the device while writing"),
                      (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "config.yaml")),
                       "permission denied: ")):

        def fail(*a: typing.Any, err: OSError = err, **k: typing.Any) -> None:
            raise err

        monkeypatch.setattr(loop, "dump_config", fail)
        result = cli("train", path, "--overwrite")
        assert result.exit_code == 2, result.output
        assert said in result.output and err.filename in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_ensure_space_names_folder_and_sizes(tmp_path, monkeypatch):
    import shutil

    from imitalign.failures import NoSpace, ensure_space

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 2**20))
    with pytest.raises(NoSpace, match=rf"no space left for a checkpoint in {tmp_path}: it needs about 20.0 MB, "
                                      r"1.0 MB are free"):
        ensure_space(tmp_path, 20 * 2**20, "a checkpoint")


# ------------------------------------------------------------------------------------------ caches
def test_an_edited_reference_cache_is_detected_and_rebuilt(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from imitalign.train.refcache import RefLogpsCache

    cache = RefLogpsCache(tmp_path)
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    path = cache.save("k", logps, {"n": 2})
    assert torch.equal(cache.load("k", 2), logps)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    edited = load_file(str(path))["logps"].clone()
    edited[0, 0] = -0.5  # a valid file, a changed value
    save_file({"logps": edited}, str(path), metadata=meta)
    assert cache.load("k", 2) is None


def test_an_edited_cached_sample_file_is_rebuilt(tmp_path, caplog):
    from imitalign.loops.stages import read_cached_rows, write_cached_rows

    path = tmp_path / "samples.jsonl"
    write_cached_rows(path, [{"response": "a", "score": 1.0}, {"response": "b", "score": 0.0}], "fp")
    assert read_cached_rows(path, "fp") == [{"response": "a", "score": 1.0}, {"response": "b", "score": 0.0}]
    path.write_text(path.read_text().replace('"score": 0.0', '"score": 9.0'))
    assert read_cached_rows(path, "fp") is None
    assert "changed since it was written" in caplog.text


def test_truncate_metrics_keeps_each_step_once(tmp_path):
    from imitalign.train.integrity import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert truncate_metrics(path, 0) == 2 and path.read_text() == ""


def test_grad_norm_is_computed_without_clipping():
    import torch
    from accelerate import Accelerator

    from imitalign.train.integrity import step_grad_norm

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert float(step_grad_norm(Accelerator(cpu=True), [p], None)) == 5.0 and p.grad.tolist() == [3.0, 4.0]
    p.grad = torch.tensor([float("nan"), 0.0])
    assert math.isnan(float(step_grad_norm(Accelerator(cpu=True), [p], None)))


# ------------------------------------------------------------------------------------------ iterate stages
def brevity(rows: list[dict]) -> list[float]:
    """A reward for the tiny loop: shorter responses score higher."""
    return [-float(len(r["response"])) for r in rows]


@pytest.fixture(scope="module")
def tiny_loop(tmp_path_factory):
    """A random tiny Llama as π_0 (with the gym tokenizer), 8 prompts, and an iterate config of one round (4
    prompts × K = 2, one DPO step): ≈3 s a run."""
    from imitalign.gym.tokenizer import load_tokenizer
    from imitalign.model.load import save_model
    from tests.helpers import tiny_llama

    root = tmp_path_factory.mktemp("tiny_loop")
    tok = load_tokenizer(save_tokenizer(root / "tok"))
    save_model(tiny_llama(vocab_size=len(tok)), tok, root / "pi0")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"write about sea and {t} =>"}) + "\n"
                               for t in ("forest", "city", "space", "music", "food", "sport", "art", "farm")))
    return {"root": root, "pi0": str(root / "pi0"), "prompts": str(prompts)}


def loop_yaml(tiny_loop: dict, out: Path) -> Path:
    raw = {
        "run": {"output_dir": str(out), "seed": 0},
        "policy": tiny_loop["pi0"],
        "rounds": 1,
        "prompts": {"source": {"path": tiny_loop["prompts"]}, "per_round": 4},
        "generate": {"k": 2, "max_new_tokens": 4, "batch_size": 8},
        "reward": {"kind": "function", "function": "tests.test_faults:brevity"},
        "train": {"objective": {"name": "dpo"}, "data": {"chat_template": "none", "max_length": 48},
                  "train": {"batch_size": 2, "max_steps": 1, "lr": 1e-3, "warmup_ratio": 0.0},
                  "reference": {"cache_dir": None}},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_kill_between_a_stage_files_and_its_manifest_redoes_the_stage(tiny_loop, tmp_path):
    out = tmp_path / "loop"
    path = loop_yaml(tiny_loop, out)
    killed = subprocess.run([sys.executable, "-m", "imitalign.cli", "iterate", str(path)],
                            env=env(IMITALIGN_KILL_AT="stage:scored:sealing"), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    rd = out / "round_1"
    assert (rd / "scored.jsonl").exists() and (rd / "scoring.json").exists()  # data and statistics, unsealed
    assert not (rd / "manifest_scored.json").exists() and (rd / "manifest_samples.json").exists()
    scored = (rd / "scored.jsonl").read_bytes()
    rerun = cli("iterate", path)
    assert rerun.exit_code == 0, rerun.output
    assert "round_1 scored: manifest_scored.json (its manifest) is missing: the stage was not finished; " \
           "redoing the stage" in rerun.output
    assert "round_1 samples" not in rerun.output  # the sealed stage before it is reused, silently
    assert (rd / "scored.jsonl").read_bytes() == scored and (rd / "manifest_scored.json").exists()
    assert read_record(out)["finished"] is True


def test_edited_samples_and_a_truncated_round_model_are_detected_and_redone(tiny_loop, tmp_path):
    from safetensors.torch import load_file

    from imitalign.loops.iterate import parse_iterate_config, run_iterate

    out = tmp_path / "loop"
    cfg = parse_iterate_config(yaml.safe_load(loop_yaml(tiny_loop, out).read_text()))
    run_iterate(cfg, say=lambda m: None)
    rd = out / "round_1"
    weights = rd / "train" / "model" / "model.safetensors"
    kept = {k: v.clone() for k, v in load_file(str(weights)).items()}  # copies: the file is mmapped, then cut
    original = {"samples": (rd / "samples.jsonl").read_bytes(), "weights": kept}
    before = tree(out)
    # an edited sample: the stage is redone (the same seeds give the same samples), nothing after it changes
    edited = original["samples"].replace(b'"sample_idx": 0', b'"sample_idx": 7', 1)  # same size, other content
    assert len(edited) == len(original["samples"]) and edited != original["samples"]
    (rd / "samples.jsonl").write_bytes(edited)
    said: list[str] = []
    again = run_iterate(cfg, say=said.append)
    assert again.ran == [(1, "samples")]
    assert any("samples.jsonl changed since it was written" in m and "redoing the stage" in m for m in said), said
    after = tree(out)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # only the redone stage's statistics (timings) and manifest, and the report's timing columns
    assert changed <= {"round_1/generation.json", "round_1/manifest_samples.json", "report.md", "results.json"}
    assert (rd / "samples.jsonl").read_bytes() == original["samples"]
    # a truncated round model: detected (not reused, no SafetensorError), trained again to the same weights
    weights.write_bytes(weights.read_bytes()[:-100])
    said.clear()
    again = run_iterate(cfg, say=said.append)
    assert (1, "train") in again.ran
    assert any("model.safetensors has" in m and "were written" in m for m in said), said
    retrained = load_file(str(weights))
    assert all(retrained[k].equal(v) for k, v in original["weights"].items())


def test_a_truncated_model_folder_is_a_clear_error_not_a_safetensor_error(tiny_loop, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from imitalign.config import ConfigError
    from imitalign.manifest import seal_model
    from imitalign.model.load import from_pretrained

    for sealed in (True, False):
        copy = tmp_path / f"pi0_{sealed}"
        shutil.copytree(tiny_loop["pi0"], copy)
        if sealed:
            seal_model(copy)
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        match = "is not the model that was saved" if sealed else "a weights file cannot be read"
        with pytest.raises(ConfigError, match=match):
            from_pretrained(AutoModelForCausalLM, str(copy))


# ------------------------------------------------------------------------------------------ checkpoints
class SimulatedKill(BaseException):
    """Raised at a fault point in-process: the files stay as they are at that moment (as with kill -9)."""


def _kill_at(monkeypatch: pytest.MonkeyPatch, point: str, nth: int = 1) -> None:
    import imitalign.train.checkpoint as checkpoint

    arrivals = {"n": 0}

    def fault(name: str) -> None:
        if name == point:
            arrivals["n"] += 1
            if arrivals["n"] == nth:
                raise SimulatedKill(point)

    monkeypatch.setattr(checkpoint, "fault", fault)


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(run / "model" / "model.safetensors")).items()}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kills_inside_checkpoint_writes_then_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    """A kill during the first checkpoint: a plain rerun starts over. Kills inside later checkpoints, the folder
    moved and renamed in between: ``--resume`` continues; every step is logged once; the weights are the
    uninterrupted run's, bit for bit."""
    whole = tmp_path / "whole"
    assert cli("train", train_yaml(tmp_path, whole, save_every=1, max_steps=4)).exit_code == 0
    run = tmp_path / "run"
    path = train_yaml(tmp_path, run, save_every=1, max_steps=4)
    _kill_at(monkeypatch, "checkpoint:written")
    with pytest.raises(SimulatedKill):
        cli("train", path, catch_exceptions=False)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000001.tmp"]
    _kill_at(monkeypatch, "checkpoint:written", nth=3)  # a plain rerun: starts over, killed inside step 3's
    with pytest.raises(SimulatedKill):
        cli("train", path, catch_exceptions=False)
    assert _steps(run) == [1, 2, 3]
    moved = tmp_path / "moved"
    run.rename(moved)  # a moved (and renamed) run folder resumes: where it lives is not what it trains
    path = train_yaml(tmp_path, moved, save_every=1, max_steps=4)
    raw = yaml.safe_load(path.read_text())
    raw["run"]["name"] = "renamed"
    path.write_text(yaml.safe_dump(raw))
    _kill_at(monkeypatch, "checkpoint:written", nth=99)
    resumed = cli("train", path, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "at step 2/4" in resumed.output
    assert _steps(moved) == [1, 2, 3, 4]  # each step once: the killed run's step-3 record was cut on resume
    a, b = _weights(whole), _weights(moved)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_nan_gradient_with_clipping_off_stops_before_the_update(tmp_path, monkeypatch):
    """max_grad_norm: null still checks the gradient: a NaN gradient (finite loss) at step 3 stops the run before
    the update; the checkpoint it names is one whose weights were verified finite."""
    import torch
    from safetensors.torch import load_file

    from imitalign.train import loop

    original = loop.Trainer._forward_backward

    def nan_grad_at_step_3(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.global_step == 2:
            next(p for p in self.engine.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return loss

    monkeypatch.setattr(loop.Trainer, "_forward_backward", nan_grad_at_step_3)
    run = tmp_path / "run"
    result = cli("train", train_yaml(tmp_path, run, save_every=1, max_steps=4, max_grad_norm=None))
    assert result.exit_code == 2
    named = run / "checkpoints" / "step-0000002"
    assert "non-finite loss or gradient at step 3" in result.output
    assert f"Last good checkpoint: {named}" in result.output
    assert json.loads((named / "trainer_state.json").read_text())["weights_finite"] is True
    weights = load_file(str(named / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (run / "model").exists() and not (run / "checkpoints" / "step-0000003").exists()


def test_only_checkpoints_verified_finite_are_named(tmp_path):
    from imitalign.train.integrity import last_finite_checkpoint

    for step, state in ((1, {"weights_finite": True}), (2, {"weights_finite": True}), (3, {})):
        ckpt = tmp_path / "checkpoints" / f"step-{step:07d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, **state}))
    assert last_finite_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-0000002"  # 3: not verified
