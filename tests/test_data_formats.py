"""Rows to records: every format (named and detected), column mapping, the real HH-RLHF and Alpaca rows, and
the message of each bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imitalign.data.formats import parse_rows, split_hh
from imitalign.data.records import DataError, DemonstrationRecord, PreferenceRecord, PromptRecord
from imitalign.data.sources import iter_rows

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # ../shared/data/real
needs_real = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")
HH = REAL / "hh_rlhf" / "harmless-base_test.jsonl.gz"

USER = [{"role": "user", "content": "Name a colour."}]


def parse(tmp_path: Path, rows: list[dict], fmt: str = "auto", columns: dict | None = None, strict: bool = False):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_rows(iter_rows(str(path)), fmt, columns, source=str(path), strict=strict)


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("named", [False, True])
def test_every_format_named_or_detected(tmp_path, named):
    cases = {
        "preference": (
            {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven.", "id": 7},
            PreferenceRecord(USER, "Red.", "Seven.", "", {"id": 7}),
        ),
        "ultrafeedback": (
            {
                "prompt": "Name a colour.",
                "chosen": [*USER, {"role": "assistant", "content": "Red."}],
                "rejected": [*USER, {"role": "assistant", "content": "Seven."}],
                "score_chosen": 9.0,
            },
            PreferenceRecord(USER, "Red.", "Seven.", "", {"prompt": "Name a colour.", "score_chosen": 9.0}),
        ),
        "hh": (
            {
                "chosen": "\n\nHuman: Name a colour.\n\nAssistant: Red.",
                "rejected": "\n\nHuman: Name a colour.\n\nAssistant: Seven.",
            },
            PreferenceRecord(USER, "Red.", "Seven.", "", {}),
        ),
        "demonstration": ({"prompt": "Name a colour.", "response": "Red."}, DemonstrationRecord(USER, "Red.", "", {})),
        "messages": (
            {"messages": [*USER, {"role": "assistant", "content": "Red."}], "lang": "en"},
            DemonstrationRecord(USER, "Red.", "", {"lang": "en"}),
        ),
        "alpaca": (
            {"instruction": "Name a colour.", "input": "", "output": "Red."},
            DemonstrationRecord(USER, "Red.", "", {}),
        ),
        "prompt": ({"prompt": "Name a colour.", "category": "easy"}, PromptRecord(USER, "", {"category": "easy"})),
    }
    for fmt, (row, expected) in cases.items():
        records, stats = parse(tmp_path, [row], fmt if named else "auto")
        assert stats.format == fmt
        assert len(records) == 1 and stats.skipped == {}
        got = records[0]
        assert got.source == f"{tmp_path / 'rows.jsonl'}:1"
        assert type(got) is type(expected)
        assert {**got.__dict__, "source": ""} == expected.__dict__, fmt


@pytest.mark.parametrize("container", ["jsonl", "json", "jsonl.gz", "parquet", "save_to_disk"])
def test_nested_rows_survive_every_container(tmp_path, container):
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "chosen": [*USER, {"role": "assistant", "content": f"Red {i}."}],
            "rejected": [*USER, {"role": "assistant", "content": f"Seven {i}."}],
            "score": float(i),
        }
        for i in range(3)
    ]
    path = tmp_path / f"rows.{container}"
    if container == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif container == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    elif container == "json":
        path.write_text(json.dumps(rows))
    elif container == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    records, stats = parse_rows(iter_rows(str(path)), strict=True)
    assert stats.format == "ultrafeedback"
    assert [(r.prompt, r.chosen, r.rejected, r.extra) for r in records] == [
        (USER, f"Red {i}.", f"Seven {i}.", {"score": float(i)}) for i in range(3)
    ]
    first = ":1" if container.startswith("jsonl") else "[0]"  # 1-based line, or [0-based row index]
    assert records[0].source == f"{path}{first}"


def test_message_list_prompts_and_conversational_responses(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, *USER]
    rows = [
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Red."}], "rejected": "Seven."},
        {"prompt": prompt, "chosen": "Blue.", "rejected": [{"from": "gpt", "value": "Nine."}]},  # ShareGPT keys
    ]
    records, stats = parse(tmp_path, rows)
    assert stats.format == "preference"
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
        (prompt, "Red.", "Seven."),
        (prompt, "Blue.", "Nine."),
    ]


def test_alpaca_input_is_joined_with_a_blank_line_and_system_column(tmp_path):
    rows = [
        {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "You translate."},
        {"instruction": "Say hi.", "input": None, "output": "hi"},
    ]
    records, _ = parse(tmp_path, rows, "alpaca")
    assert records[0].prompt == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate.\n\nbonjour"},
    ]
    assert records[1].prompt == [{"role": "user", "content": "Say hi."}]
    # A prompt with its own system turn keeps it; the system column then stays in extra (nothing is lost).
    own = [{"role": "system", "content": "A"}, *USER]
    records, _ = parse(tmp_path, [{"prompt": own, "response": "Red.", "system": "B"}])
    assert records[0].prompt == own and records[0].extra == {"system": "B"}


def test_hh_split_rules():
    prompt, response = split_hh(
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nAssistant: Anything else?\n\nHuman: No\n\nAssistant:  Bye. "
    )
    assert prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.\n\nAnything else?"},  # repeated Assistant turns joined
        {"role": "user", "content": "No"},
    ]
    assert response == "Bye."
    with pytest.raises(ValueError, match="no"):
        split_hh("\n\nHuman: only a question")
    assert split_hh("Human: Hi\n\nAssistant: Yo") == ([{"role": "user", "content": "Hi"}], "Yo")  # no leading "\n\n"


def test_column_mapping(tmp_path):
    rows = [{"question": "Name a colour.", "good": "Red.", "bad": "Seven.", "chosen": "unrelated", "id": 1}]
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    records, stats = parse(tmp_path, rows, "auto", columns)
    assert stats.format == "preference"
    rec = records[0]
    assert (rec.prompt, rec.chosen, rec.rejected) == (USER, "Red.", "Seven.")
    assert rec.extra == {"chosen": "unrelated", "id": 1}  # mapped columns consumed, the rest kept

    with pytest.raises(DataError) as err:
        parse(tmp_path, [{"question": "q", "good": "a", "worse": "b"}], "preference", columns)
    msg = str(err.value)
    assert "rows.jsonl:1: missing field 'rejected' (mapped to column 'bad') for format 'preference'" in msg
    assert "the row has fields 'question', 'good', 'worse'" in msg

    with pytest.raises(DataError, match=r"columns: 'promt' is not a field name — did you mean 'prompt'\?"):
        parse(tmp_path, rows, "auto", {"promt": "question"})


# ------------------------------------------------------------------------------------------ real rows


@needs_real
def test_real_hh_rows_parse_with_counted_skips(caplog):
    with caplog.at_level(logging.WARNING, logger="imitalign.data"):
        records, stats = parse_rows(iter_rows(str(HH)), source=str(HH))
    assert stats.format == "hh"
    assert (stats.rows_read, stats.parsed, len(records)) == (2312, 2303, 2303)
    assert dict(stats.skipped) == {"prompt_mismatch": 5, "empty_chosen": 4}
    assert stats.examples["prompt_mismatch"] == [f"{HH}:1255", f"{HH}:1689", f"{HH}:1951"]
    assert stats.examples["empty_chosen"] == [f"{HH}:87", f"{HH}:517", f"{HH}:926"]
    assert "9 skipped" in caplog.text and "[empty_chosen]" in caplog.text

    first = records[0]
    assert first.source == f"{HH}:1"
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.rejected.startswith("There are lots of funny things you can do with pens")
    for rec in records:  # every prompt alternates user/assistant and ends with the user (4 rows needed a join)
        roles = [m["role"] for m in rec.prompt]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
        assert rec.chosen == rec.chosen.strip() and rec.chosen and rec.rejected
        assert rec.chosen != rec.rejected


@needs_real
def test_real_alpaca_rows_parse_as_demonstrations():
    for name, n, with_input in (("alpaca_tiny.json", 100, 46), ("alpaca_en_demo.json", 999, 421)):
        path = REAL / "alpaca" / name
        records, stats = parse_rows(iter_rows(str(path)), source=str(path), strict=True)
        assert (stats.format, stats.parsed, stats.n_skipped) == ("alpaca", n, 0)
        assert all(isinstance(r, DemonstrationRecord) and len(r.prompt) == 1 for r in records)
        assert sum("\n\n" in r.prompt[0]["content"] for r in records) == with_input
    rows = [row for _, row in iter_rows(str(REAL / "alpaca" / "alpaca_tiny.json"))]
    rec = parse_rows(iter_rows(str(REAL / "alpaca" / "alpaca_tiny.json")))[0][0]
    assert rec.prompt[0]["content"] == rows[0]["instruction"] and rec.response == rows[0]["output"]
    assert set(rec.extra) == {"text"}


# ------------------------------------------------------------------------------------------ bad input


def test_missing_field_suggests_the_close_column(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "choosen": "a", "rejected": "b"}]
    with pytest.raises(DataError) as err:
        parse(tmp_path, rows)
    assert str(err.value) == (
        f"{tmp_path / 'rows.jsonl'}:2: missing field 'chosen' for format 'preference'; the row has fields "
        "'prompt', 'choosen', 'rejected'. Did you mean 'choosen'? (map it with columns: {chosen: choosen})"
    )
    # TRL's prompt-completion layout: ``completion`` is the response.
    records, _ = parse(tmp_path, [{"prompt": "p", "completion": "c"}], "demonstration")
    assert records[0].response == "c" and records[0].extra == {}
    # Detection on a row with part of a format's fields names the missing one too.
    with pytest.raises(
        DataError, match=r":1: missing field 'rejected' for format 'preference'.*Did you mean 'rejectd'"
    ):
        parse(tmp_path, [{"prompt": "p", "chosen": "a", "rejectd": "b"}])
    with pytest.raises(
        DataError, match=r":1: missing field 'output' for format 'alpaca'.*read as a demonstration file with: "
        r"columns: \{prompt: instruction\}"
    ):
        parse(tmp_path, [{"instruction": "i", "response": "r"}])
    # What the caller needs settles a bare "prompt" row: a misnamed response is reported, not read as a prompt.
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "p", "answer": "a"}\n')
    with pytest.raises(DataError, match=r":1: missing field 'response' for format 'demonstration'.*'answer'"):
        parse_rows(iter_rows(str(path)), kind="demonstration")
    assert parse_rows(iter_rows(str(path)))[1].format == "prompt"


def test_undetectable_format_lists_the_formats(tmp_path):
    with pytest.raises(DataError) as err:
        parse(tmp_path, [{"question": "q", "answer": "a"}])
    msg = str(err.value)
    assert "rows.jsonl:1: cannot detect the data layout from the row's fields ('question', 'answer')" in msg
    assert "preference: prompt, chosen, rejected" in msg and "alpaca: instruction" in msg
    assert "read as a demonstration file with: columns: {prompt: question, response: answer}" in msg


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        (
            {"prompt": "p", "chosen": 3, "rejected": "b"},
            "preference",
            "field 'chosen' should be a string or an assistant message, got int",
        ),
        ({"prompt": None, "response": "r"}, "demonstration", "field 'prompt' should be a string, got null"),
        ({"prompt": {"text": "p"}, "response": "r"}, "demonstration", "field 'prompt' should be a string, got dict"),
        ({"messages": "hi"}, "messages", "field 'messages' should be a list of messages, got str"),
        (
            {"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            "messages",
            "messages[0].role is 'narrator'; expected one of assistant, gpt, human, system, user",
        ),
        (
            {"messages": [{"role": "user", "text": "hi"}]},
            "messages",
            "messages[0] should have 'role' and 'content' keys",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "'messages' should end with an assistant turn"),
        (
            {
                "prompt": "p",
                "chosen": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "a"}],
                "rejected": "b",
            },
            "preference",
            "or format ultrafeedback",
        ),
        ({"chosen": "Human: hi Assistant: yo", "rejected": "x"}, "hh", "need an Assistant turn"),
        ({"chosen": "just text", "rejected": "other"}, "auto", "no 'prompt', and it is not an HH-RLHF dialogue"),
    ],
)
def test_wrong_types_name_location_and_field(tmp_path, row, fmt, message):
    with pytest.raises(DataError) as err:
        parse(tmp_path, [row], fmt)
    assert str(err.value).startswith(f"{tmp_path / 'rows.jsonl'}:1: ")
    assert message in str(err.value)


def test_empty_and_identical_responses_are_counted_and_skipped(tmp_path, caplog):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "  ", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": ""},
        {"prompt": "p", "chosen": "same", "rejected": "same "},
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ]
    with caplog.at_level(logging.WARNING, logger="imitalign.data"):
        records, stats = parse(tmp_path, rows)
    path = tmp_path / "rows.jsonl"
    assert len(records) == 1 and stats.rows_read == 6
    assert dict(stats.skipped) == {
        "empty_chosen": 1,
        "empty_rejected": 1,
        "identical_chosen_rejected": 2,
        "empty_prompt": 1,
    }
    assert stats.examples["identical_chosen_rejected"] == [f"{path}:4", f"{path}:6"]
    assert "2 × chosen identical to rejected [identical_chosen_rejected]" in stats.summary()
    assert "skipped rows" in caplog.text and "chosen identical to rejected" in caplog.text

    with pytest.raises(DataError, match=rf"^{path}:2: empty chosen response \[empty_chosen\] \(strict mode"):
        parse(tmp_path, rows, strict=True)
    records, stats = parse(
        tmp_path, [{"instruction": "i", "output": " "}, {"instruction": "i", "output": "o"}], "alpaca"
    )
    assert dict(stats.skipped) == {"empty_response": 1}


def test_ultrafeedback_rows_whose_prompts_differ_are_counted(tmp_path):
    other = [{"role": "user", "content": "Another question."}]
    rows = [
        {
            "chosen": [*USER, {"role": "assistant", "content": "Red."}],
            "rejected": [*other, {"role": "assistant", "content": "No."}],
        },
        {
            "chosen": [*USER, {"role": "assistant", "content": "Red."}],
            "rejected": [*USER, {"role": "assistant", "content": "No."}],
        },
    ]
    records, stats = parse(tmp_path, rows)
    assert stats.format == "ultrafeedback" and len(records) == 1
    assert dict(stats.skipped) == {"prompt_mismatch": 1}


def test_no_rows_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        parse(tmp_path, [])
    with pytest.raises(DataError, match="unknown data format 'dpo'"):
        parse(tmp_path, [{"prompt": "p"}], "dpo")
