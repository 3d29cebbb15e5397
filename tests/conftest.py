"""Test-wide settings.

- One intra-op thread (tiny models run several times faster without thread contention, especially on a loaded
  2-core machine); tests that need more set it themselves.
- The reference log-prob cache (``reference.cache_dir: auto``) points at a temporary folder for the whole session
  (``IMITALIGN_CACHE``, inherited by the subprocesses tests start): no test reads an entry of an earlier run or
  writes into the user's cache (``tests/test_refcache_isolation.py`` checks it; a changed user cache at the end of
  the session is reported).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HOME_CACHE_KEY = pytest.StashKey[tuple[Path, list]]()


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of every file under ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*"))


def pytest_configure(config: pytest.Config) -> None:
    """Before any fixture runs: the folder ``reference.cache_dir: auto`` uses in the user's environment."""
    from imitalign.train.refcache import default_cache_dir

    home = default_cache_dir()
    config.stash[HOME_CACHE_KEY] = (home, snapshot(home))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    home, before = session.config.stash.get(HOME_CACHE_KEY, (None, None))
    if home is not None and snapshot(home) != before:  # a warning: on a shared machine another job may write it
        print(f"\nWARNING: the user's reference cache {home} changed while the tests ran")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _temporary_reference_cache(tmp_path_factory):
    """``IMITALIGN_CACHE`` → a session temporary folder (restored afterwards)."""
    before = os.environ.get("IMITALIGN_CACHE")
    os.environ["IMITALIGN_CACHE"] = str(tmp_path_factory.mktemp("imitalign_cache"))
    yield Path(os.environ["IMITALIGN_CACHE"])
    if before is None:
        os.environ.pop("IMITALIGN_CACHE", None)
    else:
        os.environ["IMITALIGN_CACHE"] = before
