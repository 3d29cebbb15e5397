"""The one training loop. Every method — SFT, DIL, DPO, IQLearn, each round of an iterative loop — runs here.

    setup    seed · accelerator · config and data read, parsed and validated (once) before any model loads
             · tokenizer, policy · the parsed data tokenised · reference log-probs (precomputed once, or a
             frozen/adapter reference)
    train    for each optimiser step: micro-batches (hand-accumulated, DDP sync on the last) → loss →
             clip → AdamW → schedule; log · eval · atomic checkpoint; stop on a non-finite loss
    cleanup  final eval · ``save_pretrained`` model + tokenizer · summary.json

Resume (``resume=True``) loads the newest complete checkpoint of ``run.output_dir`` and continues at the
next optimiser step: the data order is a function of (seed, epoch, step), and model, optimiser, scheduler
and RNG states come from the checkpoint, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from imitalign import objectives
from imitalign.config import Config, dump_config
from imitalign.data.collate import (
    collate_demos,
    collate_demos_packed,
    collate_pairs,
    collate_pairs_packed,
    pad_id_for,
    with_target_index,
)
from imitalign.data.dataset import ParsedSplit, build_datasets, load_split, parse_data, parse_split
from imitalign.model.load import load_policy, save_model
from imitalign.model.logprobs import LogProbModel
from imitalign.model.packing import PackingUnsupported, check_packing
from imitalign.model.score import load_score_model
from imitalign.reward.labels import read_labels
from imitalign.train import steps
from imitalign.train.batching import epoch_order, plan_step, steps_per_epoch
from imitalign.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from imitalign.train.reference import attach_reference, precompute_reference
from imitalign.train.tracking import MetricsLog, Throughput, available_trackers, peak_memory_mb

log = logging.getLogger(__name__)

DATA_KIND = {"pair": "preference", "token": "demonstration", "reward_pair": "preference", "classifier": "demonstration"}
SCORE_KINDS = ("reward_pair", "classifier")  # a ScoreModel (LM + scalar head), not a policy, is trained


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says what happened and what is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def config_fingerprint(cfg: Config) -> str:
    """Fields that change what is trained (not where it is logged) — a resumed run must match them."""
    keep = cfg.model_dump(mode="json", exclude={"train": {"log_every", "eval_every", "save_every", "trackers"}})
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_processes() -> bool:
    """Several processes launched on a machine without CUDA (``torchrun``, or ``accelerate launch --multi_gpu
    --num_processes N``; ``accelerate launch --cpu`` starts one process unless mpirun is used): accelerate joins
    them in a gloo process group only when told ``cpu=True`` — otherwise each process would train alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _mixed_precision(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _collate(
    kind: str, items: list, pad_id: int, per_item: torch.Tensor | None, idx: list[int], packing: bool = False
) -> dict:
    """A batch of ``items``; ``per_item`` holds data of every example indexed by ``idx``: precomputed reference
    log-probs ``[n, 2]`` (pair kinds) or 0/1 labels ``[n]`` (``classifier``)."""
    if kind in ("pair", "reward_pair"):
        if kind == "pair":  # padding-free rows, or padded rows with host-side target indices
            batch = collate_pairs_packed(items, pad_id) if packing else with_target_index(collate_pairs(items, pad_id))
        else:
            batch = collate_pairs(items, pad_id)
        if per_item is not None:
            sel = per_item[idx]
            batch["ref_logps"] = torch.cat([sel[:, 0], sel[:, 1]])
        return batch
    if kind == "token":
        batch = collate_demos_packed(items, pad_id) if packing else with_target_index(collate_demos(items, pad_id))
    else:
        batch = collate_demos(items, pad_id)
    if kind == "classifier" and per_item is not None:
        batch["labels"] = per_item[idx]
    return batch


def _response_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["response_mask"][:, 1:].sum())


