"""The tests' reference cache is a session temporary folder, never the user's; the cache key holds a version of
the log-prob code, so entries written by other code are never read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imitalign.train import refcache
from imitalign.train.loop import train
from tests.conftest import HOME_CACHE_KEY, snapshot
from tests.test_perf_refcache import _cfg, counted  # noqa: F401 - the fixture


def test_auto_cache_is_the_session_folder_and_the_users_is_untouched(tmp_path, request, counted):  # noqa: F811
    home, _ = request.config.stash[HOME_CACHE_KEY]
    session_dir = Path(os.environ["IMITALIGN_CACHE"])
    assert refcache.default_cache_dir() == session_dir / "reflogps" != home
    assert tmp_path.parent == session_dir.parent  # a pytest temporary folder of this session
    cfg = _cfg(tmp_path, "a")
    cfg.reference.cache_dir = "auto"
    entries_before = set(session_dir.rglob("*.safetensors"))
    train(cfg, quiet=True)
    (entry,) = set(session_dir.rglob("*.safetensors")) - entries_before  # written to the session folder ...
    # ... and not to the user's (compared by name, not to the snapshot taken when the session started: on a shared
    # machine other jobs may write there meanwhile; conftest reports any change at the end of the session)
    assert entry.name not in {name for name, _, _ in snapshot(home)}


def test_engine_version_hashes_the_logprob_sources(tmp_path):
    names = {"logprobs.py", "packing.py", "segment_attention.py", "collate.py", "steps.py", "reference.py"}
    assert {m.rsplit(".", 1)[1] + ".py" for m in refcache.ENGINE_MODULES} == names
    a = tmp_path / "logprobs.py"
    shutil.copy(Path(refcache.__file__).parents[1] / "model" / "logprobs.py", a)
    h = refcache.source_hash([a])
    assert refcache.source_hash([a]) == h  # deterministic
    a.write_text(a.read_text().replace("logsumexp", "logsumexq", 1))
    assert refcache.source_hash([a]) != h  # any edit of the engine's source changes the version
    assert refcache.source_hash([a], extra="torch 2.13.0") != refcache.source_hash([a], extra="torch 2.14.0")
    assert len(refcache.engine_version()) == 16
    fp = refcache.reference_fingerprint(weights="w", data="d", n=1, dtype="float32", mixed_precision="no", attn=None)
    assert fp["engine"] == refcache.engine_version()


def test_an_entry_of_other_engine_code_is_not_read(tmp_path, counted, monkeypatch):  # noqa: F811
    calls, results = counted
    cache = tmp_path / "cache"
    train(_cfg(tmp_path, "a", cache=cache), quiet=True)
    train(_cfg(tmp_path, "b", cache=cache), quiet=True)
    assert len(calls) == 1  # same code: a hit
    monkeypatch.setattr(refcache, "engine_version", lambda: "changed-engine")
    train(_cfg(tmp_path, "c", cache=cache), quiet=True)
    assert len(calls) == 2, "an entry computed by other log-prob code was read"
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert results[2].equal(results[0])
