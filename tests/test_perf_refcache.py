"""Reference log-probs cached on disk: a second run (another objective too) reads them without a reference
forward and gets the same numbers; corrupt or stale entries are rebuilt, never used."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from imitalign.config import load_config
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.train import loop, refcache, reference
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA
from tests.test_train import write_pairs


def _cfg(tmp_path: Path, name: str, objective: str = "dpo", cache: Path | None = None, **train_kw):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        write_pairs(data, 48, 0)
    tok = tmp_path / "tok"
    if not tok.exists():
        save_tokenizer(tok)
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tok)},
        "reference": {"cache_dir": str(cache) if cache else None},
        "data": {"train": {"path": str(data)}, "eval_fraction": 0.25, "chat_template": "none", "max_length": 64},
        "objective": {"name": objective},
        "train": {"batch_size": 8, "lr": 1e-3, "max_steps": 2, "log_every": 1, "schedule": "constant", **train_kw},
    }
    return load_config(None, raw=raw)


@pytest.fixture
def counted(monkeypatch):
    """Counts reference forwards (``compute_reference_logps`` calls) and keeps what precompute returned."""
    calls: list[int] = []
    results: list[torch.Tensor] = []
    compute, precompute = reference.compute_reference_logps, loop.precompute_reference

    def counting_compute(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    def keeping_precompute(*args, **kwargs):
        out = precompute(*args, **kwargs)
        results.append(out.clone())
        return out

    monkeypatch.setattr(reference, "compute_reference_logps", counting_compute)
    monkeypatch.setattr(loop, "precompute_reference", keeping_precompute)
    return calls, results


def test_second_run_and_other_objective_read_the_cache(tmp_path, counted):
    calls, results = counted
    cache = tmp_path / "cache"
    train(_cfg(tmp_path, "a", cache=cache), quiet=True)
    assert len(calls) == 1 and len(list(cache.glob("*.safetensors"))) == 1
    train(_cfg(tmp_path, "b", cache=cache), quiet=True)
    train(_cfg(tmp_path, "c", objective="dil_lsif", cache=cache), quiet=True)
    assert len(calls) == 1, "the reference ran again although its log-probs were cached"
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    # a padded (unpacked) run of the same data shares the entry, and its numbers agree
    train(_cfg(tmp_path, "d", cache=cache, packing=False), quiet=True)
    assert len(calls) == 1
    # ... and what was cached is what a fresh computation gives
    train(_cfg(tmp_path, "e", cache=None, packing=False), quiet=True)
    assert len(calls) == 2
    assert torch.allclose(results[0], results[4], atol=1e-4)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["pad_fraction"] < 1.0 for r in rows if "pad_fraction" in r)


def test_changed_weights_or_data_miss_the_cache(tmp_path, counted):
    calls, _ = counted
    cache = tmp_path / "cache"
    train(_cfg(tmp_path, "a", cache=cache), quiet=True)
    other_init = _cfg(tmp_path, "b", cache=cache)
    other_init.model.init_seed = 11
    train(other_init, quiet=True)
    shorter = _cfg(tmp_path, "c", cache=cache)
    shorter.data.max_length = 9  # truncation changes the token ids
    train(shorter, quiet=True)
    assert len(calls) == 3 and len(list(cache.glob("*.safetensors"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "wrong_key", "nan"])
def test_corrupt_or_stale_entry_is_rebuilt(tmp_path, counted, caplog, damage):
    calls, results = counted
    cache = tmp_path / "cache"
    train(_cfg(tmp_path, "a", cache=cache), quiet=True)
    (entry,) = cache.glob("*.safetensors")
    key = entry.stem
    store = refcache.RefLogpsCache(cache)
    good = results[0]
    if damage == "garbage":
        entry.write_bytes(b"not a safetensors file")
    elif damage == "wrong_shape":
        store.save(key, good[:-1], {})
    elif damage == "wrong_key":
        store.save("0" * 32, good, {})
        (cache / ("0" * 32 + ".safetensors")).replace(entry)
    else:
        store.save(key, torch.full_like(good, float("nan")), {})
    with caplog.at_level(logging.WARNING, logger="imitalign.train.refcache"):
        train(_cfg(tmp_path, "b", cache=cache), quiet=True)
    assert len(calls) == 2, "a damaged cache entry was used"
    assert any("recomputing" in r.message for r in caplog.records)
    assert torch.equal(results[1], good)
    assert torch.equal(store.load(key, good.shape[0]), good)  # rebuilt in place


def test_lora_reference_is_cached_under_the_base_weights(tmp_path, counted):
    calls, results = counted
    cache = tmp_path / "cache"
    cfg = _cfg(tmp_path, "a", cache=cache)
    cfg.model.lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    cfg = load_config(None, raw=cfg.model_dump(mode="json"))
    train(cfg, quiet=True)  # reference = the adapter-disabled base
    train(_cfg(tmp_path, "b", cache=cache), quiet=True)  # full fine-tune of the same base: same reference
    assert len(calls) == 1
    assert torch.equal(results[0], results[1])
