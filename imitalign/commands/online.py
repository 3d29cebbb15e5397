"""CLI commands of the online loops (K-sample generation, reward scoring, pairing, iterative preference learning,
multi-step rejection sampling).

    imitalign generate MODEL PROMPTS.jsonl --k 4 --out samples.jsonl     (also under accelerate launch)
    imitalign score SAMPLES.jsonl --kind gold --out scored.jsonl         (or --reward reward.yaml, --function m:f)
    imitalign pairs SCORED.jsonl --mode max_min --out pairs.jsonl
    imitalign iterate CONFIG.yaml [--set rounds=2]
    imitalign rejection CONFIG.yaml                                      (iterate with a rejection section)
    imitalign iterate-summary runs/online/*/seed*                        (mean ± se over seeds, per arm)
    imitalign iterate-stage RUN/iterate_config.yaml --stage S --round T  (one stage as its own job; see launch:)
"""

from __future__ import annotations

from typing import Annotated

import typer

from imitalign.commands.app import OverwriteOpt, SetOpt, app, friendly, setup_logging


@app.command()
@friendly
def generate(
    model: Annotated[str, typer.Argument(help="model folder or hub id")],
    prompts: Annotated[str, typer.Argument(help="prompt file (any row format with a prompt)")],
    out: Annotated[str, typer.Option("--out", help="samples JSONL to write")],
    k: Annotated[int, typer.Option("--k", help="samples per prompt")] = 4,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 64,
    batch_size: Annotated[int, typer.Option(help="rows per generate call")] = 32,
    seed: Annotated[int, typer.Option(help="row seeds are hashes of (seed, prompt, sample)")] = 0,
    backend: Annotated[str, typer.Option(help="transformers | vllm | auto")] = "transformers",
    chat_template: Annotated[str, typer.Option(help="auto | none | a template name or path")] = "auto",
    max_length: Annotated[int, typer.Option(help="prompt + response tokens at most")] = 1024,
    limit: Annotated[int | None, typer.Option(help="first N prompt rows only")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="vllm: GPUs (processes) per engine")] = 1,
) -> None:
    """K samples per prompt (exactly K for every prompt, also sharded under accelerate launch: one vLLM engine per
    process, or per tensor_parallel_size processes)."""
    from imitalign.config import DataSource, ModelConfig
    from imitalign.generate.kshot import generate_k, load_prompt_set
    from imitalign.model.load import load_tokenizer
    from imitalign.processes import is_main

    setup_logging()
    tok = load_tokenizer(ModelConfig(name_or_path=model))
    prompt_set = load_prompt_set(
        DataSource(path=prompts, limit=limit),
        tok,
        chat_template=chat_template,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
    )
    stats = generate_k(
        model,
        prompt_set,
        out,
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        backend=backend,
        progress=True,
        tensor_parallel_size=tensor_parallel_size,
    )
    if is_main():
        typer.echo(
            f"{stats.samples} samples of {stats.prompts} prompts ({stats.processes} processes, {stats.backend}) "
            f"→ {out}; {stats.tokens} tokens in {stats.seconds:.1f}s ({stats.tokens_per_s:.0f} tokens/s)"
        )


@app.command()
@friendly
def score(
    samples: Annotated[str, typer.Argument(help="samples JSONL ({prompt, response, ...} rows)")],
    out: Annotated[str, typer.Option("--out", help="JSONL to write: the same rows with a score column")],
    reward: Annotated[str | None, typer.Option("--reward", help="YAML file of a reward config")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="reward kind (gold, bradley_terry, ...)")] = None,
    path: Annotated[str | None, typer.Option("--path", help="reward model folder")] = None,
    function: Annotated[str | None, typer.Option("--function", help="package.module:function")] = None,
    k: Annotated[int | None, typer.Option("--k", help="check exactly K samples per prompt first")] = None,
    column: Annotated[str, typer.Option(help="name of the added column")] = "score",
    set_: SetOpt = None,
) -> None:
    """Add a score column to a samples file with any reward source; every other column is kept."""
    import yaml

    from imitalign.config import ConfigError, apply_overrides
    from imitalign.loops.scoring import score_file
    from imitalign.reward import load_reward

    setup_logging()
    raw: dict = {}
    if reward:
        raw = yaml.safe_load(open(reward).read()) or {}
        raw = raw.get("reward", raw)
    for key, value in (("kind", kind), ("path", path), ("function", function)):
        if value is not None:
            raw[key] = value
    if "kind" not in raw:
        raw["kind"] = "function" if function else None
    if raw["kind"] is None:
        raise ConfigError("give a reward: --kind gold | bradley_terry | ..., --function m:f, or --reward file.yaml")
    raw = apply_overrides(raw, set_ or [])
    source = load_reward(raw)
    score_file(samples, out, source, k=k, column=column)
    typer.echo(f"scored {samples} with {source.name} → {out}")


