"""FSDP2 = one process: 2 CPU processes (gloo) whose engine is ``fully_shard``-ed per decoder layer and at the
root train like 1 unsharded process with the same global batch — per-step losses, final consolidated weights.

accelerate's FSDP plugin does not engage on CPU; ``train.fsdp: true`` makes the loop install it in accelerate's
state (``imitalign.train.sharding.engage``), so ``prepare`` runs accelerate's own FSDP2 code
(``fsdp2_prepare_model``: DTensor shards, each process holds half of every weight), and ``save_state`` /
``load_state`` / ``get_state_dict`` their FSDP2 paths (sharded torch.distributed.checkpoint folders; full weights
gathered for the final ``save_pretrained``). The 1-process runs are plain (no sharding, no process group).

Tolerance: losses rtol 1e-4 / atol 1e-6, weights rtol 1e-4 / atol 5e-5 (under 2 % of one Adam step at lr 3e-3:
Adam divides by √v, so weights whose gradient is near 0 amplify the float differences) — the two runs differ only
in the order of float sums (a batch of 4 per process vs 8; gradients reduce-scattered instead of summed).
Every run checks that training moved the loss, so equality is not trivial.

Cost: each 2-process launch ~20-50 s on the shared 2 cores (load 5-13 when measured). The default suite runs the
DPO case (one launch: reference cache, consolidated save); sharded resume and the other objectives are ``slow``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from imitalign.config import load_config
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.train.loop import train
from tests.helpers import REPO, TINY_LLAMA
from tests.test_train import write_demos, write_pairs

SCRIPT = Path(__file__).with_name("fsdp_train_script.py")
STEPS = 4


def _raw(tmp_path: Path, name: str, objective: str, options: dict, batch_size: int, fsdp: bool, **extra) -> dict:
    data = tmp_path / ("demos.jsonl" if objective == "iqlearn" else "pairs.jsonl")
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tmp_path / "tok")},
        "reference": {"cache_dir": str(tmp_path / "refcache")},
        "data": {"train": {"path": str(data)}, "eval_fraction": 0.2, "chat_template": "none", "max_length": 64},
        "objective": {"name": objective, "options": options},
        "train": {
            "batch_size": batch_size,
            "lr": 3e-3,
            "max_steps": STEPS,
            "log_every": 1,
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "num_threads": 1,
            "mixed_precision": "no",
            "fsdp": fsdp,
        },
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


def _setup(tmp_path: Path) -> None:
    # 49 pairs: the shares are uneven on purpose (reference pass 25/24 rows = 4/3 batches of 8; eval 9 rows = 5/4
    # = 2/1 batches of 4): under sharding every forward is a collective, so this hung before lockstep_batches
    write_pairs(tmp_path / "pairs.jsonl", 49, 0)
    write_demos(tmp_path / "demos.jsonl", 48, 0)
    save_tokenizer(tmp_path / "tok")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(raw: dict, *flags: str) -> None:
    path = Path(raw["run"]["output_dir"] + ".json")
    path.write_text(json.dumps(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1"]
    cmd += ["--master_port", str(_free_port()), str(SCRIPT), str(path), *flags]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _one_process(raw: dict) -> None:
    train(load_config(None, raw=raw), quiet=True)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _assert_same_training(one: Path, two: Path, weights_file: str = "model.safetensors") -> None:
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == STEPS, (a, b)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)
    assert abs(a[-1] - a[0]) > 1e-3, a  # training moved the loss: the comparison is not trivial
    wa, wb = load_file(str(one / "model" / weights_file)), load_file(str(two / "model" / weights_file))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k  # full tensors, not shards
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=5e-5), (k, (wa[k] - wb[k]).abs().max())


def test_fsdp_dpo_reference_cache_and_saved_model(tmp_path):
    """DPO, reference precomputed on the sharded engine: 2 sharded processes = 1 process; the cache entry written
    by the sharded run (fingerprint of the full weights, not of a shard) is the one the unsharded run reads; the
    consolidated folder loads with ``from_pretrained`` and equals the unsharded result."""
    _setup(tmp_path)
    _two_processes(_raw(tmp_path, "two", "dpo", {"beta": 0.5}, 4, True))
    (entry,) = (tmp_path / "refcache").glob("*.safetensors")
    written = entry.stat().st_mtime_ns
    _one_process(_raw(tmp_path, "one", "dpo", {"beta": 0.5}, 8, False))
    assert [p.name for p in (tmp_path / "refcache").iterdir()] == [entry.name]  # same key: read, not recomputed
    assert entry.stat().st_mtime_ns == written
    _assert_same_training(tmp_path / "one", tmp_path / "two")

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model")
    expected = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert loaded.state_dict().keys() == expected.keys()
    for k, v in loaded.state_dict().items():
        assert torch.allclose(v, expected[k], rtol=1e-4, atol=5e-5), k


@pytest.mark.slow
def test_fsdp_resume_from_sharded_checkpoint(tmp_path):
    """2 sharded processes stopped right after the step-2 checkpoint (one shard file per process) and resumed =
    1 process uninterrupted: every step's loss and the final weights."""
    _setup(tmp_path)
    two = _raw(tmp_path, "two", "dpo", {"beta": 0.5}, 4, True, train__save_every=2)
    _two_processes(two, "--stop-after-checkpoint")
    ckpt = tmp_path / "two" / "checkpoints" / "step-0000002"
    shards = sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards  # one shard per process, not a full copy
    assert not (tmp_path / "two" / "model").exists()
    _two_processes(two, "--resume")
    _one_process(_raw(tmp_path, "one", "dpo", {"beta": 0.5}, 8, False))
    _assert_same_training(tmp_path / "one", tmp_path / "two")


