"""Best-of-N: draw N responses per prompt from a policy, keep the one a reward source scores highest (AfD's policy
improvement, METHODS.md §3), and sweep N.

    imitalign bon CONFIG.yaml [--set n_max=64 ...]

For each prompt ``x`` the policy draws ``N_max`` samples ``y_0 … y_{N_max−1}`` **once** (seeded per row, see
:mod:`imitalign.generate.sampler`); best-of-N for ``N ≤ N_max`` uses the first ``N`` of them,

    ŷ_N(x) = y_{j*},   j* = min argmax_{j < N} r(x, y_j)          (ties go to the first, i.e. lowest j)

so the sweep ``N = 1, 2, 4, …, N_max`` costs one round of sampling, and ``N = 1`` is plain sampling with the same
seed (sample 0 of a row depends only on ``(seed, prompt, 0)``). Every reward source picks from the same samples.

Reported per reward source and N (prompts are the independent units; one pick per prompt):

- ``gold``: mean ± se of the gold reward r*(x, ŷ_N) (the gym's r*, or any reward source named as the judge);
- ``win_rate``: paired win rate of ŷ_N against the baseline model's samples of the same prompt (ties ½): per prompt
  the mean of ``1[r*(ŷ_N) > r*(b_k)] + ½·1[=]`` over its ``baseline_n`` baseline samples ``b_k``, then mean ± se over
  prompts. The baseline is an independent draw (another seed), from ``baseline_model`` or the policy itself, so
  N = 1 sits near 0.5 by construction;
- ``proxy``: mean ± se of the picking source's own score of ŷ_N (it rises with N by construction; a proxy that rises
  while ``gold`` falls is reward hacking);
- ``length``: mean response tokens of the picks.

Files (``output_dir``): ``samples.jsonl`` (the ``N_max`` candidates per prompt, sample rows of contracts.md plus
``"gold"`` and ``"scores": {source: r}``), ``baseline.jsonl``, ``results.json``, ``bon.md`` (a table) and
``bon.png`` (gold reward and win rate against N, one line per source). Candidates and baseline samples are reused
when the folder holds them for the same model, prompts, seed and sampling settings, so adding a reward source
rescores without resampling.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imitalign.config import ConfigError, DataSource, read_yaml_mapping, validate_config
from imitalign.eval.metrics import mean_se
from imitalign.loops.stages import model_fingerprint, read_cached_rows, settings_fingerprint, write_cached_rows
from imitalign.reward.base import RewardConfig, RewardSource, load_reward, score_rows


class SamplingConfig(BaseModel):
    """How candidates are drawn (``imitalign.generate.sampler.sample``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1)