class _MetricMean:
    """Weighted means of metric dicts (tensors stay on device until logging): weighted by examples, or by the
    dict's own weight ``steps.WEIGHT_KEY`` when it has one (token objectives: response tokens)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weight: float | torch.Tensor = 0.0

    def add(self, metrics: dict[str, torch.Tensor], weight: float) -> None:
        metrics = dict(metrics)
        weight = metrics.pop(steps.WEIGHT_KEY, weight)
        for k, v in metrics.items():
            v = v.detach().float() * weight
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.weight = self.weight + weight

    def result(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        weight = torch.as_tensor(self.weight, dtype=torch.float32, device=self.sums[keys[0]].device)
        vec = torch.stack([self.sums[k] for k in keys] + [weight])
        vec = accelerator.reduce(vec, "sum") if accelerator.num_processes > 1 else vec
        vals = (vec[:-1] / vec[-1].clamp(min=1e-12)).tolist()
        return dict(zip(keys, vals, strict=True))


def train(cfg: Config, *, resume: bool = False, quiet: bool = False) -> TrainResult:
    t_start = time.perf_counter()
    # ---------------------------------------------------------------- setup
    spec = objectives.get(cfg.objective.name)
    if spec.kind not in DATA_KIND:
        raise NotImplementedError(f"objective {spec.name!r} of kind {spec.kind!r} is trained by its own command")
    fn = objectives.build(cfg.objective.name, cfg.objective.options)
    parsed = parse_data(cfg.data, DATA_KIND[spec.kind], seed=cfg.run.seed)  # before any model loads; kept
    parsed_own = _check_policy_samples(cfg, spec, fn)
    label_of = read_labels(cfg.data, parsed) if spec.kind == "classifier" else None
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)

    run_dir = Path(cfg.run.output_dir)
    trackers = available_trackers(list(cfg.train.trackers))
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.train.mixed_precision),
        log_with=trackers or None,
        project_dir=str(run_dir),
        cpu=_cpu_processes(),
    )
    main = accelerator.is_main_process
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TrainingError(f"--resume: no complete checkpoint under {run_dir / 'checkpoints'}")
        saved = json.loads((ckpt / "trainer_state.json").read_text())
        if saved.get("config_fingerprint") != config_fingerprint(cfg):
            raise TrainingError(
                f"--resume: {ckpt} was written by a different configuration (what is trained changed); "
                "resume with the config saved in the run folder, or start a new output_dir"
            )
    elif (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise TrainingError(f"{run_dir} already holds checkpoints: pass --resume to continue, or pick a new output_dir")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    set_seed(cfg.run.seed)

    if spec.kind in SCORE_KINDS:
        model, tok = load_score_model(cfg.model, cfg.run.seed)
    else:
        model, tok = load_policy(cfg.model, cfg.run.seed)
    train_items, eval_items, report = build_datasets(
        cfg.data, tok, DATA_KIND[spec.kind], seed=cfg.run.seed, parsed=parsed
    )
    policy_items: list = []  # the policy's own samples (online IQLearn): TD term only, an order of their own
    if cfg.data.policy_samples is not None:
        policy_items, policy_report = load_split(cfg.data.policy_samples, "demonstration", tok, cfg.data,
                                                 name="policy_samples", parsed=parsed_own)
    del parsed, parsed_own  # the records are tokenised: free them
    if main:
        saved_report = report.to_dict()
        if cfg.data.policy_samples is not None:
            saved_report["policy_samples"] = policy_report.to_dict()
        (run_dir / "data_report.json").write_text(json.dumps(saved_report, indent=2))
        if not quiet:
            print(report.summary())
            if cfg.data.policy_samples is not None:
                print(policy_report.summary())
    if not train_items:
        raise TrainingError(f"no training examples left after parsing and truncation:\n{report.summary()}")

    engine = model if spec.kind in SCORE_KINDS else LogProbModel(model, chunk_tokens=cfg.train.chunk_tokens)
    packing = cfg.train.packing and spec.kind in DATA_KIND and spec.kind not in SCORE_KINDS
    if packing:
        try:
            check_packing(model, pad_id_for(tok))
        except PackingUnsupported as e:
            raise TrainingError(str(e)) from None
    per_item = None  # precomputed reference log-probs (pair kinds) or labels (classifier), by example index
    ref_engine = None
    if spec.needs_reference:
        if cfg.reference.precompute:
            per_item = precompute_reference(
                cfg, engine, model, tok, train_items + eval_items, accelerator, quiet=quiet
            )
        else:
            ref_engine = attach_reference(cfg, model, tok, accelerator)

    if label_of is not None:
        per_item = torch.tensor([label_of[it.source] for it in train_items + eval_items])
    world, rank = accelerator.num_processes, accelerator.process_index
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    global_batch = bs * world * accum
    per_epoch = steps_per_epoch(len(train_items), global_batch)
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * cfg.train.epochs))

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr,
        betas=cfg.train.adam_betas,
    )
    scheduler = get_scheduler(
        cfg.train.schedule if cfg.train.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(cfg.train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    engine, optimizer, scheduler = accelerator.prepare(engine, optimizer, scheduler)
    if ref_engine is not None and not isinstance(ref_engine, str):
        ref_engine = accelerator.prepare_model(ref_engine, evaluation_mode=True)
    if trackers and main:
        accelerator.init_trackers(cfg.run.name or run_dir.name, config=cfg.model_dump(mode="json"))

    step = 0
    if resume:
        state = load_checkpoint(accelerator, ckpt)
        step = state["step"]
        if main and not quiet:
            print(f"resumed from {ckpt} at step {step}/{total_steps}")

    metrics_log = MetricsLog(run_dir / "metrics.jsonl", accelerator, enabled=main)
    lengths = None
    if cfg.train.group_by_length:  # whole optimiser steps of similar length (batching.epoch_order)
        lengths = [len(it.prompt_ids) + max(len(r) for r in _responses(it)) for it in train_items]
    pad_id = pad_id_for(tok)

    def micro_loss(
        batch: dict, weights: torch.Tensor, *, examples: int, tokens: int, own_tokens: int | None, world: int,
        evaluating: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's loss (already on the device), for training and evaluation alike: the reference runs
        here when it is not precomputed; normalisation as in ``steps`` (``examples`` / ``tokens`` of the step)."""
        if ref_engine is not None and spec.kind == "pair":
            batch["ref_logps"] = _reference_logps(ref_engine, engine, batch)
        if spec.kind == "pair":
            return steps.pair_loss(engine, fn, batch, weights=weights, step_examples=examples, world=world)
        if spec.kind in SCORE_KINDS:
            return steps.score_loss(
                engine, fn, batch, kind=spec.kind, weights=weights, step_examples=examples, world=world
            )
        return steps.token_loss(
            engine, fn, batch, weights=weights, step_tokens=tokens, world=world, step_policy_tokens=own_tokens,
            no_policy_samples=evaluating and bool(policy_items),
        )

    def run_eval() -> dict[str, float]:
        if not eval_items:
            return {}
        engine.eval()
        acc = _MetricMean()
        ebs = cfg.train.eval_batch_size or bs
        mine = list(range(len(eval_items)))[rank::world]
        with torch.no_grad():
            for s in range(0, len(mine), ebs):
                idx = mine[s : s + ebs]
                eidx = [len(train_items) + i for i in idx]
                batch = _collate(spec.kind, [eval_items[i] for i in idx], pad_id, per_item, eidx, packing)
                ntok = _response_tokens(batch)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                ones = torch.ones(len(idx), device=accelerator.device)
                _, m = micro_loss(
                    batch, ones, examples=len(idx), tokens=ntok, own_tokens=None, world=1, evaluating=True
                )
                acc.add(m, len(idx))
        engine.train()
        return acc.result(accelerator)

    # ---------------------------------------------------------------- train
    engine.train()
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not main or quiet or not _isatty(),
        desc=f"train {spec.name}",
        dynamic_ncols=True,
    )
    speed = Throughput()
    window = _MetricMean()
    pad_real, pad_slots = 0, 0  # real tokens and token slots (rows × width) fed to the model since the last log
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    cached_epoch, order = -1, []
    while step < total_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != cached_epoch:
            order = epoch_order(len(train_items), cfg.run.seed, epoch, lengths, group=global_batch if lengths else 0)
            cached_epoch = epoch
        plan = plan_step(order, in_epoch, bs, accum, world, rank)
        micro_batches = []
        for idx in plan.micro:
            weights = torch.ones(len(idx))
            if not idx:  # this process has no share of a short last step: a zero-weight stand-in keeps DDP in step
                idx, weights = [order[0]], torch.zeros(1)
            batch = _collate(spec.kind, [train_items[i] for i in idx], pad_id, per_item, idx, packing)
            micro_batches.append((batch, weights))
        own_tokens_local = 0
        if policy_items:  # the m-th micro-batch also carries its share of the step's own samples
            own = plan_step(_policy_order(len(policy_items), cfg.run.seed, step, global_batch), 0, bs, accum,
                            world, rank)
            for (batch, _), own_idx in zip(micro_batches, own.micro, strict=False):
                if own_idx:
                    part = _collate("token", [policy_items[i] for i in own_idx], pad_id, None, own_idx, packing)
                    own_tokens_local += _response_tokens(part)
                    batch.update({steps.POLICY_PREFIX + k: v for k, v in part.items()})
        step_tokens_local = sum(_response_tokens(b) for b, w in micro_batches if w.sum() > 0)
        step_tokens = step_tokens_local
        step_own_tokens = own_tokens_local
        if spec.kind == "token" and world > 1:
            t = torch.tensor([step_tokens_local, own_tokens_local], device=accelerator.device)
            step_tokens, step_own_tokens = (int(x) for x in accelerator.reduce(t, "sum"))
        step_loss = torch.zeros((), device=accelerator.device)
        for m, (batch, weights) in enumerate(micro_batches):
            # counts for logging, taken on the host before the batch moves: no device sync for them
            n_real, n_slots = int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
            w_sum = float(weights.sum())
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            weights = weights.to(accelerator.device)
            sync = m == len(micro_batches) - 1
            ctx = accelerator.no_sync(engine) if not sync and world > 1 else _nullcontext()
            with ctx, accelerator.autocast():
                loss, metrics = micro_loss(
                    batch, weights, examples=plan.n_examples, tokens=step_tokens, own_tokens=step_own_tokens,
                    world=world, evaluating=False,
                )
                accelerator.backward(loss)
            step_loss += loss.detach()
            window.add(metrics, w_sum)
            speed.add(n_real if w_sum > 0 else 0)
            pad_real += n_real
            pad_slots += n_slots
        grad_norm = None
        if cfg.train.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(engine.parameters(), cfg.train.max_grad_norm)
        # one host sync per optimiser step: stop before a non-finite loss reaches the weights or a checkpoint
        check = step_loss if grad_norm is None else step_loss + 0 * grad_norm
        if not torch.isfinite(check):
            last = latest_checkpoint(run_dir)
            raise TrainingError(
                f"non-finite loss or gradient at step {step + 1} "
                f"(objective {spec.name}, lr {scheduler.get_last_lr()[0]:.3g}); "
                f"the weights were not updated. Last good checkpoint: {last or 'none'}. "
                "Lower the learning rate, check the data, or for dil_lsif lower beta / keep length_normalize on."
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        if step % cfg.train.log_every == 0 or step == total_steps:
            last_train = window.result(accelerator)
            window = _MetricMean()
            pad_fraction = 1.0 - pad_real / max(pad_slots, 1)
            pad_real, pad_slots = 0, 0
            tps = speed.rate() * world
            record = {f"train/{k}": v for k, v in last_train.items()}
            record.update(
                {
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": step / per_epoch,
                    "tokens_per_s": tps,
                    "pad_fraction": pad_fraction,  # share of the token slots fed to the model that were padding
                    "peak_mem_mb": peak_memory_mb(),
                }
            )
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            metrics_log.write(record, step)
            bar.set_postfix(loss=f"{last_train.get('loss', float('nan')):.4f}", tok_s=f"{tps:.0f}")
            if main and not quiet and not _isatty():  # logs and pipes get one plain line per logging step
                print(f"  step {step}/{total_steps}  loss {last_train.get('loss', float('nan')):.4f}  "
                      f"{tps:.0f} tok/s", flush=True)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total_steps:
            last_eval = run_eval()
            metrics_log.write({f"eval/{k}": v for k, v in last_eval.items()}, step)
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
            save_checkpoint(
                accelerator,
                run_dir,
                step,
                {"step": step, "epoch": step / per_epoch, "config_fingerprint": config_fingerprint(cfg)},
                keep=cfg.train.keep_checkpoints,
            )
    bar.close()

    # ---------------------------------------------------------------- cleanup
    last_eval = run_eval()
    if last_eval:
        metrics_log.write({f"eval/{k}": v for k, v in last_eval.items()}, step)
    model_dir = run_dir / "model"
    accelerator.wait_for_everyone()
    if main:
        lm = accelerator.unwrap_model(engine).lm
        tmp = run_dir / "model.tmp"
        save_model(lm, tok, tmp)
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    seconds = time.perf_counter() - t_start
    result = TrainResult(run_dir, model_dir, step, last_train, last_eval, seconds)
    if main:
        summary = {
            "steps": step,
            "seconds": seconds,
            "train": last_train,
            "eval": last_eval,
            "model_dir": str(model_dir),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group, which belongs to the
        tracker.finish()  # process (imitalign iterate trains several times in one launch); torchrun tears it down
    accelerator.wait_for_everyone()  # summary.json is written before any process returns
    return result


def _responses(item: Any) -> list[list[int]]:
    """The response token lists of a tokenised pair or demonstration."""
    if hasattr(item, "chosen_ids"):
        return [item.chosen_ids, item.rejected_ids]
    return [item.response_ids]


def _check_policy_samples(cfg: Config, spec: objectives.ObjectiveSpec, fn: Any) -> ParsedSplit | None:
    """Before any model loads: ``data.policy_samples`` only with a token objective that takes them, its data
    readable, and the objective's options valid (a dry call on one token: e.g. iqlearn's α ∉ [0, 1], or α > 0
    without own samples, is a :class:`~imitalign.config.ConfigError` here, not a crash at the first step).
    Returns the parsed own samples (None without them), to be tokenised once the tokenizer is loaded."""
    import inspect

    from imitalign.config import ConfigError

    own = cfg.data.policy_samples
    parsed = None
    takes_own = "policy_token_logps" in inspect.signature(spec.fn).parameters
    if own is not None:
        if spec.kind != "token" or not takes_own:
            raise ConfigError(
                f"data.policy_samples: objective {spec.name!r} does not use the policy's own samples "
                "(they feed the TD term of iqlearn with alpha > 0)"
            )
        parsed = parse_split(own, "demonstration", name="policy_samples")
    if spec.kind != "token":
        return parsed
    one = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    kw = {"policy_token_logps": one, "policy_token_mask": mask, "policy_token_values": one} if own else {}
    try:
        fn(one, mask, one if spec.needs_values else None, **kw)
    except ValueError as e:
        raise ConfigError(f"objective {spec.name!r}: {e}") from None
    return parsed


def _policy_order(n: int, seed: int, step: int, global_batch: int) -> list[int]:
    """The own samples of optimiser step ``step``: positions ``step·G … step·G + G − 1`` of an endless sequence of
    seeded permutations of ``range(n)`` (a pure function of the step, so resume is exact)."""
    perms: dict[int, list[int]] = {}
    out = []
    for q in range(step * global_batch, (step + 1) * global_batch):
        cycle, k = divmod(q, n)
        if cycle not in perms:
            perms[cycle] = epoch_order(n, seed + 7_919, cycle)
        out.append(perms[cycle][k])
    return out


def _isatty() -> bool:
    return sys.stderr.isatty()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _reference_logps(ref_engine: Any, engine: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference log-probs on the fly: a frozen copy, or (``"adapter"``) the policy with its LoRA disabled."""
    with torch.no_grad():
        if ref_engine == "adapter":
            lm = engine.module.lm if hasattr(engine, "module") else engine.lm
            with lm.disable_adapter():
                return steps.sequence_logps(engine, batch)
        return steps.sequence_logps(ref_engine, batch)
