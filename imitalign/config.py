"""The configuration of a run: pydantic models, YAML in, dotted ``--set a.b=c`` overrides.

Every section validates before any model loads; unknown keys are errors (``extra="forbid"``) so that a
misspelt field is reported with its path instead of being ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a message that says what to fix."""


class _Strict(BaseModel):
    # every number finite: nan/inf are refused with the field's name like any other out-of-range value
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(_Strict):
    """Where the policy comes from: a hub id or local folder (``name_or_path``), or built from a
    ``transformers`` config (a dict or a path to ``config.json``) plus a ``tokenizer`` path."""

    name_or_path: str | None = None
    config: dict[str, Any] | str | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    init_seed: int | None = Field(None, ge=0)  # seed for weights built from a config (defaults to run.seed)

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("give exactly one of model.name_or_path or model.config")
        if self.config is not None and self.tokenizer is None:
            raise ValueError("model.config needs model.tokenizer (a tokenizer folder or hub id)")
        return self


class ReferenceConfig(_Strict):
    """The reference policy π_ref. ``auto``: none for reference-free objectives, the adapter-disabled base
    model under LoRA, else a frozen copy of the initial policy (or of ``name_or_path`` when given)."""

    mode: Literal["auto", "copy", "adapter", "none"] = "auto"
    name_or_path: str | None = None
    precompute: bool = True  # reference log-probs computed once before training (cached on disk)
    # where precomputed reference log-probs are cached: "auto" (~/.cache/imitalign/reflogps, or
    # $IMITALIGN_CACHE/reflogps), a folder, or null to turn the cache off
    cache_dir: str | None = "auto"


class DataSource(_Strict):
    """One data file (``.jsonl``, ``.json``, ``.jsonl.gz``, ``.parquet``), a local ``datasets`` folder, or a
    hub dataset id."""

    path: str
    format: Literal["auto", "preference", "ultrafeedback", "hh", "demonstration", "messages", "alpaca", "prompt"] = (
        "auto"
    )
    columns: dict[str, str] = Field(default_factory=dict)  # our name -> the file's column name
    split: str | None = None
    limit: int | None = Field(None, ge=1)


class DataConfig(_Strict):
    train: DataSource
    eval: DataSource | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # held out from train when no eval source is given
    chat_template: str = "auto"  # auto | none | a name (llama3, qwen2_5, ...) | a path to a .jinja file
    max_length: int = Field(1024, ge=2)
    max_prompt_length: int | None = Field(None, ge=1)
    system_prompt: str | None = None
    # the policy's own samples (prompt, response) for token objectives that mix them into the TD-regularised
    # term (online IQLearn, objective option ``alpha``); they never enter the likelihood term
    policy_samples: DataSource | None = None


class ObjectiveConfig(_Strict):
    name: str = "dpo"
    options: dict[str, Any] = Field(default_factory=dict)  # beta, length_normalize, gamma, lam, ...

    @model_validator(mode="after")
    def _objective_rules(self) -> ObjectiveConfig:
        """The name and options checked by the objective's own rules (``beta > 0``, …), at config time."""
        from imitalign import objectives

        objectives.check_options(self.name, self.options)
        return self


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0.0)  # may be fractional (0.5: half an epoch)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)  # per device, in examples (pairs for preference objectives)
    eval_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-7, gt=0.0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = Field(1.0, gt=0.0)  # null: no clipping (the gradient norm is still checked)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1)
    save_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=0)  # 0: keep every checkpoint
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    # padding-free batches: sequences packed into rows with per-sequence position ids and block-diagonal
    # attention (checked against padded batches on the model at start-up); same numbers, less compute
    packing: bool = True
    group_by_length: bool = False  # optimiser steps of similar-length examples (less padding; changes the order)
    # LM head + log-softmax over chunks of this many positions, recomputed in backward (memory); "auto": only when
    # the kept logits exceed 256 MB and recomputing them costs < 5 % of the step (imitalign.model.logprobs)
    chunk_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] | None = "auto"
    num_threads: int | None = Field(None, ge=1)
    # FSDP2 (torch's fully_shard, through accelerate's plugin): each decoder layer, then the whole engine;
    # the same as launching with configs/accelerate/fsdp2.yaml. On CPU process groups (gloo), where accelerate
    # ignores its FSDP plugin, imitalign engages it itself (imitalign.train.sharding)
    fsdp: bool = False

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each of adam_betas must be in [0, 1), got {list(v)}")
        return v


class RunConfig(_Strict):
    output_dir: str = Field("runs/imitalign", min_length=1)
    seed: int = Field(42, ge=0)
    name: str | None = None


class Config(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: ``1e-6`` → float, ``true`` → bool, ``[a, b]`` → list."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (creating sections as needed)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-6")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return raw


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        sub = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def format_validation_error(err: ValidationError, source: str, schema: type[BaseModel] = Config) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not isinstance(x, int) or True)
        path = ".".join(str(x) for x in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            known = _known_fields(schema, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            msg = f"unknown field{hint} (known: {', '.join(known)})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def check_section(schema: type[BaseModel], raw: Any, name: str) -> None:
    """Validate ``raw`` (a section kept as a dict, e.g. the ``train`` section of a loop config) as ``schema``;
    a ValueError naming each bad field as ``name.field`` (for the enclosing model's validator)."""
    try:
        schema.model_validate(raw)
    except ValidationError as e:
        lines = format_validation_error(e, name, schema).splitlines()[1:]
        raise ValueError("; ".join(line.strip() for line in lines)) from None


def read_yaml_mapping(path: str | Path, sections: str = "run, model, data, ...") -> dict[str, Any]:
    """The top-level mapping of a YAML config file; a missing file, invalid YAML or a top level that is not a
    mapping is a :class:`ConfigError` (``sections`` names the expected keys in that message)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections ({sections})")
    return raw


_Schema = TypeVar("_Schema", bound=BaseModel)


def validate_config(
    schema: type[_Schema], raw: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> _Schema:
    """``raw`` (a shallow copy) with ``--set`` overrides applied, validated as ``schema``; a validation error
    is a :class:`ConfigError` naming ``source`` and each bad field."""
    raw = apply_overrides(dict(raw), overrides or [])
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, schema)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, raw: dict | None = None) -> Config:
    """Read a YAML file (or a ready dict), apply ``--set`` overrides and validate."""
    source = str(path) if path is not None else "<dict>"
    if raw is None:
        raw = read_yaml_mapping(path)  # type: ignore[arg-type]
    return validate_config(Config, raw, overrides, source)


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
