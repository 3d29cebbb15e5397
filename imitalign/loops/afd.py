"""AfD from a demonstration file: π_SFT (given or trained), the sampled classes as files, and the discriminators.

    imitalign afd train CONFIG.yaml [--set modes=[init_sft] ...]

Sun & van der Schaar (2024), METHODS.md §3. Steps, each writing ordinary files under ``output_dir`` and reusing what
a previous run of the same configuration finished:

1. **Demonstrations** (``demos``, any demonstration format of the data layer). Rows with an empty response are
   counted and skipped by the parser (``classes/summary.json`` → ``demos.skipped``). ``heldout_fraction`` of the
   distinct prompts (seeded) is held out; both classes of every discriminator use the same prompts in each split.
2. **π_SFT** = ``sft_model``, or π_init fine-tuned on the demonstrations with MLE (forward KL ``KL(d^β ‖ d^π)``)
   through the one training loop (``sft/``).
3. **Classes**: ``samples_per_prompt`` samples of π_init and of π_SFT for every demonstration row
   (``classes/init_samples.jsonl``, ``classes/sft_samples.jsonl``: sample rows plus ``"split"``), and per mode the
   labelled rows ``classes/<mode>/{train,eval}.jsonl`` = ``{"prompt", "response", "label"}``:

   ==============  ======================  =======================
   mode            label 1                 label 0
   ==============  ======================  =======================
   ``init_sft``    π_SFT samples           π_init samples
   ``init_demo``   demonstrations          π_init samples (first)
   ``sft_demo``    demonstrations          π_SFT samples (first)
   ==============  ======================  =======================

   (demonstration modes pair each demonstration with the first sample of its row, so the classes stay balanced).
   A sampled response that is empty (EOS at once) is kept in the sample file but skipped, counted, by the data
   layer when the discriminator trains (``disc_<mode>/data_report.json``).
4. **Discriminators**: objective ``discriminator_bce`` through the one loop, initialised from π_init's backbone with a
   fresh scalar head (``disc_<mode>/model``, with ``afd.json``); the reward is the logit ``z = log D − log(1 − D)``.
5. ``rewards.yaml``: reward configs for every discriminator and the closed form ``log π_SFT − log π_init`` (summed
   and per token), ready for ``imitalign bon``; ``summary.json``: counts and held-out accuracies.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from imitalign.config import ConfigError, DataSource, read_yaml_mapping, validate_config
from imitalign.generate.kshot import prompt_value
from imitalign.loops.bon import SamplingConfig, draw, model_id
from imitalign.loops.stages import read_cached_rows, settings_fingerprint, train_or_reuse, write_cached_rows
from imitalign.reward.discriminator import META_FILE, MODES

Mode = Literal["init_sft", "init_demo", "sft_demo"]


class TrainSpec(BaseModel):
    """The hyper-parameters of one training stage (everything else comes from the defaults of a run config)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lr: float = Field(3e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)
    max_steps: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1)


class AfdConfig(BaseModel):
    """AfD reward models from demonstrations (module docstring)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    demos: DataSource
    init_model: str
    sft_model: str | None = None
    modes: list[Mode] = Field(default_factory=lambda: ["init_sft", "init_demo", "sft_demo"], min_length=1)
    samples_per_prompt: int = Field(1, ge=1)
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    sft: TrainSpec = Field(default_factory=TrainSpec)
    discriminator: TrainSpec = Field(default_factory=lambda: TrainSpec(epochs=2.0, batch_size=32))
    chat_template: str = "auto"
    system_prompt: str | None = None
    max_length: int = Field(1024, ge=2)
    output_dir: str = "runs/afd"


def load_afd_config(path: str | Path | None, overrides: list[str] | None = None, raw: dict | None = None) -> AfdConfig:
    """Read a YAML AfD config (or a dict), apply ``--set`` overrides and validate (clear errors)."""
    source = str(path) if path is not None else "<dict>"
    if raw is None:
        raw = read_yaml_mapping(str(path), "demos, init_model, modes, ...")
    return validate_config(AfdConfig, raw, overrides, source)


def _say(msg: str) -> None:
    print(f"[afd] {msg}", flush=True)


def run_config(
    out: Path,
    model: dict[str, Any],
    data: dict[str, Any],
    objective: str,
    spec: TrainSpec,
    seed: int,
    *,
    chat_template: str,
    max_length: int,
    system_prompt: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """A run config for one stage, built by the quickstart's helper (the same defaults: cosine, warm-up 0.1,
    clipping 1.0) with this pipeline's rendering."""
    from imitalign.gym.base import gym_run_config

    train_kw: dict[str, Any] = {"lr": spec.lr, "epochs": spec.epochs, "batch_size": spec.batch_size}
    if spec.max_steps is not None:
        train_kw["max_steps"] = spec.max_steps
    if spec.eval_every is not None:
        train_kw["eval_every"] = spec.eval_every
    if spec.num_threads is not None:
        train_kw["num_threads"] = spec.num_threads
    data = {"chat_template": chat_template, "max_length": max_length, "system_prompt": system_prompt, **data}
    return gym_run_config(out, model, data, objective, options or {}, train_kw, seed)


