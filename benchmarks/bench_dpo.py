"""Offline DPO, side by side: TRL's DPOTrainer against imitalign, on one CPU machine.

    python benchmarks/bench_dpo.py            # the full table (tens of minutes on 2 cores)
    python benchmarks/bench_dpo.py --quick    # a smoke test: few rows
    python benchmarks/bench_dpo.py --check-only  # only the per-step loss match against TRL

Needs ``pip install -e ".[bench]"`` (TRL). Everything is built locally, nothing is downloaded:

- a word-level tokenizer (``tokenizers``) with the wanted vocabulary size: tokens ``w0 … w{V-3}``, ``<pad>``,
  ``<eos>``; each synthetic word is one token, so text rows tokenise to exactly the wanted lengths;
- a tiny Llama (4 layers, hidden 256, MLP 1024, 4 heads, untied head) built from a config with a fixed seed and
  saved once, so every variant starts from the same weights;
- two data sets written as JSONL text rows (``prompt``, ``chosen``, ``rejected``):
  ``variable``: prompts 16–256 and responses 16–512 tokens, log-uniform, vocabulary 32k;
  ``fixed``: prompts 32 and responses 64 tokens, vocabulary 16k, 2000 pairs.

Variants, each in its own subprocess (so peak RSS does not mix), same hyper-parameters (DPO sigmoid loss,
β 0.1, batch 8 pairs, constant lr 1e-5 with no warm-up, AdamW (0.9, 0.999) no weight decay, grad-norm clip 1,
fp32, 2 threads, one epoch, no evaluation, no checkpoints; TRL's gradient checkpointing — on by default in
``DPOConfig`` — is turned off, as imitalign does not recompute activations either):

- ``trl_ref``: TRL DPOTrainer with a reference model copy (the default);
- ``trl_pre``: TRL with ``precompute_ref_log_probs=True``;
- ``imitalign_dpo`` and ``imitalign_dil``: ``imitalign.train.train`` with ``dpo`` (β 0.1) and ``dil_lsif``
  (β 0.1), packing on, reference log-probs precomputed (the disk cache is OFF here, so the pass is counted).

Reported per variant:

- ``epoch_s``: wall time of the reference pass plus one epoch of training steps (TRL: its precompute pass +
  ``trainer.train()``; imitalign: ``precompute_reference`` + the step loop, up to the final save). Data
  tokenisation, model loading and saving are outside it (``total_s`` is the whole subprocess);
- ``cpu_s``: process CPU time over the same interval (less sensitive to other load on the machine);
- ``tok_s``: real (non-padding) tokens of one epoch (prompt + response, both sequences of every pair) / epoch_s;
- ``rss_gb``: peak resident set size of the subprocess (``VmHWM``), imports included;
- ``gflops``: model FLOPs / epoch_s, counting ``6·N·T`` for the training pass and ``2·N·T`` for the reference
  pass, with ``N`` the parameters of the 4 layers, the final norm and the LM head (the input embedding is a
  lookup and is not counted) and ``T`` the real tokens. The same count for every variant, whatever the
  implementation actually executes (padding, LM head on prompt positions, recomputation), so it measures
  useful work; attention's ``T²`` term is not counted. ``train_gflops`` is the same for the training phase
  alone (``6·N·T / train_s``). Both are compared with the fp32 matmul peak (best of 5 ``2048³`` matmuls with
  2 threads) probed in a fresh subprocess just before and after the variant (their mean): on a shared machine
  the peak moves with the load, so it is taken in conditions close to the variant's.

The loss check (``--check-only``, and at the start of a full run): on the ``variable`` rows, from identical
weights and with identical batches (TRL is given imitalign's epoch order and a sequential sampler), the DPO
loss of each of the first steps must agree within a relative 1e-4.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_tables

HERE = Path(__file__).resolve().parent
SETTINGS: dict[str, dict[str, Any]] = {
    "variable": {"vocab": 32000, "pairs": 300, "prompt": (16, 256), "response": (16, 512)},
    "fixed": {"vocab": 16000, "pairs": 2000, "prompt": (32, 32), "response": (64, 64)},
    # for tests/test_perf_bench.py: a much smaller model and rows, the same code path
    "tiny": {
        "vocab": 512,
        "pairs": 24,
        "prompt": (4, 16),
        "response": (4, 24),
        "model": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
}
QUICK_PAIRS = {"variable": 24, "fixed": 64}
MODEL = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
HP = {"beta": 0.1, "batch_size": 8, "lr": 1e-5, "threads": 2, "max_grad_norm": 1.0}
VARIANTS = ["trl_ref", "trl_pre", "plain", "imitalign_dpo", "imitalign_bf16", "imitalign_dil"]
DEFAULT_VARIANTS = ["trl_ref", "trl_pre", "plain", "imitalign_dpo", "imitalign_bf16"]
TRL_VARIANTS = ("trl_ref", "trl_pre")
SLOW_VARIANTS = (*TRL_VARIANTS, "imitalign_bf16")  # run --slow-repeats times (bf16 is emulated without avx512_bf16)


# ---------------------------------------------------------------- data, tokenizer, model


def _loguniform(rng: random.Random, lo: int, hi: int) -> int:
    return lo if lo == hi else int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def build_setting(root: Path, name: str, pairs: int, seed: int = 0) -> Path:
    """Tokenizer, initial model and JSONL rows of one setting under ``root/name`` (reused when present)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = SETTINGS[name]
    folder = root / f"{name}-{pairs}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {f"w{i}": i for i in range(spec["vocab"] - 2)}
    vocab["<pad>"], vocab["<eos>"] = spec["vocab"] - 2, spec["vocab"] - 1
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(folder / "model")

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=spec["vocab"],
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<eos>"],
        bos_token_id=None,
        **{**MODEL, **spec.get("model", {}), "num_key_value_heads": None},
    )
    LlamaForCausalLM(cfg).save_pretrained(folder / "model", safe_serialization=True)

    rng = random.Random(seed)
    n_words = spec["vocab"] - 2

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(n_words)}" for _ in range(n))

    with (folder / "pairs.jsonl").open("w") as f:
        for _ in range(pairs):
            p = _loguniform(rng, *spec["prompt"])
            c, r = _loguniform(rng, *spec["response"]), _loguniform(rng, *spec["response"])
            # responses start with a space: TRL tokenises prompt + response as one string
            f.write(json.dumps({"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)}) + "\n")
    (folder / "done").write_text("ok")
    return folder


def matmul_peak(threads: int) -> float:
    """Best-of-5 fp32 GFLOP/s of a 2048³ matmul with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


# ---------------------------------------------------------------- the variants (run in a subprocess)


def _count_params(model: Any) -> int:
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


def _imitalign_items(folder: Path, max_length: int = 2048) -> tuple[list, Any]:
    from imitalign.config import load_config
    from imitalign.data.dataset import build_datasets
    from imitalign.model.load import load_tokenizer

    cfg = load_config(None, raw=_imitalign_raw(folder, "dpo", folder / "tmp-run", max_length=max_length))
    tok = load_tokenizer(cfg.model)
    items, _, _ = build_datasets(cfg.data, tok, "preference", seed=cfg.run.seed)
    return items, tok


def _imitalign_raw(folder: Path, objective: str, out: Path, max_length: int = 2048, **train: Any) -> dict:
    return {
        "run": {"output_dir": str(out), "seed": 0},
        "model": {"name_or_path": str(folder / "model"), "dtype": "float32"},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(folder / "pairs.jsonl")}, "chat_template": "none", "max_length": max_length},
        "objective": {"name": objective, "options": {"beta": HP["beta"]}},
        "train": {
            "epochs": 1,
            "batch_size": HP["batch_size"],
            "lr": HP["lr"],
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": HP["max_grad_norm"],
            "mixed_precision": "no",
            "num_threads": HP["threads"],
            "log_every": 10_000,
            "packing": True,
            **train,
        },
    }


def run_imitalign(folder: Path, objective: str, out: Path, **train: Any) -> dict[str, Any]:
    """One epoch through ``imitalign.train.train``; times from the reference pass to the final save."""
    import torch

    from imitalign.config import load_config
    from imitalign.train import loop

    marks: dict[str, float] = {}
    pre, save = loop.precompute_reference, loop.save_model

    def timed_precompute(*a: Any, **k: Any) -> Any:
        marks["t0"], marks["c0"] = time.perf_counter(), time.process_time()
        r = pre(*a, **k)
        marks["t_ref"] = time.perf_counter()
        marks["ref_peak_gb"] = end_phase()
        return r

    def timed_save(*a: Any, **k: Any) -> Any:
        marks.setdefault("t1", time.perf_counter())
        marks.setdefault("c1", time.process_time())
        marks.setdefault("train_peak_gb", end_phase())
        return save(*a, **k)

    loop.precompute_reference, loop.save_model = timed_precompute, timed_save
    torch.set_num_threads(HP["threads"])
    cfg = load_config(None, raw=_imitalign_raw(folder, objective, out, **train))
    result = loop.train(cfg, quiet=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "epoch_s": marks["t1"] - marks["t0"],
        "ref_s": marks["t_ref"] - marks["t0"],
        "cpu_s": marks["c1"] - marks["c0"],
        "steps": result.steps,
        "pad_fraction": next((r["pad_fraction"] for r in rows if "pad_fraction" in r), None),
        "final_loss": result.train_metrics.get("loss"),
        "ref_peak_gb": marks["ref_peak_gb"],
        "train_peak_gb": marks["train_peak_gb"],
    }


def run_plain(folder: Path) -> dict[str, Any]:
    """The plain PyTorch loop (``plain_loop.py``) on imitalign's token ids and epoch order."""
    import plain_loop
    import torch
    from transformers import AutoModelForCausalLM

    from imitalign.train.batching import epoch_order

    torch.set_num_threads(HP["threads"])
    items, tok = _imitalign_items(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    marks: dict[str, float] = {}
    res = plain_loop.train_epoch(
        model, items, tok.pad_token_id, HP, epoch_order(len(items), 0, 0), after_ref=lambda: marks.update(
            ref_peak_gb=end_phase())
    )
    res.update(ref_peak_gb=marks["ref_peak_gb"], train_peak_gb=end_phase())
    return res


def _trl_trainer(folder: Path, precompute: bool, out: Path, rows: list[dict] | None = None, sequential: bool = False):
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(HP["threads"])
    if rows is None:
        rows = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=HP["batch_size"],
        precompute_ref_batch_size=HP["batch_size"],
        num_train_epochs=1,
        learning_rate=HP["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=HP["max_grad_norm"],
        beta=HP["beta"],
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=precompute,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL's default is on; off here, like imitalign's (like for like)
        seed=0,
        disable_tqdm=True,
    )

    class Trainer(DPOTrainer):
        losses: list[float] = []

        def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
            return SequentialSampler(self.train_dataset) if sequential else super()._get_train_sampler(*a, **k)

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                loss = out[0] if isinstance(out, tuple) else out
                self.losses.append(float(loss.detach()))
            return out

    Trainer.losses = []
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def run_trl(folder: Path, precompute: bool, out: Path) -> dict[str, Any]:
    from trl import DPOTrainer

    marks: dict[str, float] = {}
    original = DPOTrainer._precompute_ref_logps

    def timed(self: Any, *a: Any, **k: Any) -> Any:
        marks.setdefault("t0", time.perf_counter())
        marks.setdefault("c0", time.process_time())
        out = original(self, *a, **k)
        marks.setdefault("ref_peak_gb", end_phase())
        return out

    DPOTrainer._precompute_ref_logps = timed
    trainer = _trl_trainer(folder, precompute, out)
    t_train, c_train = time.perf_counter(), time.process_time()
    ref_s = t_train - marks["t0"] if "t0" in marks else 0.0
    t0, c0 = marks.get("t0", t_train), marks.get("c0", c_train)
    ref_peak = marks.get("ref_peak_gb", end_phase())  # TRL-ref: the phase up to here is loading
    trainer.train()
    t1, c1 = time.perf_counter(), time.process_time()
    return {
        "epoch_s": t1 - t0,
        "ref_s": ref_s,
        "cpu_s": c1 - c0,
        "steps": trainer.state.global_step,
        "final_loss": trainer.losses[-1] if trainer.losses else None,
        "ref_peak_gb": ref_peak if precompute else None,
        "train_peak_gb": end_phase(),
    }


def peak_rss_gb() -> float:
    """This process's peak resident set size (``VmHWM``): unlike ``ru_maxrss``, which a child inherits from its
    parent across fork and exec, it starts afresh with the process image."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _status_gb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    raise KeyError(key)


def end_phase() -> float:
    """This process's peak RSS since the last call (``VmHWM``), then the high-water mark is reset to the current
    RSS (``/proc/self/clear_refs`` ``5``, Linux ≥ 4.0): per-phase peaks (reference pass, training)."""
    peak = _status_gb("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak


def run_variant(name: str, folder: Path, work: Path) -> dict[str, Any]:
    import torch  # noqa: F401  (every import before the baseline RSS: it is not the run's memory)
    import transformers  # noqa: F401

    if name in TRL_VARIANTS:
        import trl  # noqa: F401
    else:
        import imitalign.train.loop  # noqa: F401
    from transformers import AutoModelForCausalLM

    rss_base = _status_gb("VmRSS")
    end_phase()
    t = time.perf_counter()
    out = work / name
    if name in TRL_VARIANTS:
        res = run_trl(folder, name == "trl_pre", out)
    elif name == "plain":
        res = run_plain(folder)
    elif name.startswith("imitalign_"):
        objective = "dil_lsif" if name == "imitalign_dil" else "dpo"
        mp = {"mixed_precision": "bf16"} if name == "imitalign_bf16" else {}
        res = run_imitalign(folder, objective, out, **mp)
    else:
        raise ValueError(name)
    res["total_s"] = time.perf_counter() - t
    res["rss_gb"] = max(peak_rss_gb(), res["train_peak_gb"], res["ref_peak_gb"] or 0.0)  # the whole run's peak
    res["rss_base_gb"] = rss_base
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    res["n_params"] = _count_params(model)
    # the floor: fp32 weights, gradients and both AdamW moments of every trainable parameter
    res["floor_gb"] = 16 * sum(p.numel() for p in model.parameters()) / 2**30
    return res


# ---------------------------------------------------------------- the loss check


def loss_check(folder: Path, work: Path, steps: int = 3, rtol: float = 1e-4) -> dict[str, Any]:
    """Per-step DPO loss of TRL and imitalign on identical batches from identical weights."""
    from imitalign.config import load_config
    from imitalign.train.batching import epoch_order
    from imitalign.train.loop import train

    n = steps * HP["batch_size"]
    rows = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines()][:n]
    sub = work / "check-data"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.symlink(folder / "model", sub / "model") if not (sub / "model").exists() else None

    raw = _imitalign_raw(sub, "dpo", work / "check-imitalign", log_every=1)
    result = train(load_config(None, raw=raw), quiet=True)
    ours = [
        json.loads(x)["train/loss"]
        for x in (work / "check-imitalign" / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in x
    ]
    order = epoch_order(len(rows), 0, 0)  # imitalign's data order: hand TRL the same batches
    trainer = _trl_trainer(sub, False, work / "check-trl", rows=[rows[i] for i in order], sequential=True)
    # the same token ids on both sides
    from imitalign.data.dataset import build_datasets
    from imitalign.model.load import load_tokenizer

    cfg = load_config(None, raw=raw)
    items, _, _ = build_datasets(cfg.data, load_tokenizer(cfg.model), "preference", seed=0)
    trl_rows = trainer.train_dataset
    for k, i in enumerate(order[:4]):
        assert trl_rows[k]["prompt_ids"] == items[i].prompt_ids, "prompt tokenisation differs from TRL's"
        assert trl_rows[k]["chosen_ids"] == items[i].chosen_ids, "chosen tokenisation differs from TRL's"
        assert trl_rows[k]["rejected_ids"] == items[i].rejected_ids, "rejected tokenisation differs from TRL's"
    trainer.train()
    theirs = trainer.losses
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs, strict=False)]
    ok = len(ours) == len(theirs) == result.steps and max(rel) <= rtol
    return {"ok": ok, "imitalign": ours, "trl": theirs, "max_rel": max(rel) if rel else None, "rtol": rtol}


def step_efficiency(folder: Path, steps: int = 8, warmup: int = 3) -> dict[str, Any]:
    """imitalign's training step (packed batch → engine → DPO loss → backward → AdamW) against the matmul
    peak, measured alternately (peak, step, peak, step, ...) so that both see the same load; reports the
    median of ``6·N·T / step_s / peak`` over ``steps`` steps after ``warmup`` steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from imitalign import objectives
    from imitalign.data.collate import collate_pairs_packed
    from imitalign.model.logprobs import LogProbModel
    from imitalign.train import steps as step_fns

    torch.set_num_threads(HP["threads"])
    items, tok = _imitalign_items(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    engine = LogProbModel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=HP["lr"], weight_decay=0.0)
    fn = objectives.build("dpo", {"beta": HP["beta"]})
    n = _count_params(model)
    bs = HP["batch_size"]
    ratios, rates = [], []
    for k in range(warmup + steps):
        chunk = items[(k * bs) % len(items) :][:bs]
        batch = collate_pairs_packed(chunk, tok.pad_token_id)
        batch["ref_logps"] = torch.zeros(2 * len(chunk))
        peak = matmul_peak(HP["threads"]) if k >= warmup else 0.0
        t = time.perf_counter()
        loss, _ = step_fns.pair_loss(
            engine, fn, batch, weights=torch.ones(len(chunk)), step_examples=len(chunk), world=1
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HP["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        if k >= warmup:
            tokens = int(batch["attention_mask"].sum())
            rates.append(6 * n * tokens / dt / 1e9)
            ratios.append(rates[-1] / peak)
    ratios.sort()
    rates.sort()
    return {"median_fraction_of_peak": ratios[len(ratios) // 2], "median_gflops": rates[len(rates) // 2]}


# ---------------------------------------------------------------- driver


def real_tokens(folder: Path) -> int:
    items, _ = _imitalign_items(folder)
    return sum(2 * len(it.prompt_ids) + len(it.chosen_ids) + len(it.rejected_ids) for it in items)



def run_interleaved(
    folder: Path, work: Path, variants: list[str], repeats: int, slow_repeats: int, setting: str, tokens: int
) -> dict[str, list[dict[str, Any]]]:
    """Every variant ``repeats`` times (``SLOW_VARIANTS`` ``slow_repeats`` times), each run in a fresh
    subprocess, interleaved (round r runs the variants in order, round r+1 in reverse), so that the ratios within
    one invocation see the same machine; the 1-minute load average is read before and after each run."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(repeats):
        names = [v for v in variants if rep < (slow_repeats if v in SLOW_VARIANTS else repeats)]
        for name in names if rep % 2 == 0 else names[::-1]:
            load0 = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--run-variant", name, "--folder", str(folder), "--work", str(work)]
            env = dict(os.environ, OMP_NUM_THREADS=str(HP["threads"]), TOKENIZERS_PARALLELISM="false")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                r = {"error": (tail[-1] if tail else f"exit status {proc.returncode}")[:300]}
                print(f"[{setting}] {name}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            else:
                r = json.loads(line[len("RESULT ") :])
                r["load"] = (load0, os.getloadavg()[0])
                print(
                    f"[{setting}] {name}: epoch {r['epoch_s']:.1f}s (ref {r['ref_s']:.1f}s) "
                    f"{tokens / r['epoch_s']:.0f} tok/s, peak RSS {r['rss_gb']:.2f} GB "
                    f"({bench_tables.above_floor(r):.2f} above floor), load {r['load'][0]:.1f}→{r['load'][1]:.1f}",
                    flush=True,
                )
            runs[name].append(r)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rows: a smoke test of every variant")
    ap.add_argument("--settings", nargs="*", default=["variable", "fixed"], choices=list(SETTINGS))
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=VARIANTS)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each imitalign/plain variant, interleaved")
    ap.add_argument("--slow-repeats", type=int, default=1, help="runs of each TRL and bf16 variant (slow)")
    ap.add_argument("--no-efficiency", action="store_true", help="skip the step-vs-matmul-peak measurement")
    ap.add_argument(
        "--pairs", nargs="*", default=[], metavar="SETTING=N", help="override pairs per setting, e.g. fixed=400"
    )
    ap.add_argument("--check-only", action="store_true", help="only the per-step loss match against TRL")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--efficiency-only", action="store_true", help="only imitalign's step vs the matmul peak")
    ap.add_argument("--work", type=Path, default=None, help="data/model/run folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--run-variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.run_variant:  # child process: one variant, one JSON line on stdout
        import logging

        logging.disable(logging.WARNING)
        res = run_variant(args.run_variant, args.folder, args.work)
        print("RESULT " + json.dumps(res), flush=True)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="imitalign-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": " ".join(["python"] + sys.argv), "settings": {}}
    report["cpu_flags"] = bench_tables.cpu_flags()
    print(f"command: {report['command']}\nCPU flags: {report['cpu_flags']}\nload average at start: "
          f"{os.getloadavg()}", flush=True)
    if not args.no_check:
        folder = build_setting(work, "variable", 3 * HP["batch_size"])
        check = loss_check(folder, work / "check")
        report["loss_check"] = check
        print(
            f"loss check (TRL vs imitalign DPO, {len(check['trl'])} steps, identical batches and weights): "
            f"max relative difference {check['max_rel']:.2e} -> {'OK' if check['ok'] else 'MISMATCH'}",
            flush=True,
        )
        if args.check_only:
            sys.exit(0 if check["ok"] else 1)
    if not args.no_efficiency:
        eff_folder = build_setting(work, "variable", QUICK_PAIRS["variable"] if args.quick else 64)
        eff = step_efficiency(eff_folder, steps=3 if args.quick else 8)
        report["step_efficiency"] = eff
        print(
            f"imitalign training step (variable lengths, packed, DPO + AdamW), alternated with matmul-peak probes: "
            f"median {eff['median_gflops']:.0f} GFLOP/s = {100 * eff['median_fraction_of_peak']:.0f} % of the peak",
            flush=True,
        )
    if args.efficiency_only:
        return
    peak = matmul_peak(HP["threads"])
    report["matmul_peak_gflops"] = peak
    print(f"fp32 matmul peak ({HP['threads']} threads, 2048^3, best of 5): {peak:.0f} GFLOP/s", flush=True)
    for setting in args.settings:
        override = dict(x.split("=") for x in args.pairs)
        pairs = int(override.get(setting, QUICK_PAIRS[setting] if args.quick else SETTINGS[setting]["pairs"]))
        folder = build_setting(work, setting, pairs)
        tokens = real_tokens(folder)
        runs = run_interleaved(folder, work / f"runs-{setting}-{pairs}", args.variants, args.repeats,
                               args.slow_repeats, setting, tokens)
        report["settings"][setting] = {"pairs": pairs, "tokens": tokens, "runs": runs}
        print(bench_tables.fmt_table(setting, runs, tokens), flush=True)
    report["matmul_peak_gflops_end"] = matmul_peak(HP["threads"])
    print(f"fp32 matmul peak at the end: {report['matmul_peak_gflops_end']:.0f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
