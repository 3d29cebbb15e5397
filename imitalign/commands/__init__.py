"""Command groups of the ``imitalign`` CLI, one module per area; each registers on
``imitalign.commands.app.app`` (the app, ``friendly`` and shared options); ``imitalign.cli`` imports them all."""
