"""Soak test: ``imitalign iterate`` killed (SIGKILL) at random moments N times, then run to the end, compared with
an uninterrupted run of the same config. Not part of the test suite (minutes of wall time).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/soak_iterate.py --kills 8 --out runs/soak [--seed 0]

The loop: a random tiny Llama as π_0 (the gym tokenizer), 2 rounds of 8 prompts × K = 2, a rule reward
(shorter is better), DPO for 6 steps a round with a checkpoint every 2 steps. Kills are placed by progress, not
by the clock (the machine's load varies): each (re)run is killed up to ``--jitter`` seconds after it has printed a
random number of lines of work, drawn from what is left (the uninterrupted run's line count × the share of stages
not yet sealed) — so kills land in sampling, scoring, pairing, training steps and checkpoint writes alike.
Compared at the end, bit for bit: every round's prompts, samples,
scores, training data and model weights; each round's ``metrics.jsonl`` has each step once. Prints one JSON
line with the result, the load average and the wall time; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = 2 * 5  # rounds × (prompts, samples, scored, pairs, train)
COMPARED = ("prompts.jsonl", "samples.jsonl", "scored.jsonl", "train_data.jsonl", "train/model/model.safetensors")


def brevity(rows: list[dict]) -> list[float]:
    """The loop's reward: shorter responses score higher."""
    return [-float(len(r["response"])) for r in rows]


def setup(root: Path) -> dict[str, str]:
    sys.path.insert(0, str(REPO))
    from imitalign.gym.tokenizer import load_tokenizer, save_tokenizer
    from imitalign.model.load import save_model
    from tests.helpers import tiny_llama

    tok = load_tokenizer(save_tokenizer(root / "tok"))
    save_model(tiny_llama(vocab_size=len(tok)), tok, root / "pi0")
    topics = ("forest", "city", "space", "music", "food", "sport", "art", "farm", "rain", "snow", "moon", "tree")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"write about sea and {t} =>"}) + "\n" for t in topics * 2))
    return {"pi0": str(root / "pi0"), "prompts": str(prompts)}


def config(paths: dict[str, str], out: Path) -> Path:
    raw = {
        "run": {"output_dir": str(out), "seed": 0},
        "policy": paths["pi0"],
        "rounds": 2,
        "prompts": {"source": {"path": paths["prompts"]}, "per_round": 8},
        "generate": {"k": 2, "max_new_tokens": 8, "batch_size": 8},
        "reward": {"kind": "function", "function": "soak_iterate:brevity"},
        "train": {
            "objective": {"name": "dpo"},
            "data": {"chat_template": "none", "max_length": 48},
            "train": {"batch_size": 2, "max_steps": 6, "save_every": 2, "lr": 1e-3, "log_every": 1},
            "reference": {"cache_dir": None},
        },
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'benchmarks'}", "OMP_NUM_THREADS": "1"}


def launch(cfg: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "imitalign.cli", "iterate", str(cfg)], env=env(),
                                stdout=f, stderr=subprocess.STDOUT)


def progress(log: Path) -> list[str]:
    """The lines a run has printed since its imports and checks (from its first ``[iterate]`` line)."""
    lines = log.read_text(errors="replace").splitlines()
    first = next((i for i, line in enumerate(lines) if "[iterate]" in line), None)
    return [] if first is None else lines[first:]


def kill_after(proc: subprocess.Popen, log: Path, n_lines: int, jitter: float) -> str | None:
    """SIGKILL ``proc`` ``jitter`` seconds after it has printed ``n_lines`` lines of work; the last line printed
    before the kill, or None when it ended first."""
    while proc.poll() is None and len(progress(log)) < n_lines:
        time.sleep(0.02)
    time.sleep(jitter)
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = progress(log)
    return lines[-1].strip()[:80] if lines else "(start)"


def where(out: Path) -> str:
    """The last sealed stage on disk (what a kill interrupted is the one after it)."""
    sealed = sorted(out.glob("round_*/manifest_*.json"), key=lambda p: p.stat().st_mtime)
    return f"{sealed[-1].parent.name}/{sealed[-1].stem.removeprefix('manifest_')}" if sealed else "(none)"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def compare(a: Path, b: Path) -> list[str]:
    problems = []
    for t in (1, 2):
        for name in COMPARED:
            x, y = digest(a / f"round_{t}" / name), digest(b / f"round_{t}" / name)
            if x != y:
                problems.append(f"round_{t}/{name}: {x} vs {y}")
        steps = [json.loads(line)["step"] for line in (b / f"round_{t}/train/metrics.jsonl").read_text().splitlines()]
        if len(steps) != len(set(steps)):
            problems.append(f"round_{t}/train/metrics.jsonl repeats steps: {steps}")
    ra = json.loads((a / "results.json").read_text()) if (a / "results.json").exists() else None
    rb = json.loads((b / "results.json").read_text()) if (b / "results.json").exists() else None
    if (ra is None) != (rb is None):
        problems.append("results.json present in only one run")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--out", default="runs/soak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.5, help="seconds (at most) between the chosen line and the kill")
    args = ap.parse_args()
    root = Path(args.out).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.time()
    load_start = os.getloadavg()
    paths = setup(root)
    log = root / "iterate.log"
    t_ref = time.time()
    ref = launch(config(paths, root / "uninterrupted"), log)
    if ref.wait() != 0:
        print(f"the uninterrupted run failed; see {log}", file=sys.stderr)
        return 1
    t_ref = time.time() - t_ref
    n_ref = len(progress(log))  # lines of work of a whole run: kills are placed by progress, not by the clock
    rng = random.Random(args.seed)
    cfg = config(paths, root / "killed")
    kills = []
    for i in range(args.kills):
        run_log = root / f"killed_{i}.log"
        proc = launch(cfg, run_log)
        left = 1.0 - len(list((root / "killed").glob("round_*/manifest_*.json"))) / STAGES
        n = rng.randint(1, max(1, round(n_ref * left)))  # somewhere in what is left of the work
        last = kill_after(proc, run_log, n, rng.uniform(0.0, args.jitter))
        if last is None:
            kills.append({"after_lines": n, "finished_before_kill": True, "rc": proc.returncode})
            break  # it finished: nothing left to interrupt
        kills.append({"after_lines": n, "last_line": last, "last_sealed": where(root / "killed")})
    final = launch(cfg, root / "final.log")
    rc = final.wait()
    problems = [f"the final run exited {rc}"] if rc != 0 else compare(root / "uninterrupted", root / "killed")
    result = {
        "kills": sum(1 for k in kills if "last_line" in k),
        "kill_log": kills,
        "equal": not problems,
        "problems": problems,
        "wall_s": round(time.time() - t0, 1),
        "uninterrupted_s": round(t_ref, 1),
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(sys.argv),
    }
    print(json.dumps(result))
    (root / "soak_result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
