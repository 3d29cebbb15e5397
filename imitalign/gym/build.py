"""Writing the gym's datasets as ordinary JSONL files (contracts.md, "Files between stages").

Phase 1, :func:`build_gym` (needs no model), writes into one folder:

==========================  ===============================================  ================================
file                        rows                                             source
==========================  ===============================================  ================================
``sft.jsonl``               ``{"prompt", "response", "gold"}``               base process (pretraining/SFT)
``expert.jsonl``            ``{"prompt", "response", "gold"}``               expert process
``expert_style.jsonl``      ``{"prompt", "response", "gold", "plain"}``      the same demos, style-shifted
``pref_prompts.jsonl``      ``{"prompt"}``                                   prompts to sample pairs from
``online_prompts.jsonl``    ``{"prompt"}``                                   prompts for online loops
``eval_prompts.jsonl``      ``{"prompt"}``                                   held-out prompts
``tokenizer/``              ``save_pretrained`` folder                       :mod:`imitalign.gym.tokenizer`
``manifest.json``           config, fingerprint, counts, gold-reward stats
==========================  ===============================================  ================================

The distinct prompts of the task are split once (seeded): a fraction ``heldout_fraction`` is reserved for
``eval_prompts``; every other split draws its prompts (with replacement) from the rest, so no evaluation
prompt string is ever trained on. Each split has its own random stream (``random.Random("<seed>:<split>")``),
so changing one split's size leaves the others unchanged.

Phase 2, :func:`build_preferences`, takes responses sampled from the SFT model (``{"prompt", "response"}``
rows, e.g. the sampler's JSONL) and writes preference pairs labelled by Bradley–Terry on the gold reward:
for two distinct responses ``y1, y2`` of a prompt,

    P(y1 ≻ y2) = σ((r*(x, y1) − r*(x, y2)) / τ)          (τ = ``bt_temperature``; τ = 0: the better one,
                                                          ties by a fair coin)

then the label is flipped with probability ``label_noise``. Rows: ``{"prompt", "chosen", "rejected",
"chosen_gold", "rejected_gold", "p_chosen"}`` (``p_chosen`` = the BT probability of the label before
flipping). Pairs of a fraction ``pref_heldout_fraction`` of the prompts go to ``prefs_heldout.jsonl``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imitalign.data.jsonl import read_jsonl, write_jsonl  # noqa: F401 (read_jsonl: re-exported for callers)
from imitalign.gym.task import (
    DEMO_VARIANTS,
    TOPICS,
    all_prompts,
    base_response,
    expert_response,
    gold_reward,
    stylize,
)
from imitalign.gym.tokenizer import save_tokenizer

GYM_VERSION = 1  # bump when the task, the processes or the file layout change (invalidates cached builds)


class GymConfig(BaseModel):
    """Everything a gym build depends on (its fingerprint is a hash of these fields and ``GYM_VERSION``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_topics: int = Field(len(TOPICS), ge=2, le=len(TOPICS))
    n_sft: int = Field(20_000, ge=0)
    n_expert: int = Field(2_000, ge=0)
    n_pref_prompts: int = Field(2_000, ge=0)
    n_online_prompts: int = Field(2_000, ge=0)
    n_eval_prompts: int = Field(128, ge=0)
    heldout_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    style_shift: bool = True  # also write expert_style.jsonl
    style_rate: float = Field(0.35, ge=0.0, le=1.0)
    bt_temperature: float = Field(0.05, ge=0.0)
    label_noise: float = Field(0.0, ge=0.0, le=0.5)
    pairs_per_prompt: int = Field(1, ge=1)
    pref_heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)


