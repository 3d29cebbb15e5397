"""The optimiser: AdamW, fused when the parameters allow it.

``torch.optim.AdamW(fused=True)`` updates each parameter in one kernel (CPU since torch 2.4, CUDA) instead of
a dozen elementwise ops per parameter tensor: on the 2-core benchmark machine the update of a 12.6 M-parameter
model took 0.46 s fused vs 2.3 s unfused under load (``benchmarks/README.md``), a step's worth of time that a
plain loop pays on every step. Same update to float rounding (1e-7 on fp32 weights over 5 steps, tested).
Fused is not used for sharded training (FSDP2 turns the parameters into DTensors after the optimiser is built;
DeepSpeed brings its own optimiser), for DTensor parameters, on other devices or for non-float parameters:
AdamW's default implementation there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")


def fusable(params: Iterable[torch.Tensor]) -> bool:
    """Whether fused AdamW takes every parameter: plain floating tensors on a CPU or CUDA device."""
    params = list(params)
    return bool(params) and all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params
    )


def adamw(
    groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], sharded: bool = False
) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (each ``{"params": [...], "weight_decay": w}``), fused when possible
    (never when ``sharded``)."""
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True if not sharded and fusable(params) else None)
