"""AfD reward sources: the closed form log π_SFT − log π_init against a naive per-example computation (padding
changes nothing), and folders of the wrong kind are clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from imitalign.gym.tokenizer import build_tokenizer, tiny_llama_config
from imitalign.reward import RewardError, load_reward

ROWS = [
    {"prompt": "write about sea and forest , short =>", "response": "wave boat tree moss the ."},
    {"prompt": "describe city and space , long =>", "response": "star"},
    {"prompt": "a medium text on music and food =>", "response": ""},  # an empty response: just EOS
    {"prompt": "tell me about art and farm , short =>", "response": "paint cow with a barn clay and the ."},
]


def save_lm(path: Path, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in tiny_llama_config(hidden_size=32, num_hidden_layers=1).items() if k != "model_type"}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lms")
    return save_lm(root / "sft", 1), save_lm(root / "init", 2)


@torch.no_grad()
def naive_logp(path: Path, prompt: str, response: str) -> tuple[float, int]:
    """log π(y|x) of one row alone (no padding, full logits): Σ over response tokens and the EOS."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    total = sum(float(logp[len(p) - 1 + t, tok_id]) for t, tok_id in enumerate(r))
    return total, len(r)


@pytest.mark.parametrize("length_normalize", [False, True])
def test_closed_form_equals_naive_log_ratio_and_padding_changes_nothing(lms, length_normalize) -> None:
    sft, init = lms
    cfg = {
        "kind": "closed_form",
        "path": str(sft),
        "reference": str(init),
        "chat_template": "none",
        "length_normalize": length_normalize,
    }
    batched = load_reward({**cfg, "batch_size": 8}).score(ROWS)  # one padded batch of 4 different lengths
    single = load_reward({**cfg, "batch_size": 1}).score(ROWS)  # no padding at all
    for row, b, s in zip(ROWS, batched, single, strict=True):
        lp_sft, n = naive_logp(sft, row["prompt"], row["response"])
        lp_init, _ = naive_logp(init, row["prompt"], row["response"])
        expected = (lp_sft - lp_init) / (n if length_normalize else 1)
        assert b == pytest.approx(expected, abs=2e-4)
        assert b == pytest.approx(s, abs=2e-5)
    assert not all(math.isclose(x, 0.0, abs_tol=1e-6) for x in batched)  # two different models


def test_closed_form_of_a_model_against_itself_is_zero(lms) -> None:
    sft, _ = lms
    scores = load_reward(
        {"kind": "closed_form", "path": str(sft), "reference": str(sft), "chat_template": "none"}
    ).score(ROWS)
    assert scores == pytest.approx([0.0] * len(ROWS), abs=1e-6)


def test_closed_form_rejects_missing_paths_and_classifier_folders(lms, tmp_path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    sft, init = lms
    with pytest.raises(RewardError, match="needs reward.path"):
        load_reward({"kind": "closed_form", "path": str(sft)})
    cfg = {k: v for k, v in tiny_llama_config(hidden_size=32, num_hidden_layers=1).items() if k != "model_type"}
    LlamaForSequenceClassification(LlamaConfig(num_labels=1, **cfg)).save_pretrained(tmp_path / "rm")
    build_tokenizer().save_pretrained(tmp_path / "rm")
    with pytest.raises(RewardError, match="not a causal language model"):
        load_reward({"kind": "closed_form", "path": str(tmp_path / "rm"), "reference": str(init)})
