"""Turn-aware truncation with a real chat template (Qwen2.5's on the real ChatML tokenizer): whole earliest
turns go first, the system message and the last user turn stay; only a single turn over the budget is cut
inside, after its role header; each kind of cut is counted, in rows and in responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.config import DataConfig
from imitalign.data.dataset import build_datasets
from imitalign.data.records import DemonstrationRecord, PreferenceRecord
from imitalign.data.templates import Renderer
from imitalign.data.tokenize import tokenize_demo, tokenize_pair

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
QWEN = str(REAL / "chat_templates" / "qwen2_5.jinja")
pytestmark = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REAL / "tokenizers" / "chatml_6400"))


def text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def n_tokens(tok, renderer, messages):
    return len(tok(renderer.render_prompt(messages), add_special_tokens=False).input_ids)


SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Tell me about the history of the printing press in Europe. " * 6},
    {"role": "assistant", "content": "Gutenberg built a press around 1440 in Mainz. " * 6},
    {"role": "user", "content": "And what came after it, in the next century? " * 4},
    {"role": "assistant", "content": "Presses spread to hundreds of towns. " * 4},
    {"role": "user", "content": "Name one printer."},
]


def test_whole_earliest_turns_go_first(tok):
    renderer = Renderer(tok, QWEN)
    prompt = [SYSTEM, *TURNS]
    kept = [SYSTEM, *TURNS[2:]]  # the first exchange dropped
    budget = n_tokens(tok, renderer, kept)
    assert n_tokens(tok, renderer, prompt) > budget > n_tokens(tok, renderer, [SYSTEM, TURNS[-1]])
    rec = DemonstrationRecord(prompt, "Aldus Manutius.", "x:1")
    ex, note = tokenize_demo(rec, tok, renderer, 10_000, max_prompt_length=budget)
    assert text(tok, ex.prompt_ids) == renderer.render_prompt(kept)  # a well-formed conversation, from its start
    assert (note.turns_dropped, note.cut_inside, len(ex.prompt_ids)) == (2, False, budget)
    # one token less and the next exchange goes too: the system message and the last user turn stay
    ex, note = tokenize_demo(rec, tok, renderer, 10_000, max_prompt_length=budget - 1)
    assert text(tok, ex.prompt_ids) == renderer.render_prompt([SYSTEM, TURNS[-1]])
    assert (note.turns_dropped, note.cut_inside) == (4, False)


def test_a_single_turn_over_the_budget_is_cut_after_its_role_header(tok):
    renderer = Renderer(tok, QWEN)
    long_turn = {"role": "user", "content": "ActionListener(event -> update(model, view)); " * 40 + "Why?"}
    rec = PreferenceRecord([SYSTEM, long_turn], "Because.", "No.", "x:2")
    full, _ = tokenize_pair(rec, tok, renderer, 10_000)
    ex, note = tokenize_pair(rec, tok, renderer, 10_000, max_prompt_length=60)
    prompt = text(tok, ex.prompt_ids)
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    assert prompt.startswith(head) and prompt.endswith("Why?<|im_end|>\n<|im_start|>assistant\n")
    kept = prompt[len(head) : -len("<|im_end|>\n<|im_start|>assistant\n")]
    assert long_turn["content"].endswith(kept) and len(kept) < len(long_turn["content"])  # its end, cut inside
    assert note.cut_inside and note.turns_dropped == 0
    assert 55 <= len(ex.prompt_ids) <= 60  # as much of the turn's end as the budget holds
    assert text(tok, ex.chosen_ids) == "Because.<|im_end|>" and len(full.prompt_ids) > len(ex.prompt_ids)


def test_counts_in_rows_and_responses(tmp_path, tok):
    """A pair with both responses cut counts as one row and two responses; prompt cuts by kind."""
    rows = [
        {"prompt": [SYSTEM, *TURNS], "chosen": "Aldus. " * 80, "rejected": "Caxton. " * 80},  # turns, 2 responses
        {"prompt": [SYSTEM, {"role": "user", "content": "word " * 300}], "chosen": "a", "rejected": "b"},  # inside
        {"prompt": "Hi.", "chosen": "Hello. " * 200, "rejected": "Hey."},  # one response cut
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train={"path": str(path)}, chat_template=QWEN, max_length=200, max_prompt_length=150)
    _, _, report = build_datasets(cfg, tok, "preference", log=False)
    t = report.train
    assert (t.prompt_truncated, t.prompt_turns_dropped, t.prompt_cut_inside) == (2, 1, 1)
    assert (t.response_truncated, t.responses_truncated) == (2, 3)
    summary = report.summary()
    assert "2 prompts (1 lost earliest turns, 1 cut inside their last user turn), 3 responses in 2 rows" in summary
    saved = report.to_dict()["train"]
    assert (saved["responses_truncated"], saved["response_truncated"], saved["prompt_cut_inside"]) == (3, 2, 1)


def test_a_dialogue_longer_than_max_length_loses_turns_not_the_row(tok):
    renderer = Renderer(tok, QWEN)
    rec = DemonstrationRecord([SYSTEM, *TURNS], "Aldus Manutius.", "x:3")
    full = n_tokens(tok, renderer, [SYSTEM, *TURNS])
    ex, note = tokenize_demo(rec, tok, renderer, full - 10)  # the prompt alone is over max_length
    assert ex is not None and note.turns_dropped > 0 and not note.cut_inside
    assert text(tok, ex.prompt_ids) == renderer.render_prompt([SYSTEM, *TURNS[note.turns_dropped :]])
    # a single turn that long is not cut without max_prompt_length: the row is dropped, as before
    one = DemonstrationRecord([SYSTEM, {"role": "user", "content": "word " * 400}], "ok", "x:4")
    assert tokenize_demo(one, tok, renderer, 100)[1].dropped == "prompt_too_long"
