"""``imitalign iterate`` with its stages launched as their own jobs (``launch:``; imitalign/loops/launch.py).

The orchestrator runs here (one process); each launched stage is ``accelerate launch --num_processes 2 -m
imitalign.cli iterate-stage ...`` (torchrun, gloo on this CPU). Two processes with per-process batch 2 give the
files of one in-process run with batch 4: the same prompts, samples, scores and pairs, the same weights within the
tolerance of tests/test_iterate_distributed.py. A stage job killed half-way (``IMITALIGN_FAULT``: a rank exits
abruptly after writing its shard, or after the first training checkpoint) fails the run with a message, leaves no
finished-looking file, and a rerun resumes — the training job from its checkpoint — to the same result.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from imitalign.config import ConfigError
from imitalign.gym.build import GymConfig, build_gym, read_jsonl, write_jsonl
from imitalign.loops.iterate import parse_iterate_config, run_iterate
from imitalign.loops.launch import StageJobError, StageLaunch, launch_argv

FILES = ("prompts.jsonl", "samples.jsonl", "scored.jsonl", "train_data.jsonl")
LAUNCH2 = {"generate": {"num_processes": 2}, "score": {"num_processes": 2}, "train": {"num_processes": 2}}


def _raw(tmp_path: Path, name: str, init: Path, prompts: Path, batch_size: int, launch=None) -> dict:
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 5},
        "policy": str(init),
        "rounds": 2,
        "prompts": {"source": {"path": str(prompts)}, "per_round": 5},
        "generate": {"k": 3, "max_new_tokens": 8, "batch_size": 4},
        "reward": {"kind": "gold"},
        "train": {
            "objective": {"name": "dpo", "options": {"beta": 0.5}},
            "train": {"max_steps": 2, "batch_size": batch_size, "lr": 3e-3, "schedule": "constant",
                      "warmup_ratio": 0.0, "log_every": 1, "num_threads": 1, "save_every": 1},
            "data": {"chat_template": "none", "max_length": 64},
        },
        "eval": {"prompts": {"path": str(prompts)}, "n": 2},
    }
    if launch:
        raw["launch"] = launch
    return raw


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.test_afd_rewards import save_lm

    root = tmp_path_factory.mktemp("launch")
    files = build_gym(GymConfig(n_sft=0, n_expert=0, n_pref_prompts=0, n_online_prompts=11, n_eval_prompts=3),
                      root / "gym")
    prompts = root / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": r["prompt"]} for r in read_jsonl(files.online_prompts)])
    return root, save_lm(root / "pi0", 7), prompts


@pytest.fixture
def job_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("IMITALIGN_FAULT", raising=False)
    return monkeypatch


def _same_run(one: Path, two: Path, w0: dict) -> None:
    for t in (1, 2):
        for name in FILES:
            a, b = read_jsonl(one / f"round_{t}" / name), read_jsonl(two / f"round_{t}" / name)
            assert [r.pop("logp", 0.0) for r in a] == pytest.approx([r.pop("logp", 0.0) for r in b], abs=1e-4)
            assert a == b, (t, name)  # the same draws (per-row seeds), scores and pairs
        a = load_file(one / f"round_{t}" / "train" / "model" / "model.safetensors")
        b = load_file(two / f"round_{t}" / "train" / "model" / "model.safetensors")
        gap = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
        moved = sum(float((a[k] - w0[k]).pow(2).sum()) for k in a) ** 0.5
        assert moved > 0.01 and gap < 1e-3 * moved, (t, gap, moved)
    assert not list(two.rglob("*.shard*")) and not list(two.rglob("*.tmp*"))


def test_launch_argv_and_config():
    argv = launch_argv(StageLaunch(num_processes=8, config_file="fsdp2.yaml"), ["iterate-stage", "c.yaml"])
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[3:5] == ["--config_file", "fsdp2.yaml"] and "--multi_gpu" not in argv  # the config file decides
    assert argv[argv.index("--num_processes") + 1] == "8" and argv[-4:] == ["-m", "imitalign.cli", "iterate-stage",
                                                                            "c.yaml"]
    assert "--multi_gpu" in launch_argv(StageLaunch(num_processes=2), ["x"])
    two = StageLaunch(num_processes=16, num_machines=2, main_process_ip="10.0.0.1", main_process_port=29555,
                      prefix=["srun", "--nodes=2", "--ntasks-per-node=1"])
    argv = launch_argv(two, ["iterate-stage", "run dir/c.yaml"])
    assert argv[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "bash", "-c"]
    words = shlex.split(argv[5])  # the machine rank is read on each machine
    assert words[words.index("--machine_rank") + 1] == "${SLURM_NODEID}" and words[-1] == "run dir/c.yaml"
    assert words[words.index("--main_process_ip") + 1] == "10.0.0.1" and "--num_machines" in words
    with pytest.raises(ValueError, match="needs a prefix"):
        StageLaunch(num_machines=2, main_process_ip="a", main_process_port=1)
    with pytest.raises(ConfigError, match="launch.trian"):
        parse_iterate_config({"policy": "p", "prompts": {"source": {"path": "p"}, "per_round": 1},
                              "reward": {"kind": "gold"}, "launch": {"trian": {}}})


@pytest.mark.slow
def test_launched_stages_equal_one_process_and_a_killed_stage_resumes(inputs, job_env, tmp_path):
    """Cost: 14 launched 2-process jobs (12 min at load 13 on the 2 shared cores)."""
    root, init, prompts = inputs
    run_iterate(parse_iterate_config(_raw(tmp_path, "one", init, prompts, 4)))
    launched = parse_iterate_config(_raw(tmp_path, "two", init, prompts, 2, LAUNCH2))
    res = run_iterate(launched)
    per_round = ["prompts", "samples", "scored", "pairs", "train", "eval"]
    assert res.ran == [(0, "eval")] + [(t, stage) for t in (1, 2) for stage in per_round]
    w0 = load_file(init / "model.safetensors")
    _same_run(tmp_path / "one", tmp_path / "two", w0)
    assert json.loads((tmp_path / "two" / "round_1" / "generation.json").read_text())["processes"] == 2

    # kill the generation job of round 2 half-way (rank 1 exits after writing its shard), then the training job of
    # round 2 after its first checkpoint; each rerun goes on from the files
    killed = parse_iterate_config(_raw(tmp_path, "killed", init, prompts, 2, LAUNCH2))
    job_env.setenv("IMITALIGN_FAULT", "generate:2")
    with pytest.raises(StageJobError, match="round 2: the generate job exited with status [1-9]"):  # (torchrun's)
        run_iterate(killed)
    rd = tmp_path / "killed" / "round_2"
    assert not (rd / "samples.jsonl").exists() and list(rd.glob("samples.jsonl.shard*"))  # half-way
    job_env.setenv("IMITALIGN_FAULT", "train:2")
    with pytest.raises(StageJobError, match="round 2: the train job exited"):
        run_iterate(killed)
    assert not (rd / "training.json").exists() and not (rd / "train" / "summary.json").exists()
    assert (rd / "train" / "checkpoints").is_dir()  # the first checkpoint, resumed from below
    job_env.delenv("IMITALIGN_FAULT")
    res = run_iterate(killed)
    assert res.ran == [(2, "train"), (2, "eval")]
    _same_run(tmp_path / "two", tmp_path / "killed", w0)


def test_launched_score_stage_equals_in_process(inputs, job_env, tmp_path):
    """The default suite's share: one round's score stage as a 2-process job (sharded scoring, gathered) writes
    the scored file of the in-process stage; the other stages in process. Cost: one launched job."""
    root, init, prompts = inputs
    raw = _raw(tmp_path, "one", init, prompts, 4)
    raw.update(rounds=1, eval=None)
    raw["train"]["train"]["max_steps"] = 1
    run_iterate(parse_iterate_config(raw))
    raw["run"]["output_dir"] = str(tmp_path / "two")
    res = run_iterate(parse_iterate_config({**raw, "launch": {"score": {"num_processes": 2}}}))
    assert res.ran == [(1, "prompts"), (1, "samples"), (1, "scored"), (1, "pairs"), (1, "train")]
    for name in FILES:
        assert read_jsonl(tmp_path / "one" / "round_1" / name) == read_jsonl(tmp_path / "two" / "round_1" / name)
