"""Named points where a test can kill the process (fault injection), as ``kill -9`` would.

``IMITALIGN_KILL_AT=<point>[@<n>]`` makes the ``n``-th arrival (default: the first) of this process at
``fault("<point>")`` end the process at once with exit status 137, without cleanup — files stay exactly as
they are at that moment. Points: ``checkpoint:written`` (a checkpoint's state is on disk, its
``trainer_state.json`` and rename are not), ``stage:<name>:sealing`` (a stage's files are written, its
manifest is not), ``model:saved`` (a trained model's files are in place, its manifest is not). Unset (always,
outside tests), :func:`fault` does nothing. (``IMITALIGN_FAULT`` is another hook: a launched stage job's rank
exiting, :mod:`imitalign.loops.launch`.)
"""

from __future__ import annotations

import os

_arrivals: dict[str, int] = {}


def fault(point: str) -> None:
    spec = os.environ.get("IMITALIGN_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] == int(nth or 1):
        os._exit(137)