@app.command()
@friendly
def pairs(
    scored: Annotated[str, typer.Argument(help="scored samples JSONL")],
    out: Annotated[str, typer.Option("--out", help="preference pairs JSONL to write")],
    mode: Annotated[str, typer.Option(help="max_min | max_random | random")] = "max_min",
    length_penalty: Annotated[float, typer.Option(help="pair on score − α·tokens")] = 0.0,
    tie_eps: Annotated[float, typer.Option(help="drop pairs whose scores differ by at most this")] = 1e-6,
    seed: Annotated[int, typer.Option(help="seed of the random pairings")] = 0,
) -> None:
    """Preference pairs (one per prompt) from scored samples; ties and empty responses dropped and counted."""
    from imitalign.loops.pairs import make_pairs
    from imitalign.loops.scoring import read_rows, write_rows

    made, stats = make_pairs(read_rows(scored), mode=mode, length_penalty=length_penalty, tie_eps=tie_eps, seed=seed)
    write_rows(out, made)
    typer.echo(f"{stats.summary()} → {out}")


def _iterate(config: str, set_: list[str] | None, need_rejection: bool, overwrite: bool) -> None:
    from imitalign.config import ConfigError
    from imitalign.loops.iterate import read_iterate_config, resolve_config, run_iterate
    from imitalign.processes import is_main, process_count
    from imitalign.runs import WHERE, fingerprint_of, owned

    setup_logging()
    raw = read_iterate_config(config, set_ or [])
    if need_rejection and not raw.get("rejection"):
        raise ConfigError(f"{config}: `imitalign rejection` needs a rejection section (etas, acceptance, form)")
    if raw.get("gym") and process_count() > 1:
        raise ConfigError(
            f"{config}: a gym section builds the gym, its SFT model and reward model, which runs in one process: "
            "run gym configs without accelerate launch, or give model and data paths instead of ${gym.*}"
        )
    cfg = resolve_config(raw, config)
    command = "rejection" if need_rejection else "iterate"
    with owned(cfg.run.output_dir, command, fingerprint_of(cfg.model_dump(mode="json"), WHERE), overwrite=overwrite):
        result = run_iterate(cfg, quiet=False)
    if is_main():
        typer.echo(f"report: {result.report}")


@app.command()
@friendly
def iterate(
    config: Annotated[str, typer.Argument(help="YAML config of the loop")],
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Online iterative preference learning (sample K, score, pair, train; T rounds); resumes where it stopped."""
    _iterate(config, set_, need_rejection=False, overwrite=overwrite)


@app.command()
@friendly
def rejection(
    config: Annotated[str, typer.Argument(help="YAML config with a rejection section")],
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Multi-step rejection sampling toward π_0·exp(r/η) (statistical or best-of-n; SFT or RSO form)."""
    _iterate(config, set_, need_rejection=True, overwrite=overwrite)


@app.command("iterate-stage")
@friendly
def iterate_stage(
    config: Annotated[str, typer.Argument(help="the run's saved iterate_config.yaml")],
    stage: Annotated[str, typer.Option("--stage", help="generate | score | train")],
    round_: Annotated[int, typer.Option("--round", help="the round (1..T)")],
    model: Annotated[str | None, typer.Option(help="generate: the sampling policy π_{t-1}")] = None,
    init: Annotated[str | None, typer.Option(help="train: the starting model")] = None,
    reference: Annotated[str | None, typer.Option(help="train: the reference model")] = None,
    data: Annotated[str | None, typer.Option(help="train: the round's training file")] = None,
) -> None:
    """One stage of one round of an iterate run, as its own job (what a ``launch:`` entry runs under accelerate
    launch); reads and writes the round's files."""
    from imitalign.loops.stage_jobs import run_stage

    setup_logging()
    run_stage(config, stage, round_, model=model, init=init, reference=reference, data=data)


@app.command("iterate-summary")
@friendly
def iterate_summary(
    runs: Annotated[list[str], typer.Argument(help="run folders of imitalign iterate (seeds of arms)")],
    out: Annotated[str | None, typer.Option("--out", help="also write the table to this Markdown file")] = None,
) -> None:
    """One row per arm (run.name): last-round eval reward, win rate, KL, length as mean ± se over seeds."""
    from pathlib import Path

    from imitalign.loops.iterate import summarize_runs

    table, _ = summarize_runs(runs)
    typer.echo(table)
    if out:
        Path(out).write_text(table + "\n")
