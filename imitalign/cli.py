"""The ``imitalign`` command: assembles the command modules of ``imitalign.commands`` on one typer app.

    imitalign train CONFIG.yaml [--set train.lr=1e-6 ...] [--resume]
    imitalign data preview CONFIG.yaml [-n 3]
    imitalign objectives
    imitalign quickstart [--fast] [--seeds 3]
    imitalign sample / eval / gym ...   (see --help of each)

Errors in configs and data are printed as one clear message (file, line, field) with exit code 2;
``IMITALIGN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

# isort: off
# importing a command module registers its commands, in this order (the order of `imitalign --help`)
from imitalign.commands import core  # noqa: F401
from imitalign.commands import afd, evaluate, online  # noqa: F401
from imitalign.commands.app import app

# isort: on

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":  # python -m imitalign.cli (e.g. under accelerate launch)
    main()
