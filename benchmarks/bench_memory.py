"""Peak memory of one DPO forward + backward at a 16k and a 128k vocabulary: full logits vs the sliced head vs
the chunked head.

    python benchmarks/bench_memory.py [--pairs 8] [--prompt 64] [--response 128] [--chunk 256]

Each case runs in its own subprocess. The tiny Llama (4 layers, hidden 256, untied head) is built from a config;
a batch of ``pairs`` pairs (``2 × pairs`` rows of ``prompt + response`` tokens) goes through the log-prob engine
and the DPO loss, then ``backward()``. Reported: the step's peak RSS above the RSS just before it (the
high-water mark ``ru_maxrss`` minus the current RSS before the step — weights and imports excluded, gradients
included), and the step's wall time. Cases:

- ``full``: the model's own forward (``[rows, T, V]`` logits for every position), then the response positions;
- ``sliced``: the default engine — the LM head on response positions only, fused head (fp32 ``[M, V]`` logits
  for the ``M`` response positions, kept for backward);
- ``chunked``: ``train.chunk_tokens`` — the head over chunks of ``chunk`` positions, recomputed in backward;
  never more than ``[chunk, V]`` logits alive.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_case(vocab: int, case: str, pairs: int, prompt: int, response: int, chunk: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from imitalign.data.collate import collate_pairs_packed
    from imitalign.data.tokenize import TokenizedPair
    from imitalign.model.logprobs import LogProbModel, batch_logprobs
    from imitalign.objectives.ratio import dpo

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    items = [TokenizedPair(ids(prompt), ids(response), ids(response), "") for _ in range(pairs)]
    batch = collate_pairs_packed(items, 0)
    engine = LogProbModel(model, chunk_tokens=chunk if case == "chunked" else None, full_logits=case == "full")
    ref = torch.zeros(2 * pairs)
    before = _rss_now_mb()
    t = time.perf_counter()
    lp = batch_logprobs(engine, batch)
    losses, _ = dpo(lp.logps[:pairs], lp.logps[pairs:], ref[:pairs], ref[pairs:], beta=0.1)
    losses.mean().backward()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"vocab": vocab, "case": case, "step_peak_mb": peak - before, "seconds": seconds, "rss_peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--vocabs", type=int, nargs="*", default=[16384, 131072])
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        res = run_case(args.vocab, args.case, args.pairs, args.prompt, args.response, args.chunk)
        print("RESULT " + json.dumps(res))
        return
    m = 2 * args.pairs * args.response
    print(f"{2 * args.pairs} rows of {args.prompt}+{args.response} tokens, {m} response positions, chunk {args.chunk}")
    print("| vocab | case | step peak RSS above start (MB) | fp32 [M, V] logits would be (MB) | step s |")
    print("|---|---|---|---|---|")
    for vocab in args.vocabs:
        for case in ("full", "sliced", "chunked"):
            cmd = [sys.executable, __file__, "--case", case, "--vocab", str(vocab)]
            cmd += ["--pairs", str(args.pairs), "--prompt", str(args.prompt), "--response", str(args.response)]
            cmd += ["--chunk", str(args.chunk)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"| {vocab} | {case} | failed: {proc.stderr.strip().splitlines()[-1:]} | | |")
                continue
            r = json.loads(line[7:])
            print(f"| {vocab} | {case} | {r['step_peak_mb']:.0f} | {m * vocab * 4 / 2**20:.0f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
