"""The processes of an ``accelerate launch`` (one process without a launcher), as the loops use them.

Under ``accelerate launch`` every process runs the same loop: the main process decides whether a stage is
finished (its file exists) and everyone follows that decision; files are written by the main process only, and
the others wait. Sampling and training run in every process (sharded prompts; data-parallel training). Without a
launcher there is one process and these are no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def process_state() -> Any:
    """accelerate's process state. On a CPU-only machine, torchrun's processes get a (gloo) process group only when
    accelerate is told ``cpu=True``; the training loop asks for the same."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_count() -> int:
    return int(process_state().num_processes)


def is_main() -> bool:
    return bool(process_state().is_main_process)


def barrier() -> None:
    state = process_state()
    if state.num_processes > 1:
        state.wait_for_everyone()


def from_main(obj: Any) -> Any:
    """The main process's ``obj`` (picklable), on every process (one broadcast; no-op in one process)."""
    state = process_state()
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def main_decides(flag: bool) -> bool:
    """The main process's ``flag``, on every process."""
    return bool(from_main(flag))


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process only (the others wait); returns its value on the main process, None
    elsewhere. An exception on the main process is raised on every process, so none waits forever."""
    out, err = None, None
    if is_main():
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, here and on the other processes
            err = e
    message = from_main(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    if message is not None:
        raise RuntimeError(f"the main process failed: {message}")
    return out
