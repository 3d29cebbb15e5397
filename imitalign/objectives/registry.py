"""Objectives by name: an `ObjectiveSpec` per loss, and `build` to bind a config's options.

A new loss is one function plus one `register` line. The trainer reads from the spec what to feed the
function (``kind``, ``needs_reference``, ``needs_values``) and how to reduce its per-example losses
(``reduction``: ``"mean"`` for pair/reward objectives, whose losses are per example; ``"sum"`` for token
objectives, whose per-sequence losses are already divided by the batch's token count).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from . import ratio, reward, token
from .rules import check_rule, holds

Kind = Literal["pair", "token", "reward_pair", "classifier"]
Reduction = Literal["sum", "mean"]
ObjectiveFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

KINDS: tuple[str, ...] = ("pair", "token", "reward_pair", "classifier")


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the trainer needs to know about an objective.

    Attributes:
      name: registry name.
      kind: ``"pair"`` (chosen/rejected sequence log-probs), ``"token"`` (demonstration token tensors),
        ``"reward_pair"`` (scalar scores of chosen/rejected), ``"classifier"`` (scalar logits, 0/1 labels).
      fn: the pure loss function, returning ``(losses, metrics)``.
      needs_reference: whether reference log-probs must be computed.
      needs_values: whether ``token_values`` (V(s_t)) must be computed.
      reduction: how to reduce ``losses`` to the batch loss: ``"mean"`` or ``"sum"``.
      defaults: every accepted option and its default value.
      doc: one line for listings (defaults to the first line of ``fn``'s docstring).
      required: options that must be given (e.g. ``generator`` for ``bregman``).
      rules: a range per numeric option, as in the docstrings (``{"beta": "> 0", "label_smoothing": "[0, 0.5)"}``),
        checked at config time by :func:`check_options`.
    """

    name: str
    kind: Kind
    fn: ObjectiveFn
    needs_reference: bool = False
    needs_values: bool = False
    reduction: Reduction = "mean"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    required: tuple[str, ...] = ()
    rules: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"objective {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"objective {self.name!r}: reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if not callable(self.fn):
            raise ValueError(f"objective {self.name!r}: fn must be callable")
        missing = [opt for opt in self.required if opt not in self.defaults]
        if missing:
            raise ValueError(f"objective {self.name!r}: required options {missing} must appear in defaults")
        unknown = [opt for opt in self.rules if opt not in self.defaults]
        if unknown:
            raise ValueError(f"objective {self.name!r}: rules for options {unknown} that are not in defaults")
        for rule in self.rules.values():
            holds(rule, 0.0)  # a malformed rule fails at registration
        object.__setattr__(self, "defaults", dict(self.defaults))
        object.__setattr__(self, "rules", dict(self.rules))
        if not self.doc:
            object.__setattr__(self, "doc", (inspect.getdoc(self.fn) or "").split("\n")[0])


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec, *, overwrite: bool = False) -> ObjectiveSpec:
    """Add ``spec`` to the registry (``overwrite=True`` to replace an existing name)."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"objective {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> ObjectiveSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(names())}{hint}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_options(spec: ObjectiveSpec, options: Mapping[str, Any]) -> None:
    accepted = sorted(spec.defaults)
    for key, value in options.items():
        if key not in spec.defaults:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"objective {spec.name!r}: unknown option {key!r}{hint} (accepted: {listing})")
        default = spec.defaults[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"objective {spec.name!r}: option {key!r} must be true or false, got {value!r}")
        if _is_number(default) and not _is_number(value):
            raise ValueError(f"objective {spec.name!r}: option {key!r} must be a number, got {value!r}")


def get(name: str, **options: Any) -> ObjectiveSpec:
    """The spec of objective ``name``; ``options`` (validated) override its defaults in the returned copy.

    Raises ValueError for an unknown name (listing the known ones, with a "did you mean") or option.
    """
    spec = _lookup(name)
    if not options:
        return spec
    _validate_options(spec, options)
    return dataclasses.replace(spec, defaults={**spec.defaults, **options})


def check_options(name: str, options: Mapping[str, Any] | None = None) -> ObjectiveSpec:
    """The spec of ``name`` with ``options`` bound, after every check that needs no tensor: known names,
    types, required options and each option's range rule (``beta > 0``, ``label_smoothing ∈ [0, 0.5)``, …).
    Raises ValueError naming the option. Used by the config models, so a bad option stops a run before any
    file is written."""
    options = dict(options or {})
    spec = get(name, **options)
    missing = [opt for opt in spec.required if options.get(opt) is None]
    if missing:
        hint = ' (e.g. generator: "my_package.generators:f")' if "generator" in missing else ""
        raise ValueError(f"objective {name!r} needs option(s) {', '.join(missing)}{hint}")
    for opt, rule in spec.rules.items():
        check_rule(name, opt, rule, spec.defaults[opt])
    return spec


def build(name: str, options: Mapping[str, Any] | None = None) -> ObjectiveFn:
    """The loss function of ``name`` with its defaults and ``options`` bound (a ``functools.partial``).

    Options are validated against the objective's accepted names (with a clear error listing them); required
    options must be given (``bregman`` needs ``generator: "package.module:function"``, resolved here once).
    Call the result with the tensors, e.g. ``build("dpo", {"beta": 0.2})(pc, pr, rc, rr, lc, lr)``.
    """
    spec = check_options(name, options)
    bound = dict(spec.defaults)
    if isinstance(bound.get("generator"), str):
        bound["generator"] = ratio.load_generator(bound["generator"])
    return functools.partial(spec.fn, **bound)


def register_bregman(name: str, generator: ratio.Generator | str, *, overwrite: bool = False) -> ObjectiveSpec:
    """Register a DIL objective ``name`` from a convex generator f (a callable or ``"module:function"``)."""
    f = ratio.load_generator(generator) if isinstance(generator, str) else generator
    spec = ObjectiveSpec(
        name=name,
        kind="pair",
        fn=ratio.make_bregman(f, name),
        needs_reference=True,
        defaults=_CLAMPED_DIL_DEFAULTS,
        rules=_CLAMPED_DIL_RULES,
        doc=f"DIL with the Bregman density-ratio estimator of generator {getattr(f, '__name__', f)!r}",
    )
    return register(spec, overwrite=overwrite)


# -------------------------------------------------------------------------------------------- built-ins
_REF_DEFAULTS = {"beta": 0.1, "length_normalize": False}
_DIL_DEFAULTS = {"beta": 1.0, "length_normalize": True}
_CLAMPED_DIL_DEFAULTS = {**_DIL_DEFAULTS, "max_log_ratio": 20.0}
_BETA = {"beta": "> 0"}
_CLAMPED_DIL_RULES = {**_BETA, "max_log_ratio": "> 0"}

_BUILTINS = (
    ObjectiveSpec(
        "dpo", "pair", ratio.dpo, needs_reference=True, defaults={**_REF_DEFAULTS, "label_smoothing": 0.0},
        rules={**_BETA, "label_smoothing": "[0, 0.5)"},
    ),
    ObjectiveSpec("ipo", "pair", ratio.ipo, needs_reference=True, defaults=_REF_DEFAULTS, rules=_BETA),
    ObjectiveSpec("hinge", "pair", ratio.hinge, needs_reference=True, defaults=_REF_DEFAULTS, rules=_BETA),
    ObjectiveSpec(
        "simpo", "pair", ratio.simpo, defaults={"beta": 2.0, "length_normalize": True, "gamma": 0.5},
        rules=_BETA,
    ),
    ObjectiveSpec(
        "dil_lsif", "pair", ratio.dil_lsif, needs_reference=True, defaults=_CLAMPED_DIL_DEFAULTS,
        rules=_CLAMPED_DIL_RULES,
    ),
    ObjectiveSpec(
        "dil_ukl", "pair", ratio.dil_ukl, needs_reference=True, defaults=_CLAMPED_DIL_DEFAULTS,
        rules=_CLAMPED_DIL_RULES,
    ),
    ObjectiveSpec("dil_bce", "pair", ratio.dil_bce, needs_reference=True, defaults=_DIL_DEFAULTS, rules=_BETA),
    ObjectiveSpec(
        "bregman",
        "pair",
        ratio.bregman,
        needs_reference=True,
        defaults={"generator": None, **_CLAMPED_DIL_DEFAULTS},
        required=("generator",),
        rules=_CLAMPED_DIL_RULES,
    ),
    ObjectiveSpec("mle", "token", token.mle, reduction="sum"),
    ObjectiveSpec(
        "iqlearn",
        "token",
        token.iqlearn,
        needs_values=True,
        reduction="sum",
        defaults={"lam": 0.1, "gamma": 1.0, "alpha": 0.0},
        rules={"lam": ">= 0", "gamma": "[0, 1]", "alpha": "[0, 1]"},
    ),
    ObjectiveSpec("bradley_terry", "reward_pair", reward.bradley_terry),
    ObjectiveSpec("discriminator_bce", "classifier", reward.discriminator_bce),
)
for _spec in _BUILTINS:
    register(_spec)
