"""The ``imitalign`` command.

    imitalign train CONFIG.yaml [--set train.lr=1e-6 ...] [--resume]
    imitalign data preview CONFIG.yaml [-n 3]
    imitalign objectives
    imitalign quickstart [--fast] [--seeds 3]
    imitalign sample / eval / gym ...   (see --help of each)

Errors in configs and data are printed as one clear message (file, line, field) with exit code 2;
``IMITALIGN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Align language models as imitation learning.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect data as the trainer will see it.")
app.add_typer(data_app, name="data")

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: --set train.lr=1e-6")]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors (config, data, training) into a one-message exit instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from imitalign.config import ConfigError
        from imitalign.data.records import DataError
        from imitalign.train.loop import TrainingError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, TrainingError, ValueError, FileNotFoundError) as e:
            if os.environ.get("IMITALIGN_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def setup_logging() -> None:
    """Log INFO to stderr for a command (quiet third-party loggers; no progress bars when stderr is a file)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not sys.stderr.isatty():  # no redraw-per-update bars in log files
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@app.command()
@friendly
def train(
    config: Annotated[str, typer.Argument(help="YAML config of the run")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint")] = False,
) -> None:
    """Train a policy with any objective (DPO, DIL, IPO, SimPO, MLE, IQLearn, ...)."""
    from imitalign.config import load_config
    from imitalign.train.loop import train as run_train

    setup_logging()
    cfg = load_config(config, set_ or [])
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
    from imitalign.gym.quickstart import run_quickstart

    setup_logging()
    run_quickstart(out, fast=fast, seeds=seeds)


def _register_command_groups() -> None:
    from imitalign.commands import afd, evaluate, online  # noqa: F401 - importing registers their commands


_register_command_groups()


def main() -> None:
    app()


if __name__ == "__main__":  # python -m imitalign.cli (e.g. under accelerate launch)
    # the command groups registered on the *imported* imitalign.cli.app, not on this __main__ copy
    from imitalign.cli import main as _main

    _main()
