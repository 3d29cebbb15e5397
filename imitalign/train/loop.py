"""The one training loop. Every method — SFT, DIL, DPO, IQLearn, reward models, each round of an iterative
loop — runs here, as a :class:`Trainer` (``train(cfg)`` is the function the commands call):

    __init__  seed · accelerator · config and data read, parsed and validated (once) before any model loads
              → model and tokenizer → the parsed data tokenised → reference log-probs (precomputed once, or a
              frozen/adapter reference) → optimiser and schedule → resume
    train     the step loop: ``step`` (micro-batches, hand-accumulated, DDP sync on the last → loss → clip →
              AdamW → schedule; stop on a non-finite loss) · log · ``evaluate`` · ``save`` (atomic checkpoint)
    close     final eval · ``save_pretrained`` model + tokenizer · summary.json

What differs between kinds of objective (data read, batch built, loss called and how it is normalised) is one
table, ``imitalign.train.kinds.KINDS``.

Resume (``resume=True``) loads the newest complete checkpoint of ``run.output_dir`` and continues at the
next optimiser step: the data order is a function of (seed, epoch, step), and model, optimiser, scheduler
and RNG states come from the checkpoint, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
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
from imitalign.data.collate import pad_id_for
from imitalign.data.dataset import ParsedData, ParsedSplit, build_datasets, load_split, parse_data
from imitalign.failures import ensure_space
from imitalign.faults import fault
from imitalign.manifest import seal_model
from imitalign.model import segment_attention
from imitalign.model.load import load_policy, save_model
from imitalign.model.logprobs import LogProbModel
from imitalign.model.packing import PackingUnsupported, check_packing
from imitalign.model.score import load_score_model
from imitalign.processes import on_main
from imitalign.reward.labels import read_labels
from imitalign.runs import legacy_train_fingerprint, train_fingerprint
from imitalign.train import optim, sharding, steps
from imitalign.train.batching import StepPlan, epoch_order, plan_step, policy_order, steps_per_epoch
from imitalign.train.checkpoint import load_checkpoint, save_checkpoint
from imitalign.train.integrity import (
    FINITE_KEY,
    TrainingError,
    checkpoint_bytes,
    checkpoint_step,
    last_finite_checkpoint,
    start_checkpoint,
    step_grad_norm,
    truncate_metrics,
    weights_finite,
)
from imitalign.train.kinds import LossContext, StepCounts, check_objective, collate_demo_batch, kind_of
from imitalign.train.reference import attach_reference, precompute_reference
from imitalign.train.tracking import MetricMean, MetricsLog, Throughput, available_trackers, peak_memory_mb

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    steps: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def train(cfg: Config, *, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train ``cfg`` to its end: the run folder holds the model, metrics, checkpoints and summary."""
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    trainer.train()
    return trainer.close()


def config_fingerprint(cfg: Config) -> str:
    """Fields that change what is trained (not where it lives, what it is called or how it is logged) — a
    resumed run must match them (:func:`imitalign.runs.train_fingerprint`; a moved run folder resumes)."""
    return train_fingerprint(cfg)