CASES = {
    # a frozen reference copy evaluated in every step, sharded like the policy
    "dil_lsif_frozen_copy": ("dil_lsif", {}, {"reference__precompute": False}),
    # with activation checkpointing of every decoder layer (transformers' non-reentrant checkpointing) under FSDP2
    "iqlearn": ("iqlearn", {"lam": 0.1}, {"model__gradient_checkpointing": True}),
    # LoRA: the reference is the adapter-disabled policy; the adapter is saved beside the merged model
    "dpo_lora": ("dpo", {"beta": 0.5}, {"model__lora": {"r": 4, "alpha": 8, "dropout": 0.0}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_fsdp_trains_like_one_process(tmp_path, case):
    objective, options, extra = CASES[case]
    _setup(tmp_path)
    _two_processes(_raw(tmp_path, "two", objective, options, 4, True, **extra))
    _one_process(_raw(tmp_path, "one", objective, options, 8, False, **extra))
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    if "model__lora" in extra:
        _assert_same_training(tmp_path / "one", tmp_path / "two", "adapter/adapter_model.safetensors")


def test_zero3_parameters_make_the_engine_call_the_head():
    """Under ZeRO-3 a weight read outside its module's forward is an empty placeholder: a head whose weight
    carries DeepSpeed's ``ds_id`` is *called* (its hooks would gather the weight), with the same numbers and
    gradients as the fused path that reads the weight directly."""
    from imitalign.model.logprobs import LogProbModel
    from tests.helpers import tiny_llama

    model = tiny_llama()
    ids = torch.randint(1, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    response = mask.clone().bool()
    response[:, :5] = False
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    fused, _ = LogProbModel(model)(ids, mask, response)
    fused.sum().backward()
    grad_fused = model.lm_head.weight.grad.clone()
    assert not calls  # the fused path reads the weight without calling the module
    model.zero_grad()
    model.lm_head.weight.ds_id = 7  # what deepspeed.zero.Init puts on a partitioned parameter
    called, _ = LogProbModel(model)(ids, mask, response)
    called.sum().backward()
    assert calls  # the module was called: ZeRO-3's hooks would run
    assert torch.allclose(called, fused, atol=1e-6)
    assert torch.allclose(model.lm_head.weight.grad, grad_fused, atol=1e-6)
