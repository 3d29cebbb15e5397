"""CLI commands of learning from demonstrations (AfD reward models, best-of-N, IQLearn extras)."""

from __future__ import annotations

from imitalign.cli import app  # noqa: F401 - commands register on it