class BonConfig(BaseModel):
    """A best-of-N sweep (module docstring).

    Attributes:
      model: the policy to sample (a model folder or hub id).
      prompts: the prompt file (any format the data layer reads; only prompts are used).
      rewards: the reward sources that pick (``RewardConfig`` each; give each a ``name`` for the table).
      gold: the judge that evaluates the picks (default: the gym's gold reward).
      n_max: the largest N (≥ 1); ``ns``: the N of the sweep (default 1, 2, 4, … up to ``n_max``, and ``n_max``).
      baseline_model: the model whose samples the picks are compared with (default: ``model``).
      baseline_n: baseline samples per prompt.
      seed: sampling seed of the candidates (the baseline uses ``seed + 7919``).
      chat_template / system_prompt / max_length: how prompts are rendered (as the policy was trained).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model: str
    prompts: DataSource
    rewards: list[RewardConfig] = Field(min_length=1)
    gold: RewardConfig = Field(default_factory=lambda: RewardConfig(kind="gold"))
    n_max: int = Field(64, ge=1)
    ns: list[int] | None = None
    baseline_model: str | None = None
    baseline_n: int = Field(4, ge=1)
    seed: int = 0
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    chat_template: str = "auto"
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=2)
    output_dir: str = "runs/bon"

    @model_validator(mode="after")
    def _check_ns(self) -> BonConfig:
        if self.ns is not None:
            bad = [n for n in self.ns if n < 1 or n > self.n_max]
            if bad or not self.ns:
                raise ValueError(f"ns must be non-empty integers in 1..n_max ({self.n_max}), got {self.ns}")
        names = [r.display_name() for r in self.rewards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"reward names must be distinct (give each a name:), repeated: {', '.join(dup)}")
        return self

    def grid(self) -> list[int]:
        return sorted(set(self.ns)) if self.ns is not None else n_grid(self.n_max)


def load_bon_config(path: str | Path | None, overrides: list[str] | None = None, raw: dict | None = None) -> BonConfig:
    """Read a YAML best-of-N config (or a dict), apply ``--set`` overrides and validate (clear errors)."""
    source = str(path) if path is not None else "<dict>"
    if raw is None:
        raw = read_yaml_mapping(str(path), "model, prompts, rewards, ...")
    return validate_config(BonConfig, raw, overrides, source)


# ------------------------------------------------------------------------------------------ selection
def n_grid(n_max: int) -> list[int]:
    """``1, 2, 4, …`` up to ``n_max``, plus ``n_max`` itself when it is not a power of two."""
    if n_max < 1:
        raise ValueError(f"N must be >= 1, got {n_max}")
    out, n = [], 1
    while n <= n_max:
        out.append(n)
        n *= 2
    if out[-1] != n_max:
        out.append(n_max)
    return out


def best_index(scores: Sequence[float], n: int | None = None) -> int:
    """``min argmax_{j < n} scores[j]``: the first of the highest among the first ``n`` (all by default)."""
    n = len(scores) if n is None else n
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    if n > len(scores):
        raise ValueError(f"best-of-{n} needs {n} candidates, got {len(scores)}")
    best = 0
    for j in range(1, n):
        if scores[j] > scores[best]:
            best = j
    return best


def worst_index(scores: Sequence[float], n: int | None = None) -> int:
    """``min argmin_{j < n} scores[j]`` (ties to the first)."""
    return best_index([-s for s in scores], n)


def group_by_prompt(rows: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Row indices per prompt (by ``prompt_index``, first-seen order), each sorted by ``sample_idx``."""
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["prompt_index"], []).append(i)
    return [sorted(idx, key=lambda i: rows[i]["sample_idx"]) for idx in groups.values()]


def select(groups: Sequence[Sequence[int]], scores: Sequence[float], n: int) -> list[int]:
    """The best-of-``n`` row of each prompt group (indices into ``scores``); a group with fewer than ``n``
    candidates is an error."""
    return [g[best_index([scores[i] for i in g], n)] for g in groups]