class Trainer:
    """One training run of ``cfg``: set up in ``__init__`` (top to bottom), then ``train()``, then ``close()``."""

    def __init__(self, cfg: Config, *, resume: bool = False, quiet: bool = False) -> None:
        self.t_start = time.perf_counter()
        self.cfg, self.quiet = cfg, quiet
        self.spec = objectives.get(cfg.objective.name)
        self.kind = kind_of(self.spec)  # what differs by the objective's kind: data, batch, loss
        self.fn = objectives.build(cfg.objective.name, cfg.objective.options)
        # data: read, parsed and checked before any model loads; tokenised once the tokenizer is there
        parsed = parse_data(cfg.data, self.kind.data, seed=cfg.run.seed)
        parsed_own = check_objective(cfg, self.spec, self.fn)
        labels = read_labels(cfg.data, parsed) if self.kind.labels else None
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        ckpt = self._setup_run(resume)
        # model
        if self.kind.score_model:
            self.model, self.tok = load_score_model(cfg.model, cfg.run.seed)
        else:
            self.model, self.tok = load_policy(cfg.model, cfg.run.seed)
        self._setup_data(parsed, parsed_own)
        del parsed, parsed_own  # the records are tokenised: free them
        self._setup_engine()
        # reference log-probs (pair kinds) or labels (classifier) of every example, by index
        self.per_item, self.ref_engine = self._setup_reference(labels)
        self._setup_optimiser()
        self.loss_ctx = LossContext(self.engine, self.fn, self.ref_engine, bool(self.policy_items))
        self.global_step = 0
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.window, self.speed = MetricMean(), Throughput()  # train metrics and tokens/s since the last log
        self.pad_real, self.pad_slots = 0, 0  # real tokens and token slots (rows × width) fed since the last log
        self._epoch, self._order = -1, []  # the epoch whose example order is cached
        if ckpt is not None:
            saved = load_checkpoint(self.accelerator, ckpt)
            self.global_step = saved["step"]
            if self.kind.load_loss_state is not None:
                self.kind.load_loss_state(self.fn, saved.get("loss_state", {}))
            if self.main and not quiet:
                print(f"resumed from {ckpt} at step {self.global_step}/{self.total_steps}")

    # ---------------------------------------------------------------- setup
    def _setup_run(self, resume: bool) -> Path | None:
        """The accelerator and the run folder; with ``resume``, the checkpoint to continue from."""
        cfg = self.cfg
        self.run_dir = run_dir = Path(cfg.run.output_dir)
        self.trackers = available_trackers(list(cfg.train.trackers))
        mixed_precision = _mixed_precision(cfg.train.mixed_precision)
        _fresh_accelerator_state()
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision,
            log_with=self.trackers or None,
            project_dir=str(run_dir),
            cpu=_cpu_processes(),
            **sharding.accelerator_kwargs(cfg, mixed_precision),
        )
        sharding.engage(self.accelerator, cfg, mixed_precision)
        self.sharded = sharding.is_sharded(self.accelerator)  # FSDP2 / ZeRO-3: the reference runs once sharded
        self.main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        fingerprints = (config_fingerprint(cfg), legacy_train_fingerprint(cfg))
        ckpt = start_checkpoint(run_dir, resume, fingerprints, say=print if self.main else None)
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
            truncate_metrics(run_dir / "metrics.jsonl", checkpoint_step(ckpt))  # each step logged once
        self.metrics_log = MetricsLog(run_dir / "metrics.jsonl", self.accelerator, enabled=self.main)
        set_seed(cfg.run.seed)
        return ckpt

    def _setup_data(self, parsed: ParsedData, parsed_own: ParsedSplit | None) -> None:
        """The parsed data tokenised: train and eval items, and the policy's own samples (online IQLearn: the TD
        term only, an order of their own); the data report written and shown."""
        cfg = self.cfg
        self.train_items, self.eval_items, report = build_datasets(
            cfg.data, self.tok, self.kind.data, seed=cfg.run.seed, parsed=parsed
        )
        self.policy_items: list = []
        reports = [report]
        if cfg.data.policy_samples is not None:
            self.policy_items, own_report = load_split(cfg.data.policy_samples, "demonstration", self.tok, cfg.data,
                                                       name="policy_samples", parsed=parsed_own)
            reports.append(own_report)
        if self.main:
            saved_report = report.to_dict()
            if cfg.data.policy_samples is not None:
                saved_report["policy_samples"] = reports[1].to_dict()
            (self.run_dir / "data_report.json").write_text(json.dumps(saved_report, indent=2))
            if not self.quiet:
                for r in reports:
                    print(r.summary())
        if not self.train_items:
            raise TrainingError(f"no training examples left after parsing and truncation:\n{report.summary()}")
        self.pad_id = pad_id_for(self.tok)
        self.lengths = None  # whole optimiser steps of similar length (batching.epoch_order)
        if cfg.train.group_by_length:
            self.lengths = [len(it.prompt_ids) + max(len(r) for r in _responses(it)) for it in self.train_items]

    def _setup_engine(self) -> None:
        """What the loss sees: a log-prob engine around the policy (or the score model itself); packing checked."""
        train, model = self.cfg.train, self.model
        self.engine = model if self.kind.score_model else LogProbModel(model, chunk_tokens=train.chunk_tokens)
        self.packing = train.packing and not self.kind.score_model
        if self.packing:
            segment_attention.enable(self.model)  # packed rows attend sequence by sequence where that is exact
            try:
                check_packing(self.model, self.pad_id)
            except PackingUnsupported as e:
                raise TrainingError(str(e)) from None

    def _setup_reference(self, labels: dict[str, float] | None) -> tuple[torch.Tensor | None, Any]:
        """``(per_item, ref_engine)``: reference log-probs precomputed once ``[n, 2]`` (or the classifier's labels
        ``[n]``) of every train + eval example, and the reference run on the fly otherwise."""
        cfg = self.cfg
        per_item, ref_engine = None, None
        if self.spec.needs_reference:
            if cfg.reference.precompute and not self.sharded:  # sharded: after prepare, see _setup_optimiser
                per_item = self._precompute_reference()
            elif not cfg.reference.precompute:
                ref_engine = attach_reference(cfg, self.model, self.tok, self.accelerator)
        if labels is not None:
            per_item = torch.tensor([labels[it.source] for it in self.train_items + self.eval_items])
        return per_item, ref_engine

    def _precompute_reference(self) -> torch.Tensor:
        return precompute_reference(self.cfg, self.engine, self.model, self.tok, self.train_items + self.eval_items,
                                    self.accelerator, quiet=self.quiet)

    def _setup_optimiser(self) -> None:
        """AdamW (no weight decay on biases and norms) and the schedule over the run's optimiser steps; engine,
        optimiser, schedule (and a frozen reference) prepared by accelerate; trackers started."""
        cfg = self.cfg
        self.global_batch = cfg.train.batch_size * self.world * cfg.train.grad_accum
        self.per_epoch = steps_per_epoch(len(self.train_items), self.global_batch)
        self.total_steps = cfg.train.max_steps or max(1, math.ceil(self.per_epoch * cfg.train.epochs))
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
        optimizer = optim.adamw(  # fused when the parameters allow it (train/optim.py)
            [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.train.lr,
            betas=cfg.train.adam_betas,
            sharded=self.sharded,
        )
        scheduler = get_scheduler(
            cfg.train.schedule if cfg.train.schedule != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=int(cfg.train.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.engine, self.optimizer, self.scheduler = self.accelerator.prepare(self.engine, optimizer, scheduler)
        if self.ref_engine is not None and not isinstance(self.ref_engine, str):
            self.ref_engine = sharding.shard_frozen(self.accelerator, self.ref_engine)
        if self.spec.needs_reference and cfg.reference.precompute and self.sharded:
            self.per_item = self._precompute_reference()
        if self.trackers and self.main:
            self.accelerator.init_trackers(cfg.run.name or self.run_dir.name, config=cfg.model_dump(mode="json"))

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        """Optimiser steps until ``total_steps``: log every ``log_every``, evaluate every ``eval_every`` and
        checkpoint every ``save_every`` step (the last step's eval and save are ``close``'s)."""
        cfg, total = self.cfg.train, self.total_steps
        self.engine.train()
        bar = tqdm(total=total, initial=self.global_step, disable=not self.main or self.quiet or not _isatty(),
                   desc=f"train {self.spec.name}", dynamic_ncols=True)
        self.speed = Throughput()  # the clock starts with the loop
        while self.global_step < total:
            grad_norm = self.step()
            bar.update(1)
            step = self.global_step
            if step % cfg.log_every == 0 or step == total:
                self._log(grad_norm, bar)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                self.last_eval = self.evaluate()
                self.metrics_log.write({f"eval/{k}": v for k, v in self.last_eval.items()}, step)
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                self.save()
        bar.close()

    def step(self) -> torch.Tensor | None:
        """One optimiser step: forward and backward of its micro-batches (DDP syncs on the last), clip, check
        that loss and gradient are finite, AdamW, schedule. Returns the gradient norm (also without clipping)."""
        micro_batches, counts = self._micro_batches(self._plan())
        step_loss = torch.zeros((), device=self.accelerator.device)
        for m, (batch, weights) in enumerate(micro_batches):
            step_loss += self._forward_backward(batch, weights, counts, sync=m == len(micro_batches) - 1)
        # the norm is computed with clipping off too (clipped to ∞): a NaN/inf gradient is caught before the update
        grad_norm = step_grad_norm(self.accelerator, self.engine.parameters(), self.cfg.train.max_grad_norm)
        # one host sync per optimiser step: stop before a non-finite loss or gradient reaches the weights
        if not torch.isfinite(step_loss + 0 * grad_norm):
            raise TrainingError(
                f"non-finite loss or gradient at step {self.global_step + 1} "
                f"(objective {self.spec.name}, lr {self.scheduler.get_last_lr()[0]:.3g}); the weights were not "
                f"updated. Last good checkpoint: {last_finite_checkpoint(self.run_dir) or 'none'}. "
                "Lower the learning rate, check the data, or for dil_lsif lower beta / keep length_normalize on."
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return grad_norm

    def _plan(self) -> StepPlan:
        """This process's example indices of the next optimiser step (batching: a function of seed and step)."""
        train = self.cfg.train
        epoch, in_epoch = divmod(self.global_step, self.per_epoch)
        if epoch != self._epoch:
            group = self.global_batch if self.lengths else 0
            self._order = epoch_order(len(self.train_items), self.cfg.run.seed, epoch, self.lengths, group=group)
            self._epoch = epoch
        return plan_step(self._order, in_epoch, train.batch_size, train.grad_accum, self.world, self.rank)

    def _micro_batches(self, plan: StepPlan) -> tuple[list[tuple[dict, torch.Tensor]], StepCounts]:
        """The step's micro-batches (on the host) with their example weights, and the counts its loss is
        normalised by (token counts summed across processes for per-token objectives)."""
        micro_batches = []
        for idx in plan.micro:
            weights = torch.ones(len(idx))
            if not idx:  # this process has no share of a short last step: a zero-weight stand-in keeps DDP in step
                idx, weights = [self._order[0]], torch.zeros(1)
            batch = self.kind.batch([self.train_items[i] for i in idx], self.pad_id, self.per_item, idx, self.packing)
            micro_batches.append((batch, weights))
        own_tokens = self._add_own_samples([b for b, _ in micro_batches]) if self.policy_items else 0
        tokens = sum(_response_tokens(b) for b, w in micro_batches if w.sum() > 0)
        if self.kind.per_token and self.world > 1:
            t = torch.tensor([tokens, own_tokens], device=self.accelerator.device)
            tokens, own_tokens = (int(x) for x in self.accelerator.reduce(t, "sum"))
        return micro_batches, StepCounts(plan.n_examples, tokens, own_tokens, self.world)

    def _add_own_samples(self, batches: list[dict]) -> int:
        """The m-th micro-batch also carries its share of the step's own samples (``policy/...`` keys); returns
        their response tokens on this process."""
        train = self.cfg.train
        order = policy_order(len(self.policy_items), self.cfg.run.seed, self.global_step, self.global_batch)
        own = plan_step(order, 0, train.batch_size, train.grad_accum, self.world, self.rank)
        n_tokens = 0
        for batch, own_idx in zip(batches, own.micro, strict=False):
            if own_idx:
                part = collate_demo_batch([self.policy_items[i] for i in own_idx], self.pad_id, self.packing)
                n_tokens += _response_tokens(part)
                batch.update({steps.POLICY_PREFIX + k: v for k, v in part.items()})
        return n_tokens

    def _forward_backward(self, batch: dict, weights: torch.Tensor, counts: StepCounts, sync: bool) -> torch.Tensor:
        """One micro-batch's loss and gradient (accumulated; DDP averages only when ``sync``); returns the loss."""
        acc = self.accelerator
        # counts for logging, taken on the host before the batch moves: no device sync for them
        n_real, n_slots = int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
        w_sum = float(weights.sum())
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        weights = weights.to(acc.device)
        ctx = acc.no_sync(self.engine) if not sync and self.world > 1 else contextlib.nullcontext()
        with ctx, acc.autocast():
            loss, metrics = self.kind.loss(self.loss_ctx, batch, weights, counts, False)
            acc.backward(loss)
        self.window.add(metrics, w_sum)
        self.speed.add(n_real if w_sum > 0 else 0)
        self.pad_real += n_real
        self.pad_slots += n_slots
        return loss.detach()

    def _log(self, grad_norm: torch.Tensor | None, bar: Any) -> None:
        """The mean train metrics since the last log, learning rate, throughput, padding and memory."""
        step, total = self.global_step, self.total_steps
        self.last_train = self.window.result(self.accelerator)
        self.window = MetricMean()
        pad_fraction = 1.0 - self.pad_real / max(self.pad_slots, 1)
        self.pad_real, self.pad_slots = 0, 0
        tps = self.speed.rate() * self.world
        record = {f"train/{k}": v for k, v in self.last_train.items()}
        record.update(
            {
                "lr": self.scheduler.get_last_lr()[0],
                "epoch": step / self.per_epoch,
                "tokens_per_s": tps,
                "pad_fraction": pad_fraction,  # share of the token slots fed to the model that were padding
                "peak_mem_mb": peak_memory_mb(),
            }
        )
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        self.metrics_log.write(record, step)
        loss = self.last_train.get("loss", float("nan"))
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:.0f}")
        if self.main and not self.quiet and not _isatty():  # logs and pipes get one plain line per logging step
            print(f"  step {step}/{total}  loss {loss:.4f}  {tps:.0f} tok/s", flush=True)

    def evaluate(self) -> dict[str, float]:
        """Mean metrics over the eval split (each process its strided share, reduced), the objective's loss and
        metrics normalised per eval batch; {} without an eval split."""
        if not self.eval_items:
            return {}
        acc = self.accelerator
        self.engine.eval()
        mean = MetricMean()
        ebs = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        mine = list(range(len(self.eval_items)))[self.rank :: self.world]
        batches = [mine[s : s + ebs] for s in range(0, len(mine), ebs)]
        with torch.no_grad():
            for n in range(sharding.lockstep_batches(len(batches), acc)):
                idx = batches[n] if n < len(batches) else [0]  # past its own: a discarded forward (sharded)
                eidx = [len(self.train_items) + i for i in idx]
                batch = self.kind.batch([self.eval_items[i] for i in idx], self.pad_id, self.per_item, eidx,
                                        self.packing)
                counts = StepCounts(len(idx), _response_tokens(batch), None, 1)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                ones = torch.ones(len(idx), device=acc.device)
                _, m = self.kind.loss(self.loss_ctx, batch, ones, counts, True)
                if n < len(batches):
                    mean.add(m, len(idx))
        self.engine.train()
        return mean.result(acc)

    def save(self) -> None:
        """An atomic checkpoint of the step (model, optimiser, schedule, RNG) that ``resume`` continues from."""
        step = self.global_step
        state = {"step": step, "epoch": step / self.per_epoch, "config_fingerprint": config_fingerprint(self.cfg)}
        if self.kind.loss_state is not None:
            state["loss_state"] = self.kind.loss_state(self.fn)
        state[FINITE_KEY] = self._check_finite()  # a checkpoint is only ever called good when verified so
        on_main(lambda: ensure_space(self.run_dir, checkpoint_bytes(self.model), f"the checkpoint of step {step}"))
        save_checkpoint(self.accelerator, self.run_dir, step, state, keep=self.cfg.train.keep_checkpoints)

    def _check_finite(self) -> bool:
        """The weights are finite (else a :class:`TrainingError`: nothing non-finite is checkpointed or saved)."""
        if not weights_finite(self.accelerator.unwrap_model(self.engine), self.accelerator):
            raise TrainingError(
                f"the weights are not finite at step {self.global_step}; nothing was saved. Last good checkpoint: "
                f"{last_finite_checkpoint(self.run_dir) or 'none'}"
            )
        return True

    # ---------------------------------------------------------------- close
    def close(self) -> TrainResult:
        """Final evaluation, the model folder (``save_pretrained`` model + tokenizer), summary.json."""
        acc, run_dir = self.accelerator, self.run_dir
        self.last_eval = self.evaluate()
        if self.last_eval:
            self.metrics_log.write({f"eval/{k}": v for k, v in self.last_eval.items()}, self.global_step)
        model_dir = run_dir / "model"
        acc.wait_for_everyone()
        self._check_finite()
        full = sharding.full_state_dict(acc, self.engine) if self.sharded else None  # every process takes part
        lm = acc.unwrap_model(self.engine).lm
        on_main(lambda: ensure_space(run_dir, checkpoint_bytes(lm, optimizer_states=0), "the trained model"))
        if self.main:
            tmp = run_dir / "model.tmp"
            save_model(lm if full is None else sharding.consolidated_copy(lm, full), self.tok, tmp)
            if model_dir.exists():
                shutil.rmtree(model_dir)
            os.replace(tmp, model_dir)
            fault("model:saved")
            seal_model(model_dir)  # sizes and hashes of its files: a truncated copy is never reused
        seconds = time.perf_counter() - self.t_start
        result = TrainResult(run_dir, model_dir, self.global_step, self.last_train, self.last_eval, seconds)
        if self.main:
            summary = {"steps": result.steps, "seconds": seconds, "train": result.train_metrics,
                       "eval": result.eval_metrics, "model_dir": str(model_dir)}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        for tracker in acc.trackers:  # not end_training(): it destroys the process group, which belongs to the
            tracker.finish()  # process (imitalign iterate trains several times in one launch); torchrun tears it down
        acc.wait_for_everyone()  # summary.json is written before any process returns
        return result


def _cpu_processes() -> bool:
    """Several processes launched on a machine without CUDA (``torchrun``, or ``accelerate launch --multi_gpu
    --num_processes N``; ``accelerate launch --cpu`` starts one process unless mpirun is used): accelerate joins
    them in a gloo process group only when told ``cpu=True`` — otherwise each process would train alone."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _fresh_accelerator_state() -> None:
    """accelerate keeps one ``AcceleratorState`` per process and refuses an ``Accelerator`` whose mixed precision
    differs from the first one's, so a second run in the same process (the Python API, the quickstart, a bf16 vs
    fp32 comparison) would fail. Each run starts from a fresh one; ``PartialState`` — the process group, owned by
    the launcher — is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def _mixed_precision(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _response_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["response_mask"][:, 1:].sum())


def _responses(item: Any) -> list[list[int]]:
    """The response token lists of a tokenised pair or demonstration."""
    if hasattr(item, "chosen_ids"):
        return [item.chosen_ids, item.rejected_ids]
    return [item.response_ids]


def _isatty() -> bool:
    return sys.stderr.isatty()
