"""Reward sources: one interface for everything that scores (prompt, response) rows.

A *reward source* maps a list of rows ``{"prompt", "response", ...}`` (the sample files' rows, contracts.md
"Files between stages"; ``prompt`` is a string or a message list) to one finite float per row:

    class RewardSource(Protocol):
        name: str
        def score(self, rows: list[dict]) -> list[float]: ...

Sources are built from a :class:`RewardConfig` by :func:`load_reward`, which looks ``cfg.kind`` up in a
registry. Built-in kinds (``imitalign/reward/builtin.py`` and ``models.py``):

==================  =============================================================================================
kind                r(x, y)
==================  =============================================================================================
``gold``            the gym's gold reward r*(x, y) (``imitalign.gym.build.gold_rewards``)
``bradley_terry``   a sequence classifier trained with objective ``bradley_terry`` (``path``: its model folder)
``classifier``      the logit z of a sequence classifier trained with ``discriminator_bce`` (= log D − log(1−D))
``implicit``        β·(log π(y|x) − log π_ref(y|x)) of a trained policy (``path``) against ``reference``;
                    ``length_normalize``: divide the log-ratio by the response's token count
``function``        a user callable ``"package.module:function"``: ``list[dict] -> list[float]``
==================  =============================================================================================

Other packages add kinds with :func:`register_reward_kind` (AfD: ``discriminator``, ``closed_form``,
``iqlearn``); their modules are listed in :data:`PLUGIN_MODULES` and imported on first use, so that
``load_reward`` knows every kind without the caller importing anything.

Every caller goes through :func:`score_rows`, which checks what a source returns — one finite float per row —
and raises :class:`RewardError` naming the source, the count or the first bad row, so that a broken reward
stops a loop before its expensive stage (and before anything is written as if finished).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RewardError(ValueError):
    """A reward source cannot be built or returned unusable scores; the message says which and why."""


@runtime_checkable
class RewardSource(Protocol):
    """Scores rows ``{"prompt", "response", ...}``; ``score`` returns one finite float per row, in order."""

    name: str

    def score(self, rows: list[dict[str, Any]]) -> list[float]: ...


class RewardConfig(BaseModel):
    """How to build a reward source (the ``reward`` section of ``iterate``/``score`` configs).

    Attributes:
      kind: a registered kind (``gold``, ``bradley_terry``, ``classifier``, ``implicit``, ``function``, or one
        registered by another package, e.g. ``discriminator``, ``closed_form``, ``iqlearn``).
      path: model folder or hub id of the scoring model (reward model, discriminator, trained policy).
      reference: the reference policy π_ref (``implicit``) or π_init (``closed_form``).
      beta: scale of implicit rewards, r = β·(log π − log π_ref).
      function: ``"package.module:function"`` for ``function``.
      batch_size: rows per forward pass.
      length_normalize: divide log-ratios by the response's token count (implicit-type rewards).
      chat_template / system_prompt / max_length: how rows are rendered and tokenised (as in ``data``; use the
        values the scoring model was trained with). Rows longer than ``max_length`` are an error.
      dtype / device: where model-based sources run (``auto``: CUDA when available).
      options: further kind-specific options (passed through to the builder).
      name: a display name (default: the kind, plus the path's last part).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: str
    path: str | None = None
    reference: str | None = None
    beta: float = 1.0
    function: str | None = None
    batch_size: int = Field(32, ge=1)
    length_normalize: bool = False
    chat_template: str = "auto"
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=2)
    dtype: str = "float32"
    device: str = "auto"
    options: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None

    def display_name(self) -> str:
        if self.name:
            return self.name
        target = self.path or self.function
        return f"{self.kind}:{str(target).rstrip('/').split('/')[-1]}" if target else self.kind


RewardBuilder = Callable[[RewardConfig], RewardSource]

_KINDS: dict[str, RewardBuilder] = {}