# ------------------------------------------------------------------------------------------ the sweep
def sweep(
    rows: Sequence[dict[str, Any]],
    scores: dict[str, Sequence[float]],
    gold: Sequence[float],
    baseline_gold: dict[Any, Sequence[float]],
    ns: Sequence[int],
    *,
    extra: Callable[[dict[str, Any]], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """One result per (source, N): ``{"source", "n", "gold", "win_rate", "proxy", "length"}`` with ``(mean, se)``
    pairs (module docstring). ``baseline_gold`` maps a row's ``prompt_index`` to its baseline samples' gold
    rewards. ``extra(row)`` adds per-pick metrics (averaged, with se), e.g. the share of style words."""
    groups = group_by_prompt(rows)
    out = []
    for name, src_scores in scores.items():
        for n in ns:
            picks = select(groups, src_scores, n)
            wins = []
            for i in picks:
                base = baseline_gold[rows[i]["prompt_index"]]
                wins.append(sum(1.0 if gold[i] > b else 0.5 if gold[i] == b else 0.0 for b in base) / len(base))
            res: dict[str, Any] = {
                "source": name,
                "n": n,
                "gold": mean_se([gold[i] for i in picks]),
                "win_rate": mean_se(wins),
                "proxy": mean_se([src_scores[i] for i in picks]),
                "length": mean_se(
                    [float(rows[i].get("n_tokens", len(str(rows[i]["response"]).split()))) for i in picks]
                ),
                "prompts": len(picks),
            }
            if extra is not None:
                per = [extra(rows[i]) for i in picks]
                for key in per[0] if per else {}:
                    res[key] = mean_se([p[key] for p in per])
            out.append(res)
    return out


# ------------------------------------------------------------------------------------------ sampling
def load_prompts(cfg: BonConfig, tokenizer: Any) -> tuple[list[Any], list[list[int]]]:
    """The prompts of ``cfg.prompts`` (as written in sample rows: a string for a single user turn, else the
    message list) and their token ids, rendered by the data layer as for training
    (:func:`imitalign.generate.kshot.load_prompt_set`). A prompt that leaves no room to generate
    ``max_new_tokens`` within ``max_length`` is an error (every prompt must get its N samples)."""
    from imitalign.generate.kshot import load_prompt_set

    ps = load_prompt_set(
        cfg.prompts,
        tokenizer,
        chat_template=cfg.chat_template,
        system_prompt=cfg.system_prompt,
        max_length=cfg.max_length,
        max_new_tokens=cfg.sampling.max_new_tokens,
    )
    if ps.dropped:
        raise ConfigError(
            f"{cfg.prompts.path}: {ps.dropped} prompts leave no room for max_new_tokens "
            f"{cfg.sampling.max_new_tokens} within max_length {cfg.max_length}"
        )
    return list(ps.prompts), [list(ids) for ids in ps.prompt_ids]


def draw(
    model_path: str,
    prompts: Sequence[Any],
    prompt_ids: Sequence[Sequence[int]],
    n: int,
    seed: int,
    sampling: SamplingConfig,
    *,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``n`` sample rows per prompt from ``model_path`` (contracts.md sample rows), ordered by prompt then
    sample index."""
    from transformers import AutoModelForCausalLM

    from imitalign.config import ModelConfig
    from imitalign.generate.sampler import sample, sample_rows
    from imitalign.model.load import from_pretrained, load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=model_path))
    model = from_pretrained(AutoModelForCausalLM, model_path).eval()
    samples = sample(
        model,
        tok,
        prompt_ids,
        n=n,
        seed=seed,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        batch_size=sampling.batch_size,
        progress=progress,
    )
    return sample_rows(prompts, samples)


def model_id(path: str) -> str:
    """A local model folder by the hash of its weights (a retrained folder is a different model), else the
    string itself (a hub id)."""
    try:
        return model_fingerprint(path) if Path(path).is_dir() else path
    except FileNotFoundError:
        return path


def candidates(cfg: BonConfig, *, progress: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``n_max`` candidates per prompt and the baseline samples, drawn once and cached in ``output_dir``."""
    from imitalign.config import ModelConfig
    from imitalign.model.load import load_tokenizer

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(ModelConfig(name_or_path=cfg.model))
    prompts, prompt_ids = load_prompts(cfg, tok)
    common = {"prompts": prompt_ids, "sampling": cfg.sampling.model_dump()}
    fp = settings_fingerprint(model=model_id(cfg.model), n=cfg.n_max, seed=cfg.seed, **common)
    rows = read_cached_rows(out / "samples.jsonl", fp)
    if rows is None:
        rows = draw(cfg.model, prompts, prompt_ids, cfg.n_max, cfg.seed, cfg.sampling, progress=progress)
        write_cached_rows(out / "samples.jsonl", rows, fp)
    base_model = cfg.baseline_model or cfg.model
    base_fp = settings_fingerprint(model=model_id(base_model), n=cfg.baseline_n, seed=cfg.seed + 7919, **common)
    base = read_cached_rows(out / "baseline.jsonl", base_fp)
    if base is None:
        base = draw(base_model, prompts, prompt_ids, cfg.baseline_n, cfg.seed + 7919, cfg.sampling, progress=progress)
        write_cached_rows(out / "baseline.jsonl", base, base_fp)
    return rows, base


def score_with(sources: dict[str, RewardSource], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Every source's scores of ``rows`` (checked: one finite float per row)."""
    plain = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    return {name: score_rows(src, plain) for name, src in sources.items()}


def run_bon(
    cfg: BonConfig,
    *,
    progress: bool = False,
    extra: Callable[[dict[str, Any]], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Sample (or reuse), score with every source and the judge, sweep N, write the files (module docstring)."""
    t0 = time.perf_counter()
    sources = {r.display_name(): load_reward(r) for r in cfg.rewards}  # fail on a bad reward before sampling
    judge = load_reward(cfg.gold)
    rows, base = candidates(cfg, progress=progress)
    t_sample = time.perf_counter() - t0
    scores = score_with(sources, rows)
    gold = score_rows(judge, [{"prompt": r["prompt"], "response": r["response"]} for r in rows])
    base_gold = score_rows(judge, [{"prompt": r["prompt"], "response": r["response"]} for r in base])
    baseline: dict[Any, list[float]] = {}
    for r, g in zip(base, base_gold, strict=True):
        baseline.setdefault(r["prompt_index"], []).append(g)
    for i, r in enumerate(rows):
        r["gold"] = gold[i]
        r["scores"] = {name: s[i] for name, s in scores.items()}
    out = Path(cfg.output_dir)
    write_cached_rows(out / "samples.scored.jsonl", rows)
    results = sweep(rows, scores, gold, baseline, cfg.grid(), extra=extra)
    summary = {
        "config": cfg.model_dump(mode="json"),
        "baseline_gold": mean_se(base_gold),
        "results": [{k: list(v) if isinstance(v, tuple) else v for k, v in r.items()} for r in results],
        "seconds": {"sampling": t_sample, "total": time.perf_counter() - t0},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "bon.md").write_text(markdown_table(results) + "\n")
    plot_curves({"": results}, out / "bon.png")
    return summary


# ------------------------------------------------------------------------------------------ reporting
def _cell(v: Any) -> str:
    if v is None:
        return "–"
    m, se = v
    return f"{m:.3f}" if se is None or (isinstance(se, float) and math.isnan(se)) else f"{m:.3f} ± {se:.3f}"


def markdown_table(results: Sequence[dict[str, Any]], columns: Sequence[str] = ("gold", "win_rate")) -> str:
    """Rows = sources, columns = N; each cell ``metric: mean ± se`` for each of ``columns``."""
    ns = sorted({r["n"] for r in results})
    names = list(dict.fromkeys(r["source"] for r in results))
    lines = []
    for col in columns:
        lines += [
            f"**{col}** (mean ± se over prompts)",
            "",
            "| source | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        for name in names:
            by_n = {r["n"]: r for r in results if r["source"] == name}
            lines.append(f"| {name} | " + " | ".join(_cell(by_n[n].get(col)) if n in by_n else "–" for n in ns) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(
    panels: dict[str, Sequence[dict[str, Any]]], path: Path, metrics: Sequence[str] = ("gold", "win_rate")
) -> Path:
    """One row of plots per panel (e.g. with / without style shift), one column per metric, one line per source
    against N (log₂ axis), with ±se error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(metrics), figsize=(5.5 * len(metrics), 3.8 * len(panels)), squeeze=False)
    for p, (title, results) in enumerate(panels.items()):
        names = list(dict.fromkeys(r["source"] for r in results))
        for m, metric in enumerate(metrics):
            ax = axes[p][m]
            for name in names:
                pts = sorted((r for r in results if r["source"] == name), key=lambda r: r["n"])
                ys = [r[metric][0] for r in pts]
                es = [0.0 if r[metric][1] is None or math.isnan(r[metric][1]) else r[metric][1] for r in pts]
                ax.errorbar([r["n"] for r in pts], ys, yerr=es, marker="o", capsize=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("N")
            ax.set_ylabel(
                {"gold": "gold reward of the pick", "win_rate": "win rate vs baseline samples"}.get(metric, metric)
            )
            if metric == "win_rate":
                ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{title} {metric}".strip())
            ax.grid(alpha=0.3)
        axes[p][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
