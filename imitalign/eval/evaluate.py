"""Evaluating a policy on a prompt set (METHODS.md §6: every method, same protocol).

``evaluate_model`` draws ``n`` samples per prompt with :func:`imitalign.generate.sampler.sample`, scores them
with ``reward_fn`` and returns a JSON-able dict:

- ``gold_reward``: mean ± se of ``r(x, y)``;
- ``win_rate_vs_chosen`` / ``win_rate_vs_baseline``: paired win rate (ties ½) of each sample against the
  dataset's chosen response of its prompt / against a baseline model's sample (or per-prompt score);
- ``kl_to_reference``: ``E_{y~π}[log π(y|x) − log π_ref(y|x)]`` (sequence log-probs, EOS included) with
  ``log π`` from the sampler and ``log π_ref`` teacher-forced (``imitalign.model.logprobs.batch_logprobs``);
  ``kl_valid`` is False when temperature ≠ 1 or top-p < 1 (the samples are then not from ``π``);
- diversity: ``distinct_1``, ``distinct_2`` (over all samples), ``self_bleu`` (among the samples of each
  prompt, averaged over prompts; over all samples when ``n = 1``), ``token_entropy`` (token-weighted mean
  entropy of ``π`` along the sampled responses, nats);
- ``length``: response tokens (EOS included) and ``finished_fraction`` (responses that reached EOS);
- ``heldout_logp_chosen`` / ``heldout_logp_rejected`` / ``heldout_logp_margin``: teacher-forced sequence
  log-probs of held-out preference pairs under the model (``*_per_token`` divided by the token count).

Standard errors treat *prompts* as the independent units (the mean of per-prompt means, se over prompts),
since samples of one prompt are correlated; with ``n = 1`` this is the plain standard error.
``per_sample`` holds the per-sample prompt index, sample index, score, log-prob and length, so that a
baseline's scores can be paired with a later model's (same prompts, ``n`` and seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from imitalign.data.collate import collate_demos, pad_id_for
from imitalign.data.tokenize import TokenizedDemo, encode
from imitalign.eval.metrics import (
    cluster_mean_se,
    distinct_n,
    mean_se,
    mean_token_entropy,
    self_bleu,
    win_indicators,
)
from imitalign.generate.sampler import Sample, encode_prompts, sample
from imitalign.model.logprobs import batch_logprobs

RewardFn = Callable[[list[dict[str, Any]]], list[float]]


def _ms(pair: tuple[float, float]) -> dict[str, float]:
    return {"mean": pair[0], "se": pair[1]}


def collate_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, Tensor]:
    """A right-padded batch (contracts.md "Batches") of ``prompt + response`` rows, with ``response_mask``
    True on the response tokens: :func:`imitalign.data.collate.collate_demos` on plain id lists."""
    items = [TokenizedDemo(list(p), list(r), "") for p, r in zip(prompt_ids, response_ids, strict=True)]
    return collate_demos(items, pad_token_id)


@torch.no_grad()
def sequence_logps(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """Teacher-forced ``log π(y|x)`` (sum over response tokens) of each row, in batches, by the log-prob
    engine (:func:`imitalign.model.logprobs.batch_logprobs`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for k in range(0, len(prompt_ids), batch_size):
            batch = collate_sequences(prompt_ids[k : k + batch_size], response_ids[k : k + batch_size],
                                      pad_token_id)
            lp = batch_logprobs(model, {key: v.to(device) for key, v in batch.items()})
            out += lp.logps.float().cpu().tolist()
    finally:
        model.train(was_training)
    return out


def _paired_scores(name: str, scores: Sequence[float], n_prompts: int, samples: Sequence[Sample]) -> list[float]:
    """Scores to compare each sample with: one per sample (paired by order) or one per prompt."""
    if len(scores) == len(samples):
        return list(scores)
    if len(scores) == n_prompts:
        return [scores[s.prompt_index] for s in samples]
    raise ValueError(f"{name} must have one score per sample ({len(samples)}) or per prompt ({n_prompts}), "
                     f"got {len(scores)}")


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    reward_fn: RewardFn,
    reference_model: nn.Module | None = None,
    baseline_scores: Sequence[float] | None = None,
    chosen_scores: Sequence[float] | None = None,
    heldout_pairs: Sequence[dict[str, Any]] | None = None,
    n: int = 4,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = False,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Sample, score and measure (module docstring). ``reward_fn`` maps ``{"prompt", "response"}`` rows to
    scores (e.g. :func:`imitalign.gym.build.gold_rewards`). ``baseline_scores``: one per sample, in this
    function's order (prompt-major, then sample index; e.g. a baseline run's ``per_sample["score"]``) or one
    per prompt; ``chosen_scores``: one per prompt. ``heldout_pairs``: ``{"prompt", "chosen", "rejected"}``
    rows (plain-text rendering: prompt ids, then response ids + EOS). ``prompt_ids``: the prompts already
    tokenised (e.g. by the data layer's chat-template rendering); default :func:`encode_prompts`."""
    if prompt_ids is None:
        prompt_ids = encode_prompts(tokenizer, prompts)
    elif len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
    samples = sample(model, tokenizer, prompt_ids, n=n, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, progress=progress)
    groups = [s.prompt_index for s in samples]
    texts = [s.text for s in samples]
    scores = [float(x) for x in reward_fn([{"prompt": prompts[s.prompt_index], "response": s.text}
                                           for s in samples])]
    result: dict[str, Any] = {
        "n_prompts": len(prompts),
        "n_samples_per_prompt": n,
        "n_samples": len(samples),
        "seed": seed,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "gold_reward": _ms(cluster_mean_se(scores, groups)),
    }
    if chosen_scores is not None:
        against = _paired_scores("chosen_scores", chosen_scores, len(prompts), samples)
        result["win_rate_vs_chosen"] = _ms(cluster_mean_se(win_indicators(scores, against), groups))
    if baseline_scores is not None:
        against = _paired_scores("baseline_scores", baseline_scores, len(prompts), samples)
        result["win_rate_vs_baseline"] = _ms(cluster_mean_se(win_indicators(scores, against), groups))
    if reference_model is not None:
        pad = pad_id_for(tokenizer)
        ref = sequence_logps(reference_model, [prompt_ids[s.prompt_index] for s in samples],
                             [s.response_ids for s in samples], pad_token_id=pad, batch_size=batch_size)
        ratios = [s.logp - r for s, r in zip(samples, ref, strict=True)]
        result["kl_to_reference"] = _ms(cluster_mean_se(ratios, groups))
        result["kl_valid"] = temperature == 1.0 and top_p == 1.0
    result["distinct_1"] = distinct_n(texts, 1)
    result["distinct_2"] = distinct_n(texts, 2)
    if n >= 2:
        by_prompt: dict[int, list[str]] = {}
        for s in samples:
            by_prompt.setdefault(s.prompt_index, []).append(s.text)
        result["self_bleu"] = _ms(mean_se([self_bleu(t) for t in by_prompt.values()]))
        result["self_bleu_scope"] = "per_prompt"
    else:
        result["self_bleu"] = self_bleu(texts)
        result["self_bleu_scope"] = "all"
    result["token_entropy"] = mean_token_entropy([s.token_entropies for s in samples])
    result["length"] = _ms(cluster_mean_se([float(s.n_tokens) for s in samples], groups))
    result["finished_fraction"] = sum(s.finished for s in samples) / max(1, len(samples))
    if heldout_pairs:
        result.update(heldout_likelihood(model, tokenizer, heldout_pairs, batch_size=batch_size))
    result["per_sample"] = {
        "prompt_index": groups,
        "sample_idx": [s.sample_idx for s in samples],
        "score": scores,
        "logp": [s.logp for s in samples],
        "n_tokens": [s.n_tokens for s in samples],
    }
    return to_jsonable(result)


def heldout_likelihood(
    model: nn.Module, tokenizer: Any, pairs: Sequence[dict[str, Any]], *, batch_size: int = 32
) -> dict[str, Any]:
    """Mean ± se of teacher-forced ``log π(y_w|x)``, ``log π(y_l|x)``, their difference, and the same per
    response token, over held-out pairs (DIL's "likelihood of chosen responses" diagnostic)."""
    eos = tokenizer.eos_token_id
    pad = pad_id_for(tokenizer)
    prompt_ids = encode_prompts(tokenizer, [p["prompt"] for p in pairs])
    chosen = [encode(tokenizer, p["chosen"]) + [eos] for p in pairs]
    rejected = [encode(tokenizer, p["rejected"]) + [eos] for p in pairs]
    lw = sequence_logps(model, prompt_ids, chosen, pad_token_id=pad, batch_size=batch_size)
    ll = sequence_logps(model, prompt_ids, rejected, pad_token_id=pad, batch_size=batch_size)
    return {
        "heldout_logp_chosen": _ms(mean_se(lw)),
        "heldout_logp_rejected": _ms(mean_se(ll)),
        "heldout_logp_margin": _ms(mean_se([w - l for w, l in zip(lw, ll, strict=True)])),
        "heldout_logp_chosen_per_token": _ms(mean_se([w / len(c) for w, c in zip(lw, chosen, strict=True)])),
        "heldout_logp_rejected_per_token": _ms(mean_se([x / len(r) for x, r in zip(ll, rejected, strict=True)])),
        "heldout_pairs": len(pairs),
    }


def to_jsonable(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN/inf), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------ table
COLUMNS: dict[str, str] = {
    "gold_reward": "gold",
    "win_rate_vs_chosen": "win vs chosen",
    "win_rate_vs_baseline": "win vs base",
    "kl_to_reference": "KL(π‖ref)",
    "distinct_1": "dist-1",
    "distinct_2": "dist-2",
    "self_bleu": "self-BLEU",
    "token_entropy": "entropy",
    "length": "length",
    "heldout_logp_chosen": "logp chosen",
    "heldout_logp_rejected": "logp rejected",
    "heldout_logp_margin": "logp margin",
}
_NOT_METRICS = {"n_prompts", "n_samples_per_prompt", "n_samples", "seed", "temperature", "top_p",
                "max_new_tokens", "heldout_pairs", "finished_fraction"}


def _decimals(x: float) -> int:
    a = abs(x)
    return 1 if a >= 100 else 2 if a >= 10 else 3


def _fmt(x: Any, decimals: int | None = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    text = f"{x:.{_decimals(x) if decimals is None else decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        mean, se = value.get("mean"), value.get("se")
        if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
            return "–"
        if se is None or (isinstance(se, float) and not math.isfinite(se)):
            return _fmt(mean)
        return f"{_fmt(mean)} ± {_fmt(se, _decimals(mean))}"
    return _fmt(value) if isinstance(value, int | float) or value is None else str(value)


def _is_metric(key: str, value: Any) -> bool:
    if key in _NOT_METRICS or key == "name":
        return False
    if isinstance(value, dict):
        return set(value) == {"mean", "se"}
    return isinstance(value, float)


def format_table(rows: Sequence[dict[str, Any]], name_key: str = "name", *, extra: bool = False) -> str:
    """A plain-text (Markdown pipe) table of evaluation results, one row per dict (``rows[i][name_key]``
    names it), ``mean ± se`` cells. The metrics of ``COLUMNS`` that any row has come in that order with
    short headers; with ``extra``, any other float or ``{"mean", "se"}`` entry follows under its own key.
    A metric a row lacks shows as ``–``."""
    keys: list[str] = [k for k in COLUMNS if any(k in r for r in rows)]
    if extra:
        for r in rows:
            keys += [k for k, v in r.items() if k not in keys and k not in COLUMNS and _is_metric(k, v)]
    header = [name_key] + [COLUMNS.get(k, k) for k in keys]
    body = [[str(r.get(name_key, i))] + [_cell(r.get(k)) for k in keys] for i, r in enumerate(rows)]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                 for j, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if j else "-") for j, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *[line(b) for b in body]])
