"""Where a gym round's sampling time goes, and what the sampler's speedups buy, measured in one process.

    python benchmarks/bench_sampler.py [--model runs/bench_online/base/seed0/sft/model] [--reps 3]

On the gym's SFT model (built by ``bench_online.py``), 128 online prompts × K = 4, 32 new tokens, temperature 1,
one thread. Variants alternate within each repetition (so they see the same load) and the median over
repetitions is printed, in process CPU seconds (the clock other jobs disturb least) and wall seconds:

- ``noise step-by-step`` vs ``noise chunked``: the Gumbel noise drawn one ``rand(V)`` per row per step (the
  sampler before) or per row per chunk of steps (now; the same samples, ``tests/test_sampler_speed.py``);
- ``batch B``: rows per ``generate`` call (``generate.batch_size`` of an iterate config);
- ``prefill only``: ``max_new_tokens = 1``, the share a shared-prefix KV cache across the K samples could save.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

import imitalign.generate.sampler as sampler_mod
from imitalign.generate.sampler import encode_prompts, sample
from imitalign.gym.build import read_jsonl


class StepByStepGumbel(LogitsProcessor):
    """The noise of the sampler before the chunked draw (one generator call per row per step)."""

    def __init__(self, seeds: list[int], max_steps: int = 1) -> None:
        self.seeds, self.generators = list(seeds), None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        return scores + -torch.log(-torch.log(u.clamp_(min=torch.finfo(u.dtype).tiny)))


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/bench_online/base/seed0/sft/model")
    ap.add_argument("--prompts", default=None, help="default: the online prompts of the gym next to the model")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prompts_path = args.prompts or next(Path(args.model).parents[2].glob("gym/gym-*/online_prompts.jsonl"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = encode_prompts(tok, [r["prompt"] for r in read_jsonl(prompts_path)][:128])
    chunked = sampler_mod._GumbelNoise
    variants = {
        "batch 64, noise step-by-step": (StepByStepGumbel, 64, 32),
        "batch 64, noise chunked": (chunked, 64, 32),
        "batch 512, noise step-by-step": (StepByStepGumbel, 512, 32),
        "batch 512, noise chunked": (chunked, 512, 32),
        "batch 32, noise chunked": (chunked, 32, 32),
        "batch 512, prefill only (1 token)": (chunked, 512, 1),
    }
    sample(model, tok, ids[:8], n=2, max_new_tokens=4)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, (noise, batch, new) in variants.items():
            sampler_mod._GumbelNoise = noise
            c, t = cpu(), time.perf_counter()
            sample(model, tok, ids, n=4, max_new_tokens=new, batch_size=batch, seed=1)
            times[name].append((cpu() - c, time.perf_counter() - t))
    sampler_mod._GumbelNoise = chunked
    print(f"load average (1 min) {os.getloadavg()[0]:.1f}; 128 prompts x 4 samples, 32 new tokens, 1 thread")
    print("| variant | CPU s (median) | wall s (median) |\n|---|---|---|")
    for name, xs in times.items():
        print(f"| {name} | {statistics.median(x[0] for x in xs):.2f} | {statistics.median(x[1] for x in xs):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