#: Modules that register reward kinds; imported (when present) before a kind is looked up.
PLUGIN_MODULES: list[str] = [
    "imitalign.reward.builtin",
    "imitalign.reward.models",
    "imitalign.reward.discriminator",
    "imitalign.reward.closed_form",
    "imitalign.reward.iqlearn",
    "imitalign.reward.iq_reward",
]
_loaded = False


def register_reward_kind(kind: str, builder: RewardBuilder, *, overwrite: bool = False) -> RewardBuilder:
    """Register ``builder(cfg) -> RewardSource`` under ``kind``. Returns the builder (usable as a decorator
    via ``functools.partial``). Registering a taken kind is an error unless ``overwrite``."""
    if not kind or not isinstance(kind, str):
        raise ValueError(f"a reward kind must be a non-empty string, got {kind!r}")
    if kind in _KINDS and not overwrite and _KINDS[kind] is not builder:
        raise ValueError(f"reward kind {kind!r} is already registered (pass overwrite=True to replace it)")
    _KINDS[kind] = builder
    return builder


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in PLUGIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def reward_kinds() -> list[str]:
    """Every registered kind (plugins included), sorted."""
    _load_plugins()
    return sorted(_KINDS)


def as_reward_config(cfg: RewardConfig | dict[str, Any]) -> RewardConfig:
    if isinstance(cfg, RewardConfig):
        return cfg
    try:
        return RewardConfig.model_validate(cfg)
    except ValidationError as e:
        lines = [f"  reward.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
        raise RewardError("invalid reward configuration:\n" + "\n".join(lines)) from None


def load_reward(cfg: RewardConfig | dict[str, Any]) -> RewardSource:
    """Build the reward source of ``cfg`` (a :class:`RewardConfig` or a dict of its fields).

    Raises :class:`RewardError` for an unknown kind (listing the known ones) or when the builder fails
    (missing path, a function that does not import, ...)."""
    cfg = as_reward_config(cfg)
    _load_plugins()
    builder = _KINDS.get(cfg.kind)
    if builder is None:
        raise RewardError(f"unknown reward kind {cfg.kind!r}; known: {', '.join(sorted(_KINDS))}")
    try:
        source = builder(cfg)
    except RewardError:
        raise
    except (OSError, ValueError, ImportError, AttributeError) as e:
        raise RewardError(f"reward {cfg.display_name()!r} (kind {cfg.kind}): {e}") from e
    if not isinstance(source, RewardSource):
        raise RewardError(
            f"the builder of reward kind {cfg.kind!r} returned {type(source).__name__}, which has no name/score"
        )
    return source


def _where(row: Any) -> str:
    if not isinstance(row, dict):
        return repr(row)[:80]
    prompt = row.get("prompt")
    text = prompt if isinstance(prompt, str) else str(prompt)
    return f"prompt {text[:60]!r}, response {str(row.get('response', ''))[:40]!r}"


def check_scores(name: str, rows: Sequence[Any], scores: Any) -> list[float]:
    """``scores`` as a list of finite floats, one per row, or a :class:`RewardError` saying what is wrong."""
    if hasattr(scores, "tolist"):  # tensors and arrays
        scores = scores.tolist()
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {name!r} returned something that is not a list of numbers: {e}") from None
    if len(values) != len(rows):
        raise RewardError(
            f"reward {name!r} returned {len(values)} scores for {len(rows)} rows "
            "(it must return exactly one per row, in order)"
        )
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned a non-finite score ({v}) for row {i} ({_where(rows[i])})")
    return values


def score_rows(source: RewardSource, rows: Sequence[dict[str, Any]], *, batch_size: int | None = None) -> list[float]:
    """``source.score(rows)`` checked by :func:`check_scores`; with ``batch_size``, in chunks of that many rows
    (each chunk checked)."""
    rows = list(rows)
    if not rows:
        return []
    step = batch_size or len(rows)
    out: list[float] = []
    for k in range(0, len(rows), step):
        chunk = rows[k : k + step]
        out += check_scores(source.name, chunk, source.score(chunk))
    return out
