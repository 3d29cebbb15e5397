"""CLI commands of learning from demonstrations (AfD reward models, best-of-N, IQLearn extras).

imitalign bon CONFIG.yaml [--set n_max=64]             best-of-N sweep per reward source (table + plot)
imitalign afd train CONFIG.yaml [--set modes=[init_sft]] π_SFT, sampled classes, AfD discriminators
imitalign afd gym-sft | gym-bon | gym-distill | gym-selfplay [--seeds N] [--out DIR]   gym experiments
imitalign afd gym-sft | gym-bon --styles sorted                  demonstrations in the sorted (order) style
imitalign iqlearn gym-frontier [--seeds N] [--lams 0,0.1,0.3,1] [--alphas 0.1]         λ sweep, reward, α
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from imitalign.commands.app import OverwriteOpt, SetOpt, app, friendly, setup_logging

afd_app = typer.Typer(no_args_is_help=True, help="Alignment from demonstrations: AfD reward models and experiments.")
iq_app = typer.Typer(no_args_is_help=True, help="IQLearn extras: the λ/α frontier and the recovered reward.")
app.add_typer(afd_app, name="afd")
app.add_typer(iq_app, name="iqlearn")

OutOpt = Annotated[str, typer.Option("--out", help="experiment folder (stages are reused when unchanged)")]
SeedsOpt = Annotated[int, typer.Option("--seeds", min=1, help="repeat with seeds 0..N-1; mean ± se over seeds")]


def _styles(text: str) -> list[str]:
    """The demonstration styles of ``--styles`` (comma-separated; each once, at least one)."""
    from imitalign.experiments.common import STYLES

    chosen = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STYLES]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise typer.BadParameter(f"--styles takes distinct names among {', '.join(STYLES)}, got {text!r}")
    return chosen


StylesOpt = Annotated[
    str,
    typer.Option(
        "--styles",
        help="demonstration styles, comma-separated: plain, style (style words), sorted (content words in "
        "alphabetical order); other than plain/style the tables are written as <name>_<styles>.md",
    ),
]


def _own(out: str, command: str) -> Any:
    """The gym experiments share their ``--out`` folder (stages reused across commands): one at a time."""
    from imitalign.runs import owned

    return owned(out, command)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@app.command()
@friendly
def bon(
    config: Annotated[str, typer.Argument(help="YAML best-of-N config (imitalign.loops.bon.BonConfig)")],
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Best-of-N: N_max samples per prompt drawn once, picked by each reward source for N = 1, 2, 4, …;
    gold reward and win rate against the base model's samples, with standard errors (bon.md, bon.png)."""
    from pathlib import Path

    from imitalign.loops.bon import load_bon_config, markdown_table, run_bon
    from imitalign.runs import fingerprint_of, owned

    setup_logging()
    cfg = load_bon_config(config, set_ or [])
    with owned(cfg.output_dir, "bon", fingerprint_of(cfg.model_dump(mode="json"), {"output_dir"}), overwrite=overwrite):
        summary = run_bon(cfg, progress=True)
    typer.echo(
        markdown_table([{**r, "gold": tuple(r["gold"]), "win_rate": tuple(r["win_rate"])} for r in summary["results"]])
    )
    typer.echo(f"written to {Path(cfg.output_dir).resolve()} (bon.md, bon.png, results.json)")


