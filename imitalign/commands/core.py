"""The core commands: ``imitalign train``, ``data preview``, ``objectives``, ``quickstart``."""

from __future__ import annotations

from typing import Annotated

import typer

from imitalign.commands.app import OverwriteOpt, SetOpt, app, data_app, friendly, setup_logging


@app.command()
@friendly
def train(
    config: Annotated[str, typer.Argument(help="YAML config of the run")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a policy with any objective (DPO, DIL, IPO, SimPO, MLE, IQLearn, ...)."""
    from imitalign.config import load_config
    from imitalign.runs import owned, train_fingerprint
    from imitalign.train.loop import train as run_train

    setup_logging()
    cfg = load_config(config, set_ or [])
    with owned(cfg.run.output_dir, "train", train_fingerprint(cfg), overwrite=overwrite):
        result = run_train(cfg, resume=resume)
    typer.echo(f"done in {result.seconds:.1f}s, {result.steps} steps; model saved to {result.model_dir}")
    if result.eval_metrics:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.eval_metrics.items()))
        typer.echo(f"eval: {shown}")


@data_app.command("preview")
@friendly
def data_preview(
    config: Annotated[str, typer.Argument(help="YAML config of the run")],
    n: Annotated[int, typer.Option("-n", help="examples to show")] = 3,
    set_: SetOpt = None,
) -> None:
    """Render the first examples with the prompt/response boundary, and the truncation/drop counts."""
    from imitalign.config import load_config
    from imitalign.data.preview import preview
    from imitalign.model.load import load_tokenizer
    from imitalign.train.kinds import data_kind

    cfg = load_config(config, set_ or [])
    kind = data_kind(cfg.objective.name)
    typer.echo(preview(cfg.data, load_tokenizer(cfg.model), kind, n=n))


@app.command("objectives")
def list_objectives() -> None:
    """List the registered objectives, their kind and default options."""
    from imitalign import objectives

    for name in objectives.names():
        spec = objectives.get(name)
        opts = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        typer.echo(f"{name:16s} {spec.kind:12s} {spec.doc}\n{'':29s}options: {opts or '-'}")


@app.command()
@friendly
def quickstart(
    fast: Annotated[bool, typer.Option("--fast", help="a smaller version (CI)")] = False,
    seeds: Annotated[int, typer.Option("--seeds", help="repeat with this many seeds; report mean ± se")] = 1,
    out: Annotated[str, typer.Option("--out", help="run folder")] = "runs/quickstart",
) -> None:
    """Build the gym, train SFT, DPO, IPO, DIL-LSIF/UKL/BCE, MLE and IQLearn, evaluate, report."""
    from imitalign.experiments.quickstart import run_quickstart
    from imitalign.runs import owned

    setup_logging()
    with owned(out, "quickstart"):
        run_quickstart(out, fast=fast, seeds=seeds)
