"""CLI commands of evaluation and the gym: ``imitalign eval``, ``imitalign sample``, ``imitalign gym build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from imitalign.commands import online
from imitalign.commands.app import app, friendly

gym_app = typer.Typer(no_args_is_help=True, help="The gym: a ground-truth alignment task on a CPU.")
app.add_typer(gym_app, name="gym")

# `imitalign sample` is the K-sample generator under the name the gym's docs use
app.command("sample", help="Sample K responses per prompt from a model folder into a JSONL (alias of generate).")(
    online.generate
)


def _load_lm(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from imitalign.config import ModelConfig
    from imitalign.model.load import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(ModelConfig(name_or_path=path))


@app.command("eval")
@friendly
def evaluate(
    model: Annotated[str, typer.Argument(help="model folder (or hub id) to evaluate")],
    prompts: Annotated[str, typer.Option("--prompts", help="prompt file (any row format with a prompt)")],
    reward: Annotated[str, typer.Option("--reward", help="reward kind (gold, bradley_terry, function, ...)")] = "gold",
    reward_path: Annotated[str | None, typer.Option("--reward-path", help="reward model folder")] = None,
    reward_function: Annotated[str | None, typer.Option("--reward-function", help="package.module:function")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="model for KL(π‖π_ref)")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="model to compute the win rate against")] = None,
    pairs: Annotated[
        str | None, typer.Option("--pairs", help="held-out preference pairs: win rate vs chosen, likelihoods")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="samples per prompt")] = 4,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    temperature: Annotated[float, typer.Option(help="sampling temperature (KL needs 1)")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 64,
    chat_template: Annotated[str, typer.Option(help="auto | none | a template name or path")] = "auto",
    limit: Annotated[int | None, typer.Option(help="first N prompts only")] = None,
    out: Annotated[str | None, typer.Option("--out", help="write the full results (JSON) here")] = None,
) -> None:
    """Sample from a model and report gold/judge reward, win rates, KL, diversity, length and held-out
    likelihoods, with standard errors over prompts (METHODS.md §6)."""
    from imitalign.config import DataSource
    from imitalign.data.jsonl import read_jsonl
    from imitalign.eval.evaluate import evaluate_model, format_table
    from imitalign.generate.kshot import load_prompt_set
    from imitalign.reward.base import load_reward, score_rows

    source = load_reward({"kind": reward, "path": reward_path, "function": reward_function})
    policy, tok = _load_lm(model)
    prompt_set = load_prompt_set(
        DataSource(path=prompts, limit=limit), tok, chat_template=chat_template, max_new_tokens=max_new_tokens
    )
    kw = dict(
        n=n,
        seed=seed,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        prompt_ids=prompt_set.prompt_ids,
        progress=True,
    )

    def reward_fn(rows: list[dict]) -> list[float]:
        return score_rows(source, rows)

    rows: list[dict] = []
    baseline_scores = None
    if baseline is not None:
        base_model, base_tok = _load_lm(baseline)
        base = evaluate_model(base_model, base_tok, prompt_set.prompts, reward_fn=reward_fn, **kw)
        base["name"] = f"baseline ({baseline})"
        baseline_scores = base["per_sample"]["score"]
        rows.append(base)
    held, chosen_scores = None, None
    if pairs is not None:
        held = read_jsonl(pairs)
        by_prompt = {json.dumps(p["prompt"]): p for p in held}
        if all(json.dumps(p) in by_prompt for p in prompt_set.prompts):
            chosen = [{"prompt": p, "response": by_prompt[json.dumps(p)]["chosen"]} for p in prompt_set.prompts]
            chosen_scores = reward_fn(chosen)
    ref_model = _load_lm(reference)[0] if reference is not None else None
    result = evaluate_model(
        policy,
        tok,
        prompt_set.prompts,
        reward_fn=reward_fn,
        reference_model=ref_model,
        baseline_scores=baseline_scores,
        chosen_scores=chosen_scores,
        heldout_pairs=held,
        **kw,
    )
    result["name"] = model
    rows.append(result)
    typer.echo(format_table(rows))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows if baseline else result, indent=2))
        typer.echo(f"results → {out}")


@gym_app.command("build")
@friendly
def gym_build(
    out: Annotated[
        str, typer.Option("--out", help="root folder; the build goes to <out>/gym-<fingerprint>")
    ] = "runs/gym",
    seed: Annotated[int, typer.Option(help="the gym's seed")] = 0,
    n_sft: Annotated[int, typer.Option(help="base-process demonstrations (SFT/pretraining data)")] = 20_000,
    n_expert: Annotated[int, typer.Option(help="expert demonstrations")] = 2_000,
    label_noise: Annotated[float, typer.Option(help="flip probability of Bradley–Terry labels")] = 0.0,
) -> None:
    """Write the gym's datasets (SFT, expert and style-shifted expert demonstrations, prompt sets, tokenizer)."""
    from imitalign.gym.build import GymConfig, build_gym, gym_dir

    cfg = GymConfig(seed=seed, n_sft=n_sft, n_expert=n_expert, label_noise=label_noise)
    files = build_gym(cfg, gym_dir(out, cfg))
    manifest = json.loads(files.manifest.read_text())
    typer.echo(f"gym at {files.root}")
    typer.echo(json.dumps({"counts": manifest["counts"], "gold": manifest["gold"]}, indent=2))
