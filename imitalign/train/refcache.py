"""A disk cache of precomputed reference log-probs, keyed by what determines them.

The key is a SHA-256 of

- the **reference weights**: a hash of every tensor of the reference's state dict (names, dtypes, shapes and
  bytes; LoRA tensors left out and peft's name prefixes removed, so a LoRA run whose reference is the base model
  shares entries with a full fine-tune of the same base); or, for a reference loaded from a local folder that
  holds more than ``HASH_WEIGHTS_MAX_BYTES`` of weights, the names, sizes and modification times of the
  folder's files plus its ``config.json``;
- the **data**: a hash of the token ids of every example (prompt, chosen, rejected, in order) — so any change
  of data file, chat template, truncation or tokenizer that changes a token changes the key;
- the **numerics**: weight dtype, mixed precision, attention implementation, cache format;
- the **code**: :func:`engine_version`, a hash of the source of the modules that compute the log-probs (the
  engine, packing, collation, the step and reference passes) and the torch and transformers versions. A hash,
  not a hand-bumped constant: the entries it protects against are the ones nobody knew were wrong — a
  regression in the reference pass would not have bumped a constant, and would have hidden behind entries
  computed by the code before it. The price is a recomputation (one forward pass over the data) after any
  edit of those files, comments included.

The reference *mode* is not part of the key: the weights hash already says what the reference is (the
adapter-disabled base under LoRA hashes like the same base without LoRA).

An entry is ``<cache_dir>/<key>.safetensors`` holding ``logps [n, 2]`` float32 (chosen, rejected) and the key,
the fingerprint parts and the SHA-256 of the tensor's bytes (recorded when it is written) as metadata
(safetensors: no pickle). Writes are atomic (a temporary file in the same folder, then ``os.replace``). A file
that cannot be read, whose stored key or shape does not match, whose values are not the ones written (an
edited file: their hash differs; or an entry written before hashes were recorded) or that holds non-finite
values is reported in the log and recomputed — never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imitalign.train.sharding import named_full_tensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HASH_WEIGHTS_MAX_BYTES = 2 * 2**30
_PEFT_PREFIX = re.compile(r"^(base_model\.model\.)")


def default_cache_dir() -> Path:
    """``$IMITALIGN_CACHE/reflogps``, else ``$XDG_CACHE_HOME/imitalign/reflogps``, else ``~/.cache/...``."""
    root = os.environ.get("IMITALIGN_CACHE")
    if root:
        return Path(root) / "reflogps"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "imitalign" / "reflogps"


def resolve_cache_dir(setting: str | None) -> Path | None:
    """``reference.cache_dir``: ``"auto"`` → :func:`default_cache_dir`, ``None`` → caching off, else a path."""
    if setting is None:
        return None
    return default_cache_dir() if setting == "auto" else Path(setting).expanduser()


def _canonical_name(name: str) -> str | None:
    """A state-dict name without peft's wrapping, or None for LoRA's own tensors."""
    if "lora_" in name or "modules_to_save" in name:
        return None
    return _PEFT_PREFIX.sub("", name).replace(".base_layer.", ".")


def hash_weights(module: torch.nn.Module) -> str:
    """SHA-256 of the module's state dict (canonical names, dtypes, shapes, bytes), LoRA tensors excluded; of the
    full tensors when the module is sharded (a collective then: every process calls it)."""
    h = hashlib.sha256()
    items = []
    for name, t in named_full_tensors(module):  # a sharded module's full tensors (FSDP2, ZeRO-3), not a shard
        canon = _canonical_name(name)
        if canon is not None:
            items.append((canon, t))
    for name, t in sorted(items, key=lambda x: x[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def hash_folder(path: str | Path) -> str:
    """SHA-256 of a model folder's weight/config file names, sizes and mtimes, plus ``config.json``'s text."""
    folder = Path(path)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".json", ".pt", ".gguf"}:
            st = f.stat()
            h.update(f"{f.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cfg = folder / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    return h.hexdigest()


def hash_token_rows(items: Iterable[Any]) -> str:
    """SHA-256 of the token ids of tokenised pairs (prompt, chosen, rejected per example, in order)."""
    h = hashlib.sha256()
    for it in items:
        for ids in (it.prompt_ids, it.chosen_ids, it.rejected_ids):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


ENGINE_MODULES = (  # what computes a reference log-prob, from token ids to the [n, 2] tensor
    "imitalign.model.logprobs",
    "imitalign.model.packing",
    "imitalign.model.segment_attention",
    "imitalign.data.collate",
    "imitalign.train.steps",
    "imitalign.train.reference",
)


def source_hash(paths: Iterable[str | Path], extra: str = "") -> str:
    """SHA-256 of the files' bytes (in the order given) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        data = Path(p).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


@functools.cache
def engine_version() -> str:
    """The version of the log-prob code in the cache key: :func:`source_hash` of ``ENGINE_MODULES`` and the
    torch and transformers versions (computed once per process)."""
    import importlib.util

    import transformers

    paths = []
    for name in ENGINE_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        paths.append(spec.origin)
    return source_hash(paths, extra=f"torch {torch.__version__} transformers {transformers.__version__}")


def reference_fingerprint(
    *, weights: str, data: str, n: int, dtype: str, mixed_precision: str, attn: str | None
) -> dict[str, Any]:
    """The parts of a cache key (stored beside the entry, so a mismatch can be explained)."""
    return {
        "format": FORMAT_VERSION,
        "engine": engine_version(),
        "weights": weights,
        "data": data,
        "n": n,
        "dtype": dtype,
        "mixed_precision": mixed_precision,
        "attn_implementation": attn or "default",
    }


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:32]


class RefLogpsCache:
    """Entries ``<dir>/<key>.safetensors`` (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def load(self, key: str, n: int) -> torch.Tensor | None:
        """The cached ``[n, 2]`` tensor, or None (absent, or stale/corrupt: logged, and to be rebuilt)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                logps = f.get_tensor("logps")
        except Exception as e:  # noqa: BLE001 - any unreadable file is rebuilt
            log.warning("reference cache %s is unreadable (%s): recomputing it", path, e)
            return None
        problem = None
        if meta.get("key") != key:
            problem = f"its stored key {meta.get('key')!r} is not {key!r}"
        elif logps.dtype != torch.float32 or tuple(logps.shape) != (n, 2):
            problem = f"it holds {logps.dtype} {tuple(logps.shape)}, expected float32 ({n}, 2)"
        elif meta.get("sha256") != _tensor_sha256(logps):
            problem = "its values are not the ones written (their content hash differs, or none was recorded)"
        elif not torch.isfinite(logps).all():
            problem = "it holds non-finite values"
        if problem:
            log.warning("reference cache %s is stale or corrupt (%s): recomputing it", path, problem)
            return None
        return logps

    def save(self, key: str, logps: torch.Tensor, fingerprint: dict[str, Any]) -> Path:
        """Write atomically (temporary file in the cache folder, then ``os.replace``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.dir)
        os.close(fd)
        try:
            values = logps.detach().float().cpu().contiguous()
            meta = {"key": key, "fingerprint": json.dumps(fingerprint, sort_keys=True)}
            meta["sha256"] = _tensor_sha256(values)
            save_file({"logps": values}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def data_lengths(items: Sequence[Any]) -> list[int]:
    """Tokens of each example's longer sequence (prompt + the longer response)."""
    return [len(it.prompt_ids) + max(len(it.chosen_ids), len(it.rejected_ids)) for it in items]
