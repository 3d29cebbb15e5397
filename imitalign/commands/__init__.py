"""Command groups of the ``imitalign`` CLI, one module per area; each registers on ``imitalign.cli.app``."""