def gym_fingerprint(config: GymConfig) -> str:
    """16 hex digits of ``sha256(GYM_VERSION, config as sorted JSON)``: equal iff a build would be equal."""
    blob = json.dumps({"gym_version": GYM_VERSION, **config.model_dump()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rng(config: GymConfig, split: str) -> random.Random:
    return random.Random(f"{config.seed}:{split}")


# ------------------------------------------------------------------------------------------ gold reward
def _prompt_text(prompt: Any) -> str:
    """A prompt string, or the content of the last user turn of a message list."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1]
    raise ValueError(f"cannot read a gym prompt from {prompt!r}")


def gold_rewards(rows: Iterable[dict[str, Any]]) -> list[float]:
    """``r*`` of each ``{"prompt", "response"}`` row (prompt: a string or a message list)."""
    return [gold_reward(_prompt_text(row["prompt"]), row["response"]) for row in rows]


# ------------------------------------------------------------------------------------------ phase 1
def split_prompts(config: GymConfig) -> tuple[list[str], list[str]]:
    """``(train_pool, heldout_pool)``: the task's distinct prompts, shuffled with the seed and split."""
    prompts = all_prompts(config.n_topics)
    _rng(config, "split").shuffle(prompts)
    n_heldout = max(1, round(config.heldout_fraction * len(prompts)))
    return prompts[n_heldout:], prompts[:n_heldout]


def sft_rows(config: GymConfig) -> list[dict[str, Any]]:
    """``n_sft`` draws ``(x, y ~ base process)`` with ``x`` uniform over the training prompts."""
    train, _ = split_prompts(config)
    rng = _rng(config, "sft")
    pool = list(TOPICS)[: config.n_topics]
    rows = []
    for _ in range(config.n_sft):
        prompt = rng.choice(train)
        response = base_response(prompt, rng, pool)
        rows.append({"prompt": prompt, "response": response, "gold": gold_reward(prompt, response)})
    return rows


def expert_rows(config: GymConfig, styled: bool = False) -> list[dict[str, Any]]:
    """``n_expert`` expert demonstrations; ``styled=True`` gives the *same* demonstrations with style words
    inserted (a separate random stream), so stripping the style recovers the unstyled file row by row."""
    train, _ = split_prompts(config)
    rng, style_rng = _rng(config, "expert"), _rng(config, "style")
    rows = []
    for _ in range(config.n_expert):
        prompt = rng.choice(train)
        plain = expert_response(prompt, rng)
        if styled:
            response = stylize(plain, style_rng, config.style_rate)
            rows.append({"prompt": prompt, "response": response, "gold": gold_reward(prompt, response),
                         "plain": plain})
        else:
            rows.append({"prompt": prompt, "response": plain, "gold": gold_reward(prompt, plain)})
    return rows


def _draw(pool: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` prompts from ``pool`` without replacement while it lasts (then through fresh reshuffles)."""
    order: list[str] = []
    while len(order) < n:
        chunk = list(pool)
        rng.shuffle(chunk)
        order += chunk
    return order[:n]


def prompt_rows(config: GymConfig, split: str) -> list[dict[str, str]]:
    """Prompt-only rows: ``"eval"`` from the held-out prompts, ``"online"`` or ``"pref"`` from the training
    prompts; distinct while the pool lasts (:func:`_draw`)."""
    train, heldout = split_prompts(config)
    rng = _rng(config, f"prompts:{split}")
    sizes = {"eval": config.n_eval_prompts, "online": config.n_online_prompts, "pref": config.n_pref_prompts}
    if split not in sizes:
        raise ValueError(f"unknown prompt split {split!r} (eval, online, pref)")
    return [{"prompt": p} for p in _draw(heldout if split == "eval" else train, sizes[split], rng)]


@dataclass(frozen=True)
class GymFiles:
    """Paths of a built gym (``expert_style`` is None when ``style_shift`` is off)."""

    root: Path
    sft: Path
    expert: Path
    expert_style: Path | None
    pref_prompts: Path
    online_prompts: Path
    eval_prompts: Path
    tokenizer: Path
    manifest: Path

    @classmethod
    def at(cls, root: str | Path, style_shift: bool = True) -> GymFiles:
        root = Path(root)
        return cls(
            root=root,
            sft=root / "sft.jsonl",
            expert=root / "expert.jsonl",
            expert_style=root / "expert_style.jsonl" if style_shift else None,
            pref_prompts=root / "pref_prompts.jsonl",
            online_prompts=root / "online_prompts.jsonl",
            eval_prompts=root / "eval_prompts.jsonl",
            tokenizer=root / "tokenizer",
            manifest=root / "manifest.json",
        )


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def gym_dir(root: str | Path, config: GymConfig) -> Path:
    """The cache folder of a build under ``root``: ``root/gym-<fingerprint>``."""
    return Path(root) / f"gym-{gym_fingerprint(config)}"


def build_gym(config: GymConfig, out_dir: str | Path, *, force: bool = False) -> GymFiles:
    """Write phase 1 (module docstring) into ``out_dir``; a folder whose manifest has the same fingerprint
    and whose files all exist is reused as is (unless ``force``)."""
    files = GymFiles.at(out_dir, config.style_shift)
    fingerprint = gym_fingerprint(config)
    if not force and files.manifest.is_file():
        manifest = json.loads(files.manifest.read_text())
        outputs = [files.sft, files.expert, files.pref_prompts, files.online_prompts, files.eval_prompts,
                   files.tokenizer / "tokenizer.json"] + ([files.expert_style] if files.expert_style else [])
        if manifest.get("fingerprint") == fingerprint and all(p.exists() for p in outputs):
            return files
    files.root.mkdir(parents=True, exist_ok=True)
    files.manifest.unlink(missing_ok=True)  # written last: its presence marks a complete build

    sft = sft_rows(config)
    expert = expert_rows(config)
    write_jsonl(files.sft, sft)
    write_jsonl(files.expert, expert)
    gold: dict[str, Any] = {"sft": _stats([r["gold"] for r in sft]), "expert": _stats([r["gold"] for r in expert])}
    if files.expert_style is not None:
        styled = expert_rows(config, styled=True)
        write_jsonl(files.expert_style, styled)
        gold["expert_style"] = _stats([r["gold"] for r in styled])
    counts = {}
    for split, path in (("pref", files.pref_prompts), ("online", files.online_prompts),
                        ("eval", files.eval_prompts)):
        rows = prompt_rows(config, split)
        write_jsonl(path, rows)
        counts[split] = len(rows)
    save_tokenizer(files.tokenizer)
    train, heldout = split_prompts(config)
    manifest = {
        "fingerprint": fingerprint,
        "gym_version": GYM_VERSION,
        "config": config.model_dump(),
        "counts": {"sft": len(sft), "expert": len(expert), **{f"{k}_prompts": v for k, v in counts.items()},
                   "train_prompt_pool": len(train), "heldout_prompt_pool": len(heldout)},
        "gold": gold,
    }
    tmp = files.manifest.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, files.manifest)
    return files


def expert_variant_path(root: str | Path, variant: str) -> Path:
    """Where :func:`build_expert_variant` writes a demonstration variant: ``root/expert_<variant>.jsonl``."""
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"unknown demonstration variant {variant!r} ({', '.join(DEMO_VARIANTS)})")
    return Path(root) / f"expert_{variant}.jsonl"


def expert_variant_rows(config: GymConfig, variant: str) -> list[dict[str, Any]]:
    """The demonstrations of ``expert.jsonl`` (same prompts, same draws, row by row) passed through the
    deterministic transform ``DEMO_VARIANTS[variant]``: ``{"prompt", "response", "gold", "plain"}`` rows."""
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"unknown demonstration variant {variant!r} ({', '.join(DEMO_VARIANTS)})")
    transform = DEMO_VARIANTS[variant]
    rows = []
    for row in expert_rows(config):
        response = transform(row["response"])
        rows.append({"prompt": row["prompt"], "response": response,
                     "gold": gold_reward(row["prompt"], response), "plain": row["response"]})
    return rows


def build_expert_variant(config: GymConfig, root: str | Path, variant: str) -> Path:
    """Write ``expert_<variant>.jsonl`` into a gym folder built by :func:`build_gym` with ``config`` (reused when
    present). An addition only: the variant is not part of :class:`GymConfig`, so the folder's fingerprint, its
    manifest and its other files stay as they are."""
    path = expert_variant_path(root, variant)
    if not path.is_file():
        write_jsonl(path, expert_variant_rows(config, variant))  # atomic: a present file is a complete one
    return path


# ------------------------------------------------------------------------------------------ phase 2
def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def make_preference_pairs(
    rows: Iterable[dict[str, Any]],
    *,
    seed: int = 0,
    bt_temperature: float = 0.05,
    label_noise: float = 0.0,
    pairs_per_prompt: int = 1,
    reward_fn: Callable[[str, str], float] = gold_reward,
) -> list[dict[str, Any]]:
    """Bradley–Terry-labelled pairs from sampled responses (module docstring).

    Rows are grouped by prompt (by ``prompt_index`` too when rows have one, as the sampler's do, so that a
    prompt drawn twice makes two groups; first-seen order); duplicate responses of a prompt are dropped; a prompt
    with fewer than two distinct responses gives no pair. Each prompt gives up to ``pairs_per_prompt``
    distinct unordered pairs, drawn at random. Deterministic given ``seed`` and the row order.
    """
    groups: dict[tuple[Any, str], list[str]] = {}
    originals: dict[tuple[Any, str], Any] = {}
    for row in rows:
        key = (row.get("prompt_index"), _prompt_text(row["prompt"]))
        originals.setdefault(key, row["prompt"])
        responses = groups.setdefault(key, [])
        if row["response"] not in responses:
            responses.append(row["response"])
    rng = random.Random(f"{seed}:pairs")
    pairs = []
    for key, responses in groups.items():
        if len(responses) < 2:
            continue
        golds = [reward_fn(key[1], y) for y in responses]
        combos = list(itertools.combinations(range(len(responses)), 2))
        rng.shuffle(combos)
        for i, j in combos[:pairs_per_prompt]:
            diff = golds[i] - golds[j]
            if bt_temperature > 0:
                p_i = _sigmoid(diff / bt_temperature)
            else:
                p_i = 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
            i_wins = rng.random() < p_i
            p_label = p_i if i_wins else 1.0 - p_i
            if rng.random() < label_noise:
                i_wins = not i_wins
                p_label = 1.0 - p_label
            w, l = (i, j) if i_wins else (j, i)
            pairs.append({
                "prompt": originals[key],
                "chosen": responses[w],
                "rejected": responses[l],
                "chosen_gold": golds[w],
                "rejected_gold": golds[l],
                "p_chosen": p_label,
            })
    return pairs


def build_preferences(
    samples: Iterable[dict[str, Any]], config: GymConfig, out_dir: str | Path
) -> dict[str, Path]:
    """Phase 2: label pairs of ``samples`` (``{"prompt", "response"}`` rows) and write ``prefs.jsonl`` and
    ``prefs_heldout.jsonl`` (the pairs of a seeded ``pref_heldout_fraction`` of the prompts)."""
    pairs = make_preference_pairs(
        samples,
        seed=config.seed,
        bt_temperature=config.bt_temperature,
        label_noise=config.label_noise,
        pairs_per_prompt=config.pairs_per_prompt,
    )
    prompts = list(dict.fromkeys(_prompt_text(p["prompt"]) for p in pairs))
    _rng(config, "pref-split").shuffle(prompts)
    heldout = set(prompts[: round(config.pref_heldout_fraction * len(prompts))])
    out = Path(out_dir)
    return {
        "prefs": write_jsonl(out / "prefs.jsonl",
                             [p for p in pairs if _prompt_text(p["prompt"]) not in heldout]),
        "prefs_heldout": write_jsonl(out / "prefs_heldout.jsonl",
                                     [p for p in pairs if _prompt_text(p["prompt"]) in heldout]),
    }
