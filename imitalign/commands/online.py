"""CLI commands of the online loops (reward scoring, K-sample generation, iterative preference learning)."""

from __future__ import annotations

from imitalign.cli import app  # noqa: F401 - commands register on it
