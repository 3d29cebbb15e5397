"""Speed must not change the math: imitalign's DPO loss per step equals TRL's DPOTrainer's on identical batches
from identical weights (relative 1e-4) — the check of ``benchmarks/bench_dpo.py`` on a handful of tiny rows."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="TRL is not installed (pip install -e '.[bench]')"
)


def test_dpo_loss_per_step_matches_trl(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_dpo
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    folder = bench_dpo.build_setting(tmp_path, "tiny", 24)
    check = bench_dpo.loss_check(folder, tmp_path / "check", steps=3)
    assert len(check["trl"]) == len(check["imitalign"]) == 3, check
    assert check["ok"], check