@afd_app.command("train")
@friendly
def afd_train(
    config: Annotated[str, typer.Argument(help="YAML AfD config (imitalign.loops.afd.AfdConfig)")],
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """π_SFT (given or trained on the demonstrations), the sampled classes as files, and one discriminator per
    mode (init_sft, init_demo, sft_demo) trained with discriminator_bce; writes rewards.yaml for `imitalign bon`."""
    from imitalign.loops.afd import load_afd_config, run_afd
    from imitalign.runs import fingerprint_of, owned

    setup_logging()
    cfg = load_afd_config(config, set_ or [])
    with owned(cfg.output_dir, "afd", fingerprint_of(cfg.model_dump(mode="json"), {"output_dir"}), overwrite=overwrite):
        summary = run_afd(cfg, progress=True)
    for mode, info in summary["modes"].items():
        acc = info.get("eval", {}).get("accuracy")
        typer.echo(f"{mode}: {info['model_dir']}" + (f" (held-out accuracy {acc:.3f})" if acc is not None else ""))
    typer.echo(f"demonstrations: {summary['demos']}")


@afd_app.command("gym-sft")
@friendly
def gym_sft(out: OutOpt = "runs/afd_gym", seeds: SeedsOpt = 1, styles: StylesOpt = "plain,style") -> None:
    """SFT on the gym's expert demonstrations (plain and style-shifted) vs the demonstrator's gold reward."""
    from imitalign.experiments.afd_sft import exp_sft

    chosen = _styles(styles)
    with _own(out, "afd gym-sft"):
        exp_sft(out, seeds=seeds, styles=chosen)


@afd_app.command("gym-bon")
@friendly
def gym_bon(
    out: OutOpt = "runs/afd_gym",
    seeds: SeedsOpt = 1,
    styles: StylesOpt = "plain,style",
) -> None:
    """Best-of-N curves per reward source (AfD discriminators, closed form, oracle), with and without the style
    shift: afd_bon.md, afd_bon.png (--styles sorted: afd_bon_sorted.md, with the order share of the picks)."""
    from imitalign.experiments.afd_bon import exp_bon

    chosen = _styles(styles)
    with _own(out, "afd gym-bon"):
        exp_bon(out, seeds=seeds, styles=chosen)


@afd_app.command("gym-distill")
@friendly
def gym_distill(
    out: OutOpt = "runs/afd_gym",
    seeds: SeedsOpt = 1,
    n: Annotated[int, typer.Option("--n", min=2, help="best-of-N used for distillation")] = 8,
    rounds: Annotated[int, typer.Option(min=1, help="rounds of the iterated (best vs worst) loop")] = 2,
) -> None:
    """Distilling best-of-N into the policy (SFT on winners; DPO on best-vs-worst pairs scored by the init-SFT
    discriminator, iterated) vs reranking at the same N."""
    from imitalign.experiments.afd_distill import exp_distill

    with _own(out, "afd gym-distill"):
        exp_distill(out, seeds=seeds, n=n, rounds=rounds)


@afd_app.command("gym-selfplay")
@friendly
def gym_selfplay(
    out: OutOpt = "runs/afd_gym",
    seeds: SeedsOpt = 1,
    rounds: Annotated[int, typer.Option(min=1, help="self-play rounds")] = 2,
) -> None:
    """SPIN (DPO, demonstration vs own sample, reference = previous iterate) and GSIL (DIL-BCE on the same pairs)
    vs SFT on the demonstrations."""
    from imitalign.experiments.afd_selfplay import exp_selfplay

    with _own(out, "afd gym-selfplay"):
        exp_selfplay(out, seeds=seeds, rounds=rounds)


@iq_app.command("gym-frontier")
@friendly
def gym_frontier(
    out: OutOpt = "runs/afd_gym",
    seeds: SeedsOpt = 1,
    lams: Annotated[str, typer.Option(help="λ values (0 = MLE)")] = "0,0.1,0.3,1",
    alphas: Annotated[str, typer.Option(help="online α values (own samples of π_init) for λ = the 2nd λ")] = "0.2",
) -> None:
    """IQLearn on the gym's demonstrations: gold reward against diversity (Self-BLEU, distinct-n) and training
    cost per step for each λ (and online α); rank correlation of the recovered reward with gold vs MLE's."""
    from imitalign.experiments.iqlearn_frontier import exp_iqlearn

    with _own(out, "iqlearn gym-frontier"):
        exp_iqlearn(out, seeds=seeds, lams=_floats(lams), alphas=_floats(alphas))
