"""Loading policies, references and tokenizers: hub id, local folder, or a ``transformers`` config.

A model built from a config gets its weights from ``model.init_seed`` (else ``run.seed``), its vocabulary
size from the tokenizer when the config does not give one, and the tokenizer's special-token ids. LoRA goes
through peft; ``trust_remote_code`` stays off unless the config turns it on.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerBase

from imitalign.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[name]


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = cfg.tokenizer or cfg.name_or_path
    from imitalign.failures import check_local_path

    check_local_path(str(source), "tokenizer" if cfg.tokenizer else "model")
    folder = Path(str(source))
    try:
        if (
            (folder / "vocab.json").is_file()
            and (folder / "merges.txt").is_file()
            and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        ):  # a bare byte-level BPE (GPT-2's encoder files)
            tok = GPT2TokenizerFast.from_pretrained(folder)
        else:
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - report what failed and where
        raise ValueError(f"could not load a tokenizer from {source!r}: {e}") from e
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer at {source!r} has no EOS token; set one in its tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token: using EOS (%r) for padding", tok.eos_token)
    return tok


def config_from(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> Any:
    """The ``transformers`` config of a model built from ``cfg.config`` (a dict, a JSON/YAML file, or a hub id /
    folder whose config is read): vocabulary size and special token ids default to the tokenizer's."""
    spec = cfg.config
    if isinstance(spec, str):
        path = Path(spec)
        if path.suffix in {".json", ".yaml", ".yml"} and path.is_file():
            import yaml

            spec = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        else:
            return AutoConfig.from_pretrained(spec, trust_remote_code=cfg.trust_remote_code)
    spec = dict(spec)  # type: ignore[arg-type]
    model_type = spec.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.config needs a model_type (e.g. llama)")
    spec.setdefault("vocab_size", len(tok))
    spec.setdefault("pad_token_id", tok.pad_token_id)
    spec.setdefault("eos_token_id", tok.eos_token_id)
    if tok.bos_token_id is not None:
        spec.setdefault("bos_token_id", tok.bos_token_id)
    return AutoConfig.for_model(model_type, **spec)


def from_pretrained(loader: Any, path: str | Path, what: str = "model", **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, **kwargs)`` with one-sentence failures: a local path that does not exist
    (no hub lookup), a model folder whose files are not the sizes recorded when it was saved (a truncated copy),
    a weights file that cannot be read — each a :class:`~imitalign.config.ConfigError` naming the folder."""
    from safetensors import SafetensorError

    from imitalign.failures import check_local_path
    from imitalign.manifest import MODEL_MANIFEST, check_model

    check_local_path(str(path), what)
    folder = Path(str(path)).expanduser()
    if (folder / MODEL_MANIFEST).is_file():
        reason = check_model(folder, sizes_only=True)
        if reason is not None:
            raise ConfigError(f"{what} at {path} is not the model that was saved: {reason}; rerun what wrote it")
    try:
        return loader.from_pretrained(str(path) if isinstance(path, Path) else path, **kwargs)
    except SafetensorError as e:
        raise ConfigError(
            f"{what} at {path}: a weights file cannot be read ({e}): it is truncated or corrupt; rerun what wrote it"
        ) from None


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of ``from_pretrained`` / ``from_config`` that come from the ``model`` section."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return kwargs


def check_tokenizer_fit(model: nn.Module, tok: PreTrainedTokenizerBase) -> None:
    """Give the model the tokenizer's pad id when it has none; a ``ValueError`` when the tokenizer has more
    tokens than the model's embedding (they do not belong together)."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        raise ValueError(
            f"the tokenizer has {len(tok)} tokens but the model's embedding has "
            f"{model.get_input_embeddings().weight.shape[0]}: they do not belong together"
        )


def load_causal_lm(cfg: ModelConfig, tok: PreTrainedTokenizerBase, seed: int) -> nn.Module:
    """The policy network (before LoRA)."""
    dtype = resolve_dtype(cfg.dtype)
    kwargs = model_kwargs(cfg)
    if cfg.name_or_path is not None:
        model = from_pretrained(AutoModelForCausalLM, cfg.name_or_path, dtype=dtype, **kwargs)
    else:
        config = config_from(cfg, tok)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed if cfg.init_seed is not None else seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    check_tokenizer_fit(model, tok)
    return model


def lora_config(cfg: ModelConfig, task_type: str, **extra: Any) -> Any:
    """``peft.LoraConfig`` of the ``model.lora`` section for ``task_type`` (``CAUSAL_LM``, ``SEQ_CLS``)."""
    from peft import LoraConfig

    assert cfg.lora is not None
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type=task_type,
        **extra,
    )


def apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, and no KV cache (it is of no use in training)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def load_policy(cfg: ModelConfig, seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    tok = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tok, seed)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.lora is not None:
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply_lora(model, cfg)
    return model, tok


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def save_model(model: nn.Module, tok: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """``save_pretrained`` (safetensors) + tokenizer. A peft model is saved merged (a plain model folder
    that ``AutoModelForCausalLM`` loads) with its adapter beside it in ``adapter/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out_dir / "adapter")
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out_dir, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
