"""What the training loop does differently for each kind of objective: one table, ``KINDS``.

An objective's ``kind`` (``imitalign.objectives.registry``) selects, here and nowhere else in the loop:

    data      the records read: ``"preference"`` (prompt, chosen, rejected) or ``"demonstration"``
    model     a policy (LM → token log-probs, ``LogProbModel``) or a score model (LM + scalar head)
    collate   tokenised items → a batch; ``attach`` adds the per-example data that rides with it
              (precomputed reference log-probs of pairs, 0/1 labels of the classifier)
    loss      the call into ``imitalign.train.steps`` and its normalisation: the mean over the optimiser
              step's examples, or (``per_token``) over its response tokens, counted across processes

A new kind of data (say ``"unpaired"`` for KTO) is one ``ObjectiveKind`` entry in ``KINDS`` (plus the kind's
name in the registry's ``KINDS``); the loop reads every difference from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from imitalign import objectives
from imitalign.config import Config, ConfigError
from imitalign.data.collate import (
    collate_demos,
    collate_demos_packed,
    collate_pairs,
    collate_pairs_packed,
    with_target_index,
)
from imitalign.data.dataset import ParsedSplit, parse_split
from imitalign.train import steps

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class StepCounts:
    """What a micro-batch's loss is normalised by (``imitalign.train.steps``): the optimiser step's examples
    and response tokens across processes (``own_tokens``: of the policy's own samples), and the number of
    processes whose gradients DDP averages."""

    examples: int
    tokens: int
    own_tokens: int | None
    world: int


@dataclass(frozen=True)
class LossContext:
    """What every micro-batch loss of a run shares: the (prepared) engine, the bound objective, the reference
    run on the fly (a module, ``"adapter"``, or None when precomputed or not needed), and whether the run
    trains on the policy's own samples."""

    engine: Any
    fn: Callable
    reference: Any = None
    own_samples: bool = False


LossFn = Callable[[LossContext, Batch, Tensor, StepCounts, bool], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class ObjectiveKind:
    """How the loop trains the objectives of one kind (see the module docstring).

    Attributes:
      data: the data kind read (``imitalign.data.dataset``): ``"preference"`` or ``"demonstration"``.
      collate: ``(items, pad_id, packing) -> batch``.
      loss: ``(ctx, batch, weights, counts, evaluating) -> (loss, metrics)``, the micro-batch loss on the device.
      attach: ``(batch, rows)`` puts this batch's rows of the per-example tensor into the batch, or None.
      score_model: trains a score model (LM + scalar head; no packing) instead of a policy.
      per_token: the loss is normalised by the step's response tokens (summed across processes).
      labels: the per-example tensor is the data's 0/1 labels (``imitalign.reward.labels``).
      check: ``(spec, fn, own_samples)`` a dry call of the objective that raises ``ValueError`` on bad
        options, run before any model loads; None to skip.
      own_samples: objectives of this kind may train on the policy's own samples (``data.policy_samples``)
        when their function takes ``policy_token_logps``.
    """

    data: str
    collate: Callable[[list, int, bool], Batch]
    loss: LossFn
    attach: Callable[[Batch, Tensor], None] | None = None
    score_model: bool = False
    per_token: bool = False
    labels: bool = False
    check: Callable[[objectives.ObjectiveSpec, Callable, bool], None] | None = None
    own_samples: bool = False

    def batch(self, items: list, pad_id: int, per_item: Tensor | None, idx: list[int], packing: bool) -> Batch:
        """A batch of ``items``, with the rows ``idx`` of ``per_item`` (data of every example) attached."""
        batch = self.collate(items, pad_id, packing)
        if self.attach is not None and per_item is not None:
            self.attach(batch, per_item[idx])
        return batch


# ------------------------------------------------------------------ collate and attach
def collate_pair_batch(items: list, pad_id: int, packing: bool) -> Batch:
    """Padding-free rows, or padded rows with host-side target indices."""
    return collate_pairs_packed(items, pad_id) if packing else with_target_index(collate_pairs(items, pad_id))


def collate_demo_batch(items: list, pad_id: int, packing: bool) -> Batch:
    """Padding-free rows, or padded rows with host-side target indices."""
    return collate_demos_packed(items, pad_id) if packing else with_target_index(collate_demos(items, pad_id))


def _collate_score_pairs(items: list, pad_id: int, packing: bool) -> Batch:
    return collate_pairs(items, pad_id)


def _collate_score_demos(items: list, pad_id: int, packing: bool) -> Batch:
    return collate_demos(items, pad_id)


def _attach_reference(batch: Batch, rows: Tensor) -> None:
    """Precomputed reference log-probs ``[n, 2]`` → ``ref_logps [2n]`` (chosen rows, then rejected)."""
    batch["ref_logps"] = torch.cat([rows[:, 0], rows[:, 1]])


def _attach_labels(batch: Batch, rows: Tensor) -> None:
    batch["labels"] = rows


# ------------------------------------------------------------------ losses
def _pair_loss(ctx: LossContext, batch: Batch, weights: Tensor, n: StepCounts, evaluating: bool) -> tuple:
    if ctx.reference is not None:
        batch["ref_logps"] = reference_logps(ctx.reference, ctx.engine, batch)
    return steps.pair_loss(ctx.engine, ctx.fn, batch, weights=weights, step_examples=n.examples, world=n.world)


def _token_loss(ctx: LossContext, batch: Batch, weights: Tensor, n: StepCounts, evaluating: bool) -> tuple:
    return steps.token_loss(
        ctx.engine, ctx.fn, batch, weights=weights, step_tokens=n.tokens, world=n.world,
        step_policy_tokens=n.own_tokens, no_policy_samples=evaluating and ctx.own_samples,
    )


def _score_loss(kind: str) -> LossFn:
    def loss(ctx: LossContext, batch: Batch, weights: Tensor, n: StepCounts, evaluating: bool) -> tuple:
        return steps.score_loss(
            ctx.engine, ctx.fn, batch, kind=kind, weights=weights, step_examples=n.examples, world=n.world
        )

    return loss


def reference_logps(reference: Any, engine: Any, batch: Batch) -> Tensor:
    """Reference log-probs on the fly: a frozen copy, or (``"adapter"``) the policy with its LoRA disabled."""
    with torch.no_grad():
        if reference == "adapter":
            lm = engine.module.lm if hasattr(engine, "module") else engine.lm
            with lm.disable_adapter():
                return steps.sequence_logps(engine, batch)
        return steps.sequence_logps(reference, batch)


# ------------------------------------------------------------------ option checks
def _dry_token_call(spec: objectives.ObjectiveSpec, fn: Callable, own_samples: bool) -> None:
    """The objective on one token: e.g. iqlearn's α ∉ [0, 1], or α > 0 without own samples, raises here."""
    one = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    kw = {"policy_token_logps": one, "policy_token_mask": mask, "policy_token_values": one} if own_samples else {}
    fn(one, mask, one if spec.needs_values else None, **kw)


KINDS: dict[str, ObjectiveKind] = {
    "pair": ObjectiveKind("preference", collate_pair_batch, _pair_loss, attach=_attach_reference),
    "token": ObjectiveKind(
        "demonstration", collate_demo_batch, _token_loss, per_token=True, check=_dry_token_call, own_samples=True
    ),
    "reward_pair": ObjectiveKind(
        "preference", _collate_score_pairs, _score_loss("reward_pair"), attach=_attach_reference, score_model=True
    ),
    "classifier": ObjectiveKind(
        "demonstration", _collate_score_demos, _score_loss("classifier"), attach=_attach_labels, score_model=True,
        labels=True,
    ),
}


def kind_of(spec: objectives.ObjectiveSpec) -> ObjectiveKind:
    """The table entry of ``spec``'s kind; objectives of other kinds are trained by their own command."""
    if spec.kind not in KINDS:
        raise NotImplementedError(f"objective {spec.name!r} of kind {spec.kind!r} is trained by its own command")
    return KINDS[spec.kind]


def data_kind(objective: str) -> str:
    """The data kind an objective's config reads (``"preference"`` for kinds the loop does not train)."""
    kind = KINDS.get(objectives.get(objective).kind)
    return kind.data if kind is not None else "preference"


def check_objective(cfg: Config, spec: objectives.ObjectiveSpec, fn: Any) -> ParsedSplit | None:
    """Before any model loads: ``data.policy_samples`` only with an objective that takes them, its data
    readable, and the objective's options valid (the kind's dry call: a bad option is a
    :class:`~imitalign.config.ConfigError` here, not a crash at the first step). Returns the parsed own
    samples (None without them), to be tokenised once the tokenizer is loaded."""
    kind = kind_of(spec)
    own = cfg.data.policy_samples
    parsed = None
    takes_own = "policy_token_logps" in inspect.signature(spec.fn).parameters
    if own is not None:
        if not kind.own_samples or not takes_own:
            raise ConfigError(
                f"data.policy_samples: objective {spec.name!r} does not use the policy's own samples "
                "(they feed the TD term of iqlearn with alpha > 0)"
            )
        parsed = parse_split(own, "demonstration", name="policy_samples")
    if kind.check is None:
        return parsed
    try:
        kind.check(spec, fn, own is not None)
    except ValueError as e:
        raise ConfigError(f"objective {spec.name!r}: {e}") from None
    return parsed
