"""One GPU, one call: bf16 parity and throughput of the log-prob engine and the training step on a ~1B Llama.

    bash benchmarks/gpu_check.sh            # on a GPU (< 8 min on an A100/H100-class card)
    bash benchmarks/gpu_check.sh --cpu      # dry mode: a tiny Llama on the CPU, the same code paths

Needs only torch, transformers, accelerate (and imitalign): no download (the model is built from a config with
random weights, the batches are random token ids), no vLLM, no flash-attn (``sdpa`` attention).

1. **Parity** on one batch of ``--pairs`` pairs (prompts 128–384, responses 128–768 tokens; ~1/10 in dry mode),
   bf16 weights: sequence log-probs of packed rows vs padded rows, of the chunked head vs the plain one, of
   bf16 vs fp32 weights; DPO and DIL-LSIF losses (reference: a second random model, fp32) packed vs padded and
   bf16 vs fp32. Reported as max |difference| (nats; losses absolute).
2. **Steps**: optimiser steps of DPO (precomputed-reference layout) on fresh batches of the same shape, fp32
   master weights + bf16 autocast, AdamW: ``padded``, ``packed``, ``packed+ac`` (activation checkpointing of
   every decoder layer), and ``fsdp2`` — the engine ``fully_shard``-ed per decoder layer and at the root by
   accelerate's own FSDP2 code with one process (``imitalign.train.sharding``: bf16 parameters for compute,
   fp32 gradient reduction), packed, with activation checkpointing.
   ``tok/s`` counts real (non-padding) tokens; ``TFLOP/s`` = 6·N·tok/s (N = parameters without the input
   embedding, attention FLOPs not counted); ``% peak`` against the bf16 matmul peak measured on this device
   (an 8192³ matmul, or 2048³ in dry mode); ``peak GB`` = ``torch.cuda.max_memory_allocated`` during the steps.

One table is printed at the end (and each row as it is measured); ``--json PATH`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imitalign.data.collate import collate_pairs, collate_pairs_packed, with_target_index
from imitalign.data.tokenize import TokenizedPair
from imitalign.model.load import enable_gradient_checkpointing
from imitalign.model.logprobs import LogProbModel, batch_logprobs
from imitalign.objectives.ratio import dil_lsif, dpo


@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    prompt: tuple[int, int]
    response: tuple[int, int]
    peak_n: int


GPU = Shape(2048, 16, 32, 8, 5632, 32000, (128, 384), (128, 768), 8192)  # TinyLlama-1.1B's shape
CPU = Shape(64, 2, 4, 2, 128, 512, (8, 16), (8, 32), 1024)


def llama(shape: Shape, seed: int, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype)


def pairs(shape: Shape, n: int, seed: int) -> list[TokenizedPair]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo_hi: tuple[int, int]) -> list[int]:
        k = int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=g))
        return torch.randint(1, shape.vocab, (k,), generator=g).tolist()

    return [TokenizedPair(ids(shape.prompt), ids(shape.response), ids(shape.response), f"r{i}") for i in range(n)]


def batch(items: list[TokenizedPair], packed: bool, device: str) -> dict[str, torch.Tensor]:
    b = collate_pairs_packed(items, 0) if packed else with_target_index(collate_pairs(items, 0))
    return {k: v.to(device) for k, v in b.items()}


def real_tokens(items: list[TokenizedPair]) -> int:
    return sum(2 * len(it.prompt_ids) + len(it.chosen_ids) + len(it.rejected_ids) for it in items)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int) -> float:
    """TFLOP/s of an ``n³`` bf16 matmul (the best of 10)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(10):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def losses(lp, ref) -> dict[str, torch.Tensor]:
    b = lp.logps.shape[0] // 2
    args = (lp.logps[:b], lp.logps[b:], ref.logps[:b], ref.logps[b:], lp.n_tokens[:b], lp.n_tokens[b:])
    return {"dpo": dpo(*args, beta=0.1)[0].mean(), "dil_lsif": dil_lsif(*args)[0].mean()}


@torch.no_grad()
def parity(shape: Shape, n_pairs: int, device: str) -> dict[str, float]:
    items = pairs(shape, n_pairs, seed=1)
    padded, packed = batch(items, False, device), batch(items, True, device)
    ref = batch_logprobs(llama(shape, 1, torch.float32, device), padded)
    fp32 = llama(shape, 0, torch.float32, device)
    exact = batch_logprobs(fp32, padded)
    bf16 = fp32.to(torch.bfloat16)
    lp_pad, lp_pack = batch_logprobs(bf16, padded), batch_logprobs(bf16, packed)
    lp_chunk = batch_logprobs(bf16, padded, chunk_tokens=256)
    l_pad, l_pack, l_exact = losses(lp_pad, ref), losses(lp_pack, ref), losses(exact, ref)
    out = {
        "logps packed-padded (bf16)": (lp_pack.logps - lp_pad.logps).abs().max(),
        "logps chunked-plain (bf16)": (lp_chunk.logps - lp_pad.logps).abs().max(),
        "token logps bf16-fp32": (lp_pad.token_logps - exact.token_logps).abs().max(),
        "logps bf16-fp32": (lp_pad.logps - exact.logps).abs().max(),
    }
    for k in l_pad:
        out[f"{k} loss packed-padded"] = (l_pack[k] - l_pad[k]).abs()
        out[f"{k} loss bf16-fp32"] = (l_pad[k] - l_exact[k]).abs()
    assert lp_pad.logps.dtype == torch.float32
    return {k: float(v) for k, v in out.items()}


