"""Metrics: a JSONL file in the run folder (always), TensorBoard/W&B through accelerate's trackers (when
installed and asked for), throughput and peak memory."""

from __future__ import annotations

import importlib.util
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from imitalign.train.steps import WEIGHT_KEY

log = logging.getLogger(__name__)


def available_trackers(requested: list[str]) -> list[str]:
    out = []
    for name in requested:
        if importlib.util.find_spec(name) is None:
            log.warning("tracker %r requested but the package is not installed: skipping it", name)
        else:
            out.append(name)
    return out


def peak_memory_mb() -> float:
    """Peak accelerator memory when on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class MetricsLog:
    """Appends one JSON object per logging event to ``metrics.jsonl``; mirrors to accelerate trackers."""

    def __init__(self, path: Path, accelerator: Any, enabled: bool):
        self.path = path
        self.accelerator = accelerator
        self.enabled = enabled

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        numeric = {k: v for k, v in clean.items() if isinstance(v, float)}
        if self.accelerator.trackers:
            self.accelerator.log(numeric, step=step)


class Throughput:
    """Real (non-padding) tokens per second between two logging events."""

    def __init__(self) -> None:
        self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        rate = self.tokens / dt if dt > 0 else 0.0
        self.tokens, self.t0 = 0, time.perf_counter()
        return rate


class MetricMean:
    """Weighted means of metric dicts (tensors stay on device until logging): weighted by examples, or by the
    dict's own weight ``steps.WEIGHT_KEY`` when it has one (token objectives: response tokens)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weight: float | torch.Tensor = 0.0

    def add(self, metrics: dict[str, torch.Tensor], weight: float) -> None:
        metrics = dict(metrics)
        weight = metrics.pop(WEIGHT_KEY, weight)
        for k, v in metrics.items():
            v = v.detach().float() * weight
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.weight = self.weight + weight

    def result(self, accelerator: Any) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        weight = torch.as_tensor(self.weight, dtype=torch.float32, device=self.sums[keys[0]].device)
        vec = torch.stack([self.sums[k] for k in keys] + [weight])
        vec = accelerator.reduce(vec, "sum") if accelerator.num_processes > 1 else vec
        vals = (vec[:-1] / vec[-1].clamp(min=1e-12)).tolist()
        return dict(zip(keys, vals, strict=True))
