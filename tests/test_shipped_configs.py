"""Every shipped config (``configs/*.yaml``, ``configs/online/*.yaml``) is validated: it parses with the loader of
the command its header names, its objective's options are accepted by the objective, and every data path it
names is accounted for — a file of the repo or ``../shared`` that exists, an output of another command (``runs/…``,
of a command that writes exactly there), or a placeholder for the user's data that the header says to replace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from imitalign import objectives
from tests.helpers import REPO

# config → (the command that runs it, the loader kind)
SHIPPED = {
    "accelerate/fsdp2.yaml": "accelerate",  # `accelerate launch --config_file …` (docs/scale.md)
    "accelerate/zero2.yaml": "accelerate",
    "accelerate/zero3.yaml": "accelerate",
    "accelerate/zero3_offload.yaml": "accelerate",
    "afd_bon_gym.yaml": "bon",
    "afd_gym_style.yaml": "afd",
    "afd_hh_gemma2b.yaml": "afd",
    "afd_spin_gym.yaml": "iterate",
    "dil_ultrafeedback_mistral7b.yaml": "train",
    "iqlearn_online_gym.yaml": "iterate",
    "iqlearn_tldr_qwen.yaml": "train",
    "tiny_dil_hh.yaml": "train",
    "online/gym_iterative_dil_bce.yaml": "iterate",
    "online/gym_iterative_dil_lsif.yaml": "iterate",
    "online/gym_iterative_dpo_gold.yaml": "iterate",
    "online/gym_iterative_dpo_random.yaml": "iterate",
    "online/gym_iterative_dpo_rm.yaml": "iterate",
    "online/gym_offline_dpo.yaml": "iterate",
    "online/gym_rejection_multistep.yaml": "rejection",
    "online/gym_rejection_onestep.yaml": "rejection",
}
USER_DATA = ("data/",)  # templates: the header says to point them at the user's file
PATH_KEYS = ("path", "tokenizer", "demos", "model", "init_model", "sft_model", "policy", "reference", "pairs")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


def _producers() -> dict[str, str]:
    """``runs/…`` folders shipped commands write: the defaults of the gym commands and every config's output."""
    from imitalign.experiments.common import PLAN
    from imitalign.gym.build import gym_dir

    out = {"runs/quickstart": "imitalign quickstart", str(gym_dir("runs/afd_gym/gym", PLAN.gym)): "imitalign afd gym-*",
           "runs/afd_gym/seed0": "imitalign afd gym-*"}
    for name in SHIPPED:
        raw = yaml.safe_load((REPO / "configs" / name).read_text())
        folder = raw.get("output_dir") or (raw.get("run") or {}).get("output_dir") if isinstance(raw, dict) else None
        out[folder] = name
    return out


def test_every_shipped_config_is_listed():
    found = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
    assert found == sorted(SHIPPED), "a config was added or removed: list it in SHIPPED (validated below)"


def _strings(node: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, str(k))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v, key)]
    return [(key, node)] if isinstance(node, str) else []


def _objectives(kind: str, cfg: Any) -> list[tuple[str, dict]]:
    if kind == "train":
        return [(cfg.objective.name, dict(cfg.objective.options))]
    if kind in ("iterate", "rejection"):
        from imitalign.config import TrainConfig

        TrainConfig(**cfg.train.train)  # the per-round train section: valid TrainConfig fields and values
        return [(cfg.train.objective.name, dict(cfg.train.objective.options))]
    return []


def _load(kind: str, path: Path) -> Any:
    if kind == "accelerate":  # accelerate's own loader refuses unknown keys
        from accelerate.commands.config.config_args import load_config_from_file

        cfg = load_config_from_file(str(path))
        assert str(cfg.distributed_type) in ("DistributedType.FSDP", "DistributedType.DEEPSPEED", "FSDP", "DEEPSPEED")
        return cfg
    if kind == "train":
        from imitalign.config import load_config

        return load_config(path)
    if kind == "afd":
        from imitalign.loops.afd import load_afd_config

        return load_afd_config(path)
    if kind == "bon":
        from imitalign.loops.bon import load_bon_config

        return load_bon_config(path)
    from imitalign.loops.iterate_config import parse_iterate_config, read_iterate_config

    raw = read_iterate_config(path)
    if kind == "rejection":
        assert raw.get("rejection"), f"{path}: `imitalign rejection` needs a rejection section"
    return parse_iterate_config(raw, str(path))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_parses_and_its_paths_exist(name):
    path = REPO / "configs" / name
    kind = SHIPPED[name]
    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    cfg = _load(kind, path)
    for objective, options in _objectives(kind, cfg):
        objectives.build(objective, options)  # unknown option names or missing required ones raise here
    producers = _producers()
    for key, value in _strings(yaml.safe_load(text)):
        if "${gym." in value:
            continue  # built by the gym section (validated by the parse above)
        is_data = key in PATH_KEYS
        if not (is_data and ("/" in value and (value.endswith(DATA_SUFFIXES) or value.startswith(("runs/", "../"))))):
            continue
        if value.startswith("../"):
            assert (REPO / value).exists(), f"{name}: {key} {value} does not exist"
        elif value.startswith("runs/"):
            owner = [folder for folder in producers if folder and value.startswith(folder + "/")]
            assert owner or value in producers, f"{name}: {key} {value} is written by no shipped command"
        elif value.startswith(USER_DATA):
            assert re.search(r"template|point `?\w+`? at your|your", header), f"{name}: {value} is not explained"
        else:
            pytest.fail(f"{name}: {key} {value}: neither shipped data, a run output nor a documented placeholder")