def fsdp2_engine(model: torch.nn.Module, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """The engine and AdamW through accelerate's FSDP2 preparation, as ``train.fsdp`` does, with one process."""
    from accelerate import Accelerator

    from imitalign.train import sharding

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29577"}.items():
        os.environ.setdefault(k, v)
    cfg = argparse.Namespace(train=argparse.Namespace(fsdp=True))
    accelerator = Accelerator(mixed_precision="bf16", cpu=device == "cpu", **sharding.accelerator_kwargs(cfg, "bf16"))
    sharding.engage(accelerator, cfg, "bf16")
    if device == "cpu" and not accelerator.is_fsdp2:  # one CPU process: accelerate has no group to shard over
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=0, world_size=1)
        engine = LogProbModel(model)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(engine, mp_policy=policy)
        return engine, torch.optim.AdamW(engine.parameters(), lr=1e-5), "torch fully_shard (gloo, 1 process)"
    engine = LogProbModel(model)
    opt = torch.optim.AdamW(engine.parameters(), lr=1e-5)
    engine, opt = accelerator.prepare(engine, opt)
    return engine, opt, f"accelerate {accelerator.distributed_type.value}, fsdp2={accelerator.is_fsdp2}"


def step_rate(shape: Shape, variant: str, n_pairs: int, steps: int, device: str, peak: float) -> dict:
    """Optimiser steps of DPO under ``variant``; tokens/s over ``steps`` steps after 2 warm-up steps."""
    model = llama(shape, 0, torch.float32, device)
    n_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if "ac" in variant or variant == "fsdp2":
        enable_gradient_checkpointing(model)
    note = ""
    if variant == "fsdp2":
        engine, opt, note = fsdp2_engine(model, device)
    else:
        engine = LogProbModel(model)
        opt = torch.optim.AdamW(engine.parameters(), lr=1e-5)
    packed = variant != "padded"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds = 0, 0.0
    for s in range(steps + 2):
        items = pairs(shape, n_pairs, seed=100 + s)
        b = batch(items, packed, device)
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            lp = batch_logprobs(engine, b)
        half = lp.logps.shape[0] // 2
        loss = dpo(lp.logps[:half], lp.logps[half:], lp.logps[:half].detach() - 0.1,
                   lp.logps[half:].detach(), beta=0.1)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if s >= 2:
            tokens += real_tokens(items)
            seconds += time.perf_counter() - t
    rate = tokens / seconds
    tflops = 6 * n_params * rate / 1e12
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"variant": variant, "tok/s": rate, "TFLOP/s": tflops, "% peak": 100 * tflops / peak,
            "peak GB": peak_gb, "loss": loss.item(), "note": note, "params": n_params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="dry mode: tiny Llama on the CPU")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--variants", default="padded,packed,packed+ac,fsdp2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the dry mode")
    shape = CPU if args.cpu else GPU
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    t0 = time.perf_counter()
    peak = matmul_peak(device, shape.peak_n)
    print(f"device {name}; torch {torch.__version__}; bf16 matmul peak {peak:.1f} TFLOP/s", flush=True)
    par = parity(shape, args.pairs, device)
    for k, v in par.items():
        print(f"parity  {k:32s} {v:.3e}", flush=True)
    rows = []
    for variant in args.variants.split(","):
        row = step_rate(shape, variant, args.pairs, args.steps, device, peak)
        rows.append(row)
        print(f"steps   {variant:10s} {row['tok/s']:10.0f} tok/s  {row['TFLOP/s']:7.3g} TFLOP/s  "
              f"{row['% peak']:5.1f} %  {row['peak GB']:6.2f} GB  {row['note']}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{name}, {rows[0]['params'] / 1e6:.1f}M non-embedding parameters, {args.pairs} pairs/step, "
          f"bf16 peak {peak:.1f} TFLOP/s (measured), {time.perf_counter() - t0:.0f} s in all\n")
    print("| variant | tok/s | TFLOP/s | % bf16 peak | peak GB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['tok/s']:.0f} | {r['TFLOP/s']:.3g} | {r['% peak']:.1f} | {r['peak GB']:.2f} |")
    print("\n| parity (max abs) | value |\n|---|---|")
    for k, v in par.items():
        print(f"| {k} | {v:.2e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "peak_tflops": peak, "steps": rows, "parity": par}, f, indent=2)


if __name__ == "__main__":
    main()