# ------------------------------------------------------------------------------------------ demonstrations
def read_demos(cfg: AfdConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Demonstration rows ``{"prompt", "response", "split"}`` (empty responses skipped and counted) and the
    parse counts. ``split`` is ``"eval"`` for rows whose prompt falls in the seeded held-out share."""
    from imitalign.data.dataset import read_records
    from imitalign.data.records import DataError, DemonstrationRecord

    records, stats = read_records(cfg.demos, kind="demonstration")
    demos = [r for r in records if isinstance(r, DemonstrationRecord)]
    if len(demos) != len(records):
        raise DataError(f"{cfg.demos.path}: AfD needs demonstrations (prompt, response), found other rows")
    if not demos:
        raise DataError(f"{cfg.demos.path}: no usable demonstrations\n{stats.summary()}")
    keys = list(dict.fromkeys(json.dumps(r.prompt, sort_keys=True) for r in demos))
    random.Random(f"{cfg.seed}:afd-split").shuffle(keys)
    n_eval = round(cfg.heldout_fraction * len(keys))
    if cfg.heldout_fraction > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= len(keys) and n_eval > 0:
        raise DataError(
            f"{cfg.demos.path}: {len(keys)} distinct prompts are too few to hold out {cfg.heldout_fraction}"
        )
    held = set(keys[:n_eval])
    rows = [
        {
            "prompt": prompt_value(r.prompt),
            "response": r.response,
            "split": "eval" if json.dumps(r.prompt, sort_keys=True) in held else "train",
            "source": r.source,
        }
        for r in demos
    ]
    counts = {
        "rows_read": stats.rows_read,
        "used": len(rows),
        "skipped": dict(stats.skipped),
        "eval_rows": sum(r["split"] == "eval" for r in rows),
    }
    if stats.skipped:
        _say(f"demonstrations: {stats.summary()}")
    return rows, counts


def _prompt_ids(cfg: AfdConfig, model_path: str, rows: list[dict[str, Any]]) -> list[list[int]]:
    from imitalign.config import ModelConfig
    from imitalign.data.records import PromptRecord
    from imitalign.data.templates import Renderer
    from imitalign.data.tokenize import tokenize_records
    from imitalign.model.load import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=model_path))
    renderer = Renderer(tok, cfg.chat_template, cfg.system_prompt)
    records = [
        PromptRecord(
            [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"], r["source"], {}
        )
        for r in rows
    ]
    out = []
    for rec, (example, note) in zip(
        records, tokenize_records(records, "prompt", tok, renderer, cfg.max_length), strict=True
    ):
        if example is None:
            raise ConfigError(f"{rec.source}: the prompt does not fit max_length {cfg.max_length} ({note.dropped})")
        out.append(list(example.prompt_ids))
    return out


# ------------------------------------------------------------------------------------------ stages
def _train_stage(cfg: AfdConfig, name: str, data: dict[str, Any], objective: str, spec: TrainSpec) -> dict[str, Any]:
    """Train (or reuse) ``objective`` from π_init on ``data`` in ``output_dir/<name>``; the run summary."""
    run = run_config(
        Path(cfg.output_dir) / name,
        {"name_or_path": cfg.init_model},
        data,
        objective,
        spec,
        cfg.seed,
        chat_template=cfg.chat_template,
        max_length=cfg.max_length,
        system_prompt=cfg.system_prompt,
    )
    return train_or_reuse(run, say=_say)


def sft_policy(cfg: AfdConfig, *, quiet: bool = False) -> str:
    """π_SFT: ``cfg.sft_model``, or π_init fine-tuned on the demonstrations (MLE) in ``output_dir/sft``."""
    if cfg.sft_model:
        return cfg.sft_model
    summary = _train_stage(cfg, "sft", {"train": cfg.demos.model_dump(), "eval_fraction": 0.0}, "mle", cfg.sft)
    return str(summary["model_dir"])


def sample_class(
    cfg: AfdConfig, model_path: str, rows: list[dict[str, Any]], path: Path, seed: int, *, progress: bool = False
) -> list[dict[str, Any]]:
    """``samples_per_prompt`` samples of ``model_path`` for every demonstration row (prompt index = row index),
    written to ``path`` with each row's ``split``; reused when ``path`` holds them for the same setup."""
    fp = settings_fingerprint(
        model=model_id(model_path),
        prompts=[r["prompt"] for r in rows],
        n=cfg.samples_per_prompt,
        seed=seed,
        sampling=cfg.sampling.model_dump(),
        chat_template=cfg.chat_template,
    )
    cached = read_cached_rows(path, fp)
    if cached is not None:
        return cached
    samples = draw(
        model_path,
        [r["prompt"] for r in rows],
        _prompt_ids(cfg, model_path, rows),
        cfg.samples_per_prompt,
        seed,
        cfg.sampling,
        progress=progress,
    )
    for s in samples:
        s["split"] = rows[s["prompt_index"]]["split"]
    write_cached_rows(path, samples, fp)
    return samples


def labelled(
    mode: str, demos: list[dict[str, Any]], init: list[dict[str, Any]], sft: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """The labelled rows of ``mode`` per split: ``{"train": [...], "eval": [...]}`` of ``{"prompt", "response",
    "label", "class"}`` (module docstring: demonstration modes take each row's first sample)."""
    pools = {"demo": demos, "init": init, "sft": sft}
    positive, negative = MODES[mode]
    out: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for label, name in ((1, positive), (0, negative)):
        rows = pools[name]
        if name != "demo" and "demo" in (positive, negative):
            rows = [r for r in rows if r.get("sample_idx", 0) == 0]
        for r in rows:
            out[r["split"]].append({"prompt": r["prompt"], "response": r["response"], "label": label, "class": name})
    return out


def train_discriminator(cfg: AfdConfig, mode: str, files: dict[str, Path], *, quiet: bool = False) -> dict[str, Any]:
    """Train the ``mode`` discriminator (objective ``discriminator_bce``) on its class files; returns the run
    summary with ``model_dir``. Writes ``afd.json`` into the model folder."""
    data: dict[str, Any] = {"train": {"path": str(files["train"]), "format": "demonstration"}}
    if files.get("eval") is not None:
        data["eval"] = {"path": str(files["eval"]), "format": "demonstration"}
    summary = _train_stage(cfg, f"disc_{mode}", data, "discriminator_bce", cfg.discriminator)
    positive, negative = MODES[mode]
    meta = {
        "reward": "discriminator",
        "mode": mode,
        "positives": positive,
        "negatives": negative,
        "init_model": cfg.init_model,
        "demos": cfg.demos.path,
        "objective": "discriminator_bce",
    }
    (Path(summary["model_dir"]) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return summary


def run_afd(cfg: AfdConfig, *, progress: bool = False) -> dict[str, Any]:
    """Steps 1–5 of the module docstring; returns (and writes) the summary."""
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    classes = out / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    demos, demo_counts = read_demos(cfg)
    write_cached_rows(classes / "demos.jsonl", demos)
    sft = sft_policy(cfg)
    need = {c for m in cfg.modes for c in MODES[m]}
    init_rows = (
        sample_class(cfg, cfg.init_model, demos, classes / "init_samples.jsonl", cfg.seed + 1, progress=progress)
        if "init" in need
        else []
    )
    sft_rows = (
        sample_class(cfg, sft, demos, classes / "sft_samples.jsonl", cfg.seed + 2, progress=progress)
        if "sft" in need
        else []
    )
    empty = {
        name: sum(not r["response"].strip() for r in rows) for name, rows in (("init", init_rows), ("sft", sft_rows))
    }
    summary: dict[str, Any] = {"demos": demo_counts, "sft_model": sft, "empty_samples": empty, "modes": {}}
    rewards: list[dict[str, Any]] = []
    for mode in cfg.modes:
        parts = labelled(mode, demos, init_rows, sft_rows)
        files: dict[str, Any] = {}
        for split, rows in parts.items():
            path = classes / mode / f"{split}.jsonl"
            if rows:
                write_cached_rows(path, rows)
                files[split] = path
            else:
                files[split] = None
        run = train_discriminator(cfg, mode, files)
        counts = {split: dict(Counter(r["label"] for r in rows)) for split, rows in parts.items()}
        summary["modes"][mode] = {
            "model_dir": run["model_dir"],
            "classes": counts,
            "eval": run.get("eval", {}),
            "train": run.get("train", {}),
        }
        acc = run.get("eval", {}).get("accuracy")
        _say(
            f"{mode}: discriminator {run['model_dir']}" + (f", held-out accuracy {acc:.3f}" if acc is not None else "")
        )
        rewards.append(
            {
                "kind": "discriminator",
                "path": run["model_dir"],
                "name": mode.replace("_", "-"),
                "chat_template": cfg.chat_template,
                "max_length": cfg.max_length,
            }
        )
    for norm in (False, True):
        rewards.append(
            {
                "kind": "closed_form",
                "path": sft,
                "reference": cfg.init_model,
                "length_normalize": norm,
                "name": "closed-form" + ("/token" if norm else ""),
                "chat_template": cfg.chat_template,
                "max_length": cfg.max_length,
            }
        )
    (out / "rewards.yaml").write_text(yaml.safe_dump({"rewards": rewards}, sort_keys=False))
    summary["rewards"] = rewards
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
