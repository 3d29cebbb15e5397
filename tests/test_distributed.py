"""Same result on more processes: 2 CPU processes (gloo) with batch 4 each train like 1 process with batch 8 —
the same loss curve and the same final weights, within float tolerance. The fast test (default suite: one
2-process launch of 3 steps of DPO and of MLE, ~20 s) checks the README's claim; the slow one runs 5 steps with
and without packing and checks the reference cache shared between the runs.

Launcher: ``accelerate launch --multi_gpu --num_processes 2`` on this CPU-only machine (torchrun underneath;
the loop then asks accelerate for ``cpu=True`` and gets a gloo process group). ``accelerate launch --cpu
--num_processes 2`` is not used: without mpirun, accelerate's simple launcher starts a single process.
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

from imitalign.gym.tokenizer import save_tokenizer
from tests.helpers import REPO, TINY_LLAMA
from tests.test_train import write_pairs

SCRIPT = Path(__file__).with_name("dist_train_script.py")


def _config(
    tmp_path: Path, name: str, batch_size: int, packing: bool, objective: str = "dpo", max_steps: int = 5
) -> Path:
    data = "demos.jsonl" if objective == "mle" else "pairs.jsonl"
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tmp_path / "tok")},
        "reference": {"cache_dir": str(tmp_path / "refcache")},
        "data": {
            "train": {"path": str(tmp_path / data)},
            "eval_fraction": 0.2,
            "chat_template": "none",
            "max_length": 64,
        },
        "objective": {"name": objective, "options": {"beta": 0.5} if objective == "dpo" else {}},
        "train": {
            "batch_size": batch_size,
            "lr": 3e-3,
            "max_steps": max_steps,
            "log_every": 1,
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "num_threads": 1,
            "packing": packing,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _losses(run_dir: Path, key: str = "train/loss") -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _same_weights(a: Path, b: Path) -> None:
    wa = load_file(str(a / "model" / "model.safetensors"))
    wb = load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k


def test_two_processes_take_the_same_steps_as_one_fast(tmp_path):
    """README: "The same global batch gives the same update on any number of processes" — `imitalign train`'s
    loop under ``accelerate launch`` (2 gloo processes, batch 4 each) against one process (batch 8), 3 steps of
    DPO (example-normalised) and of MLE (token-normalised across processes): same logged losses (rel 1e-4),
    same weights (rel 1e-4, abs 1e-5)."""
    from imitalign.config import load_config
    from imitalign.train.loop import train
    from tests.test_train import write_demos

    write_pairs(tmp_path / "pairs.jsonl", 40, 0)
    write_demos(tmp_path / "demos.jsonl", 40, 0)
    save_tokenizer(tmp_path / "tok")
    two = [_config(tmp_path, f"two_{o}", 4, True, o, max_steps=3) for o in ("dpo", "mle")]
    _run(ACCELERATE + ["--main_process_port", str(_free_port()), str(SCRIPT), *map(str, two)])
    for objective in ("dpo", "mle"):
        one = _config(tmp_path, f"one_{objective}", 8, True, objective, max_steps=3)
        train(load_config(None, raw=json.loads(one.read_text())), quiet=True)
        a, b = _losses(tmp_path / f"one_{objective}"), _losses(tmp_path / f"two_{objective}")
        assert len(a) == len(b) == 3, (a, b)
        assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (objective, a, b)
        if objective == "mle":  # the logged loss is the per-token NLL of the whole step on 2 processes too
            nll = _losses(tmp_path / f"two_{objective}", "train/nll")
            assert torch.allclose(torch.tensor(b), torch.tensor(nll), rtol=1e-5), (b, nll)
        assert a[-1] < a[0]  # it learnt something, so the comparison is not trivial
        _same_weights(tmp_path / f"one_{objective}", tmp_path / f"two_{objective}")


@pytest.mark.slow
@pytest.mark.parametrize("packing", [True, False])
def test_two_processes_train_like_one(tmp_path, packing):
    write_pairs(tmp_path / "pairs.jsonl", 64, 0)
    save_tokenizer(tmp_path / "tok")
    one = _config(tmp_path, "one", 8, packing)
    two = _config(tmp_path, "two", 4, packing)
    accelerate = ACCELERATE + ["--main_process_port", str(_free_port())]  # not the default 29500: runs may overlap
    _run(accelerate + [str(SCRIPT), str(two)])
    # the 2-process run computed the reference in two shards and the main process wrote the cache entry;
    # the 1-process run reads it (same weights, same data) and leaves it untouched
    (entry,) = (tmp_path / "refcache").glob("*.safetensors")
    written = entry.stat().st_mtime_ns
    _run([sys.executable, str(SCRIPT), str(one)])
    assert [p.name for p in (tmp_path / "refcache").iterdir()] == [entry.name]
    assert entry.stat().st_mtime_ns == written

    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 5, (a, b)  # one line per step: only the main process writes
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)
    assert a[-1] < a[0]  # it learnt something, so the comparison is not trivial
    _same_weights(tmp_path / "one", tmp_path / "two")
    ea = json.loads((tmp_path / "one" / "summary.json").read_text())["eval"]
    eb = json.loads((tmp_path / "two" / "summary.json").read_text())["eval"]
    assert abs(ea["loss"] - eb["loss"]) < 1e-4 * max(1.0, abs(ea["loss"]))
