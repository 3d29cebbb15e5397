"""Manifests re-hash a file only when its size or mtime moved (``imitalign.manifest._differs``): a second check of
an unchanged model folder reads no file, an edit is still caught, and ``full`` re-hashes everything."""

from __future__ import annotations

import os

from imitalign import manifest


def _folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text('{"a": 1}')
    manifest.seal_model(folder)
    return folder


def _counting(monkeypatch) -> list[str]:
    read: list[str] = []
    real = manifest.digest
    monkeypatch.setattr(manifest, "digest", lambda p: read.append(os.path.basename(p)) or real(p))
    return read


def test_an_unchanged_folder_is_checked_without_reading_a_file(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    read = _counting(monkeypatch)
    assert manifest.check_model(folder) is None and read == []
    assert manifest.check_model(folder, full=True) is None and sorted(read) == ["config.json", "model.safetensors"]


def test_a_same_size_edit_is_caught_and_a_touch_only_rehashes(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    weights = folder / "model.safetensors"
    read = _counting(monkeypatch)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, content unchanged
    assert manifest.check_model(folder) is None and read == ["model.safetensors"]
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, one byte flipped, a new mtime
    reason = manifest.check_model(folder)
    assert reason is not None and "content hash differs" in reason and "model.safetensors" in reason
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # the blind spot: mtime reset by hand ...
    assert manifest.check_model(folder) is None
    assert "content hash differs" in manifest.check_model(folder, full=True)  # ... which full=True still catches


def test_a_truncated_file_is_caught_by_its_size(tmp_path):
    folder = _folder(tmp_path)
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert "has 10 bytes" in manifest.check_model(folder)
