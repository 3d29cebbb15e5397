"""What every command module shares: the typer ``app`` (and its ``data`` group), the ``friendly`` error wrapper,
logging set-up and the shared option types. Command modules import this; ``imitalign.cli`` assembles them.

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
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="replace a run of a different configuration in the output folder (deletes it)"),
]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors (config, data, training) into a one-message exit instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from imitalign.config import ConfigError
        from imitalign.data.records import DataError
        from imitalign.failures import describe_os_error
        from imitalign.train.loop import TrainingError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, TrainingError, ValueError, FileNotFoundError) as e:
            if os.environ.get("IMITALIGN_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except Exception as e:  # no space, permission denied, read-only filesystem: one sentence; else re-raised
            said = describe_os_error(e)
            if said is None or os.environ.get("IMITALIGN_DEBUG"):
                raise
            typer.secho(f"error: {said}", fg=typer.colors.RED, err=True)
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
