"""Every layout users bring, on real rows where they exist (../shared/data/real/formats, used in place) and on
small rows written as each toolkit documents its layout otherwise: the prompt/response split as rendered by a
real chat template (Qwen2.5's, on the real ChatML tokenizer), one EOS, the trained-token mask, skipped counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.config import DataConfig
from imitalign.data.collate import collate_demos, collate_pairs
from imitalign.data.dataset import build_datasets, parse_data
from imitalign.data.records import DataError
from imitalign.data.tokenize import TokenizedPair, TokenizedUnpaired

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
FORMATS = REAL / "formats"
QWEN = str(REAL / "chat_templates" / "qwen2_5.jinja")
SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
pytestmark = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REAL / "tokenizers" / "chatml_6400"))


def text(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def build(path, kind: str, tok, **data):
    cfg = DataConfig(train={"path": str(path), **data.pop("train", {})}, chat_template=QWEN, **data)
    return build_datasets(cfg, tok, kind, log=False)


def write(tmp_path: Path, rows, name: str = "rows.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_trained(tok, ex) -> None:
    """One EOS, at the end of each response; the mask trains exactly the response tokens."""
    eos = tok.eos_token_id
    responses = [ex.chosen_ids, ex.rejected_ids] if isinstance(ex, TokenizedPair) else [ex.response_ids]
    for ids in responses:
        assert ids[-1] == eos and ids.count(eos) == 1
    batch = collate_pairs([ex], 0) if isinstance(ex, TokenizedPair) else collate_demos([ex], 0)
    for row, ids in zip(batch["response_mask"], responses, strict=True):
        n_p = len(ex.prompt_ids)
        assert row.tolist() == [False] * n_p + [True] * len(ids) + [False] * (len(row) - n_p - len(ids))
    assert ex.prompt_ids.count(eos) == text(tok, ex.prompt_ids).count("<|im_end|>")  # ends of earlier turns only


# ------------------------------------------------------------------------------------------ real rows


def test_llamafactory_sharegpt_pairwise_real_rows(tok):
    rows = json.loads((FORMATS / "llamafactory_dpo_en_demo_first20.json").read_text())
    train, _, report = build(FORMATS / "llamafactory_dpo_en_demo_first20.json", "preference", tok, max_length=4096)
    assert report.train.format == "sharegpt" and (report.train.parsed, report.train.n_skipped) == (20, 0)
    assert len(train) == 20 and all(isinstance(ex, TokenizedPair) for ex in train)
    for ex, row in zip(train, rows, strict=True):
        assert_trained(tok, ex)
        assert text(tok, ex.chosen_ids) == row["chosen"]["value"] + "<|im_end|>"
        assert text(tok, ex.rejected_ids) == row["rejected"]["value"] + "<|im_end|>"
        prompt = text(tok, ex.prompt_ids)
        turns = row["conversations"]
        own = [t["value"] for t in turns if t["from"] == "system"]  # a system turn of the row, else the template's
        system = own[0] if own else "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        assert prompt.startswith(f"<|im_start|>system\n{system}<|im_end|>\n") and prompt.endswith(
            f"{turns[-1]['value']}<|im_end|>\n<|im_start|>assistant\n"
        )
        assert prompt.count("<|im_start|>user\n") == sum(t["from"] == "human" for t in turns)
        assert prompt.count("<|im_start|>assistant\n") == sum(t["from"] == "gpt" for t in turns) + 1
    assert max(len(r["conversations"]) for r in rows) > 1  # multi-turn rows are among them
    assert train[0].source == f"{FORMATS / 'llamafactory_dpo_en_demo_first20.json'}[0]"


def test_llamafactory_kto_real_rows_unpaired_and_mle(tok):
    path = FORMATS / "llamafactory_kto_en_demo_first30.json"
    rows = json.loads(path.read_text())
    train, _, report = build(path, "unpaired", tok, max_length=8192)
    assert report.train.labels == {"desirable": 19, "undesirable": 11} and report.train.n_skipped == 0
    assert [ex.label for ex in train] == [r["label"] for r in rows]
    for ex, row in zip(train, rows, strict=True):
        assert isinstance(ex, TokenizedUnpaired)
        assert text(tok, ex.response_ids) == row["messages"][-1]["content"] + "<|im_end|>"
        assert ex.kl_ids and ex.kl_ids != ex.response_ids  # a response of another prompt, for KTO's KL estimate
    # mle on the labelled file: the desirable rows only, and the report says how many were dropped
    demos, _, report = build(path, "demonstration", tok, max_length=8192)
    assert len(demos) == 19 and report.train.undesirable_dropped == 11
    assert "11 undesirable rows (label false) dropped" in report.summary()
    assert report.to_dict()["train"]["undesirable_dropped"] == 11
    assert [d.source for d in demos] == [f"{path}[{i}]" for i, r in enumerate(rows) if r["label"]]
    for ex in demos:
        assert_trained(tok, ex)


def test_torchtune_sharegpt_real_row(tok):
    (ex,), _, report = build(FORMATS / "torchtune_chat_tiny_sharegpt.json", "demonstration", tok)
    assert report.train.format == "sharegpt"
    assert text(tok, ex.prompt_ids) == (
        "<|im_start|>system\nYou are an AI assistant.<|im_end|>\n<|im_start|>user\nWhat is the meaning of life?"
        "<|im_end|>\n<|im_start|>assistant\nThe meaning of life is 42.<|im_end|>\n<|im_start|>user\nThat's "
        "ridiculous.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text(tok, ex.response_ids) == "I agree.<|im_end|>"
    assert_trained(tok, ex)


def test_trl_conversational_real_rows(tok):
    train, _, report = build(FORMATS / "trl_conversational_hh_helpful_rows.jsonl", "preference", tok)
    assert report.train.format == "preference" and len(train) == 3 and report.train.n_skipped == 0
    assert text(tok, train[1].prompt_ids).count("<|im_start|>user\n") == 2  # the multi-turn row
    assert text(tok, train[2].rejected_ids) == "Sorry, I don’t know that term.<|im_end|>"
    for ex in train:
        assert_trained(tok, ex)
    assert train[0].source.endswith("trl_conversational_hh_helpful_rows.jsonl:1")  # 1-based line


# ------------------------------------------------------------------------------- layouts without real rows


def _part(text_: str) -> list[dict]:
    return [{"type": "text", "value": text_}]


def test_llamafactory_v1_content_parts_and_loss_weight(tmp_path, tok):
    """LLaMA-Factory v1 messages: content parts, per-message loss_weight: every weighted assistant turn is one
    example (prompt = everything before it); a conversation with no weighted turn is skipped and counted."""
    conv = [
        {"role": "user", "content": _part("Hi."), "loss_weight": 0.0},
        {"role": "assistant", "content": _part("Hello!"), "loss_weight": 1.0},
        {"role": "user", "content": _part("Name a colour."), "loss_weight": 0.0},
        {"role": "assistant", "content": [*_part("Red"), *_part(".")], "loss_weight": 1.0},
    ]
    only_last = [{**m, "loss_weight": 0.0} if i == 1 else m for i, m in enumerate(conv)]
    none = [{**m, "loss_weight": 0.0} for m in conv]
    path = write(tmp_path, [{"messages": conv}, {"messages": only_last}, {"messages": none}], "v1.jsonl")
    train, _, report = build(path, "demonstration", tok)
    assert [text(tok, ex.response_ids) for ex in train] == ["Hello!<|im_end|>", "Red.<|im_end|>", "Red.<|im_end|>"]
    assert [ex.source for ex in train] == [f"{path}:1 messages[1]", f"{path}:1 messages[3]", f"{path}:2 messages[3]"]
    assert text(tok, train[0].prompt_ids) == f"{SYSTEM}<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    assert text(tok, train[1].prompt_ids).endswith(
        "Hello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert dict(report.train.skipped) == {"no_weighted_turn": 1} and report.train.records == 3
    for ex in train:
        assert_trained(tok, ex)


def test_openai_messages_with_text_parts(tmp_path, tok):
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]},
            {"role": "assistant", "content": "Red."},
        ]
    }
    (ex,), _, _ = build(write(tmp_path, [row]), "demonstration", tok)
    assert text(tok, ex.prompt_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text(tok, ex.response_ids) == "Red.<|im_end|>"
    assert_trained(tok, ex)


def test_llamafactory_v1_pair_messages(tmp_path, tok):
    user = {"role": "user", "content": _part("Name a colour."), "loss_weight": 0.0}
    rows = [
        {
            "chosen_messages": [user, {"role": "assistant", "content": _part("Red."), "loss_weight": 1.0}],
            "rejected_messages": [user, {"role": "assistant", "content": _part("Seven."), "loss_weight": 1.0}],
        },
        {
            "chosen_messages": [user, {"role": "assistant", "content": _part("Red.")}],
            "rejected_messages": [user, {"role": "assistant", "content": _part("Red.")}],
        },
    ]
    train, _, report = build(write(tmp_path, rows), "preference", tok)
    assert report.train.format == "pair_messages" and dict(report.train.skipped) == {"identical_chosen_rejected": 1}
    (ex,) = train
    assert (text(tok, ex.chosen_ids), text(tok, ex.rejected_ids)) == ("Red.<|im_end|>", "Seven.<|im_end|>")
    assert_trained(tok, ex)


def test_llamafactory_alpaca_pairwise_history_and_kto_tag(tmp_path, tok):
    rows = [
        {
            "instruction": "Name a colour.",
            "input": "",
            "chosen": "Red.",
            "rejected": "Seven.",
            "history": [["Hi.", "Hello!"]],
        }
    ]
    (ex,), _, report = build(write(tmp_path, rows), "preference", tok)
    assert report.train.format == "alpaca"
    assert text(tok, ex.prompt_ids) == (
        f"{SYSTEM}<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n"
        "Name a colour.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert_trained(tok, ex)
    kto = [
        {"instruction": "Name a colour.", "input": "", "output": "Red.", "kto_tag": True},
        {"instruction": "Name a colour.", "input": "", "output": "Seven.", "kto_tag": False},
    ]
    train, _, report = build(write(tmp_path, kto, "kto.json"), "unpaired", tok)
    assert [ex.label for ex in train] == [True, False] and report.train.labels == {"desirable": 1, "undesirable": 1}


def test_sharegpt_tags_as_in_dataset_info(tmp_path, tok):
    row = {"dialog": [{"speaker": "client", "text": "Name a colour."}, {"speaker": "bot", "text": "Red."}]}
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "client", "assistant_tag": "bot"}
    (ex,), _, _ = build(
        write(tmp_path, [row]),
        "demonstration",
        tok,
        train={"format": "sharegpt", "columns": {"conversations": "dialog"}, "tags": tags},
    )
    assert text(tok, ex.response_ids) == "Red.<|im_end|>"
    with pytest.raises(
        DataError,
        match=r"dialog\[0\] should have 'role' and 'content' keys, has 'speaker', 'text' \(other keys: set "
        r"data\.train\.tags",
    ):
        build(write(tmp_path, [row]), "demonstration", tok, train={"columns": {"conversations": "dialog"}})


def test_plain_paired_columns_through_columns(tmp_path, tok):
    rows = [{"question": "Name a colour.", "response_j": "Red.", "response_k": "Seven."}]
    cols = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    (ex,), _, _ = build(write(tmp_path, rows), "preference", tok, train={"columns": cols})
    assert (text(tok, ex.chosen_ids), text(tok, ex.rejected_ids)) == ("Red.<|im_end|>", "Seven.<|im_end|>")
    assert_trained(tok, ex)


# ----------------------------------------------------------------------------------- refusals and hints


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
            r"rows.jsonl:1: messages\[0\]\.content\[1\] is a 'image_url' part; only text parts",
        ),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, r"is a 'input_audio' part"),
        ({"from": "observation", "value": "42"}, r"messages\[0\] is a tool result turn \(from 'observation'\)"),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]},
            r"messages\[0\] is a tool call turn",
        ),
    ],
)
def test_non_text_parts_and_tool_turns_are_refused(tmp_path, message, expected):
    row = {"messages": [message, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(DataError, match=expected):
        parse_data(DataConfig(train={"path": str(write(tmp_path, [row], "rows.jsonl"))}), "demonstration")


def test_stack_exchange_paired_columns_get_both_readings_and_no_sft_one(tmp_path):
    path = write(tmp_path, [{"question": "q", "response_j": "good", "response_k": "bad"}], "se.jsonl")
    with pytest.raises(DataError) as err:
        parse_data(DataConfig(train={"path": str(path)}), "demonstration")
    msg = str(err.value)
    assert "allow 2 readings and none is picked (which of 'response_j' / 'response_k' is the preferred" in msg
    assert "- preference: columns: {prompt: question, chosen: response_j, rejected: response_k}" in msg
    assert "- preference: columns: {prompt: question, chosen: response_k, rejected: response_j}" in msg
    assert "response: response_" not in msg and "→" not in msg  # never the rejected answer as an SFT target
    # with a 'prompt' column the layout reads as a demonstration missing 'response': still no sibling offered
    path = write(tmp_path, [{"prompt": "q", "response_j": "good", "response_k": "bad"}], "se2.jsonl")
    with pytest.raises(DataError) as err:
        parse_data(DataConfig(train={"path": str(path)}), "demonstration")
    assert "missing field 'response'" in str(err.value) and "Did you mean" not in str(err.value)
    assert "chosen: response_j, rejected: response_k" in str(err.value)


def test_llamafactory_column_names_are_translated_in_the_error(tmp_path):
    with pytest.raises(DataError, match=r"columns: 'query' is not a field name — did you mean 'input'\?"):
        path = write(tmp_path, [{"q": "p", "a": "r"}], "x.jsonl")
        parse_data(DataConfig(train={"path": str(path), "columns": {"query": "q"}}), "demonstration")


def test_chosen_messages_are_pairs_never_sft_messages(tmp_path):
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]
    bad = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]
    path = write(tmp_path, [{"chosen_messages": conv, "rejected_messages": bad}], "cm.jsonl")
    parsed = parse_data(DataConfig(train={"path": str(path)}), "demonstration")
    assert parsed.report.train.format == "pair_messages" and parsed.train[0].response == "good"
    assert "1 preference rows used as demonstrations (their chosen responses)" in parsed.report.summary()
    # a renamed pair (no layout fits) is offered as a pair only, never as 'messages'
    path = write(tmp_path, [{"good_conv": conv, "bad_conv": bad}], "renamed.jsonl")
    with pytest.raises(DataError) as err:
        parse_data(DataConfig(train={"path": str(path)}), "demonstration")
    assert "messages: good_conv" not in str(err.value) and "messages: bad_conv" not in str(err.value)
    assert "read as a preference file with: columns: {chosen: good_conv, rejected: bad_conv}" in str(err.value)


def test_errors_name_the_file_column_and_the_assumed_layout(tmp_path):
    row = {"chosen_messages": [{"role": "user", "content": 3}], "rejected_messages": []}
    with pytest.raises(DataError) as err:
        parse_data(DataConfig(train={"path": str(write(tmp_path, [row], "e.jsonl"))}), "preference")
    assert "e.jsonl:1: chosen_messages[0].content should be a string or a list of text parts, got int" in str(err.value)
    assert "[read as format 'pair_messages'; another layout: set data.train.format]" in str(err.value)


def test_unpaired_rows_refused_by_a_pair_objective_and_label_type_checked(tmp_path):
    rows = [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "p", "completion": "b", "label": False}]
    path = write(tmp_path, rows, "u.jsonl")
    with pytest.raises(DataError, match="rows are unpaired feedback.*use an unpaired objective"):
        parse_data(DataConfig(train={"path": str(path)}), "preference")
    parsed = parse_data(DataConfig(train={"path": str(path)}), "unpaired")
    assert [r.label for r in parsed.train] == [True, False]
    bad = write(tmp_path, [{"prompt": "p", "completion": "a", "thumb": "up"}], "b.jsonl")
    with pytest.raises(DataError, match=r"b.jsonl:1: field 'thumb' is the unpaired-feedback label.*got 'up'"):
        parse_data(DataConfig(train={"path": str(bad), "columns": {"label": "thumb"}}), "unpaired")
    # a non-boolean 'label' that was not mapped is an ordinary column: kept in extra, the rows stay demonstrations
    other = write(tmp_path, [{"prompt": "p", "response": "a", "label": "sports"}], "o.jsonl")
    assert parse_data(DataConfig(train={"path": str(other)}), "demonstration").train[0].extra == {"label": "sports"}
    # a pair file's own boolean 'label' column is not feedback unless mapped: kept in extra
    pairs = write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b", "label": True}], "pl.jsonl")
    assert parse_data(DataConfig(train={"path": str(pairs)}), "preference").train[0].extra == {"label": True}
    with pytest.raises(DataError, match="label belongs to rows with one response"):
        parse_data(DataConfig(train={"path": str(pairs), "columns": {"label": "label"}}), "preference")


def test_pairs_broken_into_unpaired_halves(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    parsed = parse_data(DataConfig(train={"path": str(write(tmp_path, rows, "p.jsonl"))}), "unpaired")
    assert [(r.response, r.label) for r in parsed.train[:2]] == [("good 0", True), ("bad 0", False)]
    assert "3 preference pairs broken into 6 unpaired rows" in parsed.report.summary()
