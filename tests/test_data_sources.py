"""Reading rows: every file type, datasets folders, hub ids (mocked), locations, and the read errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imitalign.data.records import DataError
from imitalign.data.sources import iter_rows

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # ../shared/data/real
ROWS = [{"prompt": "p0", "response": "r0"}, {"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
needs_real = pytest.mark.skipif(not REAL.exists(), reason="../shared/data/real is absent")


def write_jsonl(path: Path, rows: list[dict], blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_jsonl_locations_are_one_based_lines(tmp_path, name):
    path = write_jsonl(tmp_path / name, ROWS, blank_after=1)  # line 2 is blank
    got = list(iter_rows(str(path)))
    assert [loc for loc, _ in got] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert [row for _, row in got] == ROWS


def test_json_list_and_data_object_use_row_indices(tmp_path):
    plain = tmp_path / "rows.json"
    plain.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}))
    for path in (plain, wrapped):
        got = list(iter_rows(str(path)))
        assert [loc for loc, _ in got] == [f"{path}[0]", f"{path}[1]", f"{path}[2]"]
        assert [row for _, row in got] == ROWS


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path):
    path = write_jsonl(tmp_path / "actually_lines.json", ROWS)
    got = list(iter_rows(str(path)))
    assert [loc for loc, _ in got] == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_parquet(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    got = list(iter_rows(str(path)))
    assert got == [(f"{path}[{i}]", row) for i, row in enumerate(ROWS)]


def test_saved_dataset_and_dataset_dict(tmp_path):
    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    assert list(iter_rows(str(single))) == [(f"{single}[{i}]", row) for i, row in enumerate(ROWS)]

    both = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(both))
    assert [loc for loc, _ in iter_rows(str(both))] == [f"{both}[train][{i}]" for i in range(3)]
    assert list(iter_rows(str(both), split="test")) == [(f"{both}[test][0]", ROWS[0])]
    with pytest.raises(DataError, match=r"no split 'validation'.*splits: train, test"):
        list(iter_rows(str(both), split="validation"))


def test_folder_of_data_files_chooses_the_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[1:]), tmp_path / "data" / "train-00000-of-00001.parquet")
    train = [row for _, row in iter_rows(str(tmp_path))]  # no split: the train files
    assert train == ROWS[1:] + ROWS
    assert [row for _, row in iter_rows(str(tmp_path), split="test")] == ROWS[:1]
    with pytest.raises(DataError, match="no data file for split 'dev'"):
        list(iter_rows(str(tmp_path), split="dev"))


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert [row for _, row in iter_rows(str(path), limit=2)] == ROWS[:2]


def test_hub_id_goes_through_load_dataset_only_when_not_local(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, split):
        calls.append((path, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = list(iter_rows("someone/prefs", split="test_prefs"))
    assert calls == [("someone/prefs", "test_prefs")]
    assert got[0] == ("someone/prefs[test_prefs][0]", ROWS[0])

    # A missing local file is an error of its own, never a hub lookup.
    for missing in ("data/prefs.jsonl", str(tmp_path / "nope.parquet"), "./prefs", "a/b/c"):
        with pytest.raises(DataError, match="data file not found"):
            iter_rows(missing)
    assert len(calls) == 1


def test_missing_file_lists_the_data_files_beside_it(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data file not found: .*trian\.jsonl \(data files in .*: train\.jsonl\)"):
        iter_rows(str(tmp_path / "trian.jsonl"))


def test_malformed_jsonl_names_file_line_and_json_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n{"prompt": "a", "response": }\n')
    rows = iter_rows(str(path))
    assert next(rows)[0] == f"{path}:1"
    assert next(rows)[0] == f"{path}:2"
    with pytest.raises(DataError) as err:
        next(rows)
    assert str(err.value) == f"{path}:3: malformed JSON: Expecting value (line 3, column 29)"


def test_single_object_json_is_one_row(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "label": True}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(row))
    assert list(iter_rows(str(path))) == [(f"{path}[0]", row)]
    # an object holding one list of rows under a key that is not a field is a holder, whatever else it has
    holder = tmp_path / "holder.json"
    holder.write_text(json.dumps({"version": 2, "data": ROWS}))
    assert [r for _, r in iter_rows(str(holder))] == ROWS
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(DataError, match=r"expected a list of rows \(\[\{\.\.\.\}, \{\.\.\.\}\]\) or one row"):
        list(iter_rows(str(scalar)))


def test_malformed_json_and_non_object_rows(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]')
    with pytest.raises(DataError, match=rf"^{path}:3: malformed JSON: .*line 3"):
        list(iter_rows(str(path)))
    lines = tmp_path / "lists.jsonl"
    lines.write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    with pytest.raises(DataError, match=rf"^{lines}:2: expected a JSON object \(one row\), got list"):
        list(iter_rows(str(lines)))
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read the file"):
        list(iter_rows(str(gz)))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,response\na,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_rows(str(path)))


@needs_real
def test_real_files_read():
    hh = REAL / "hh_rlhf" / "harmless-base_test.jsonl.gz"
    rows = list(iter_rows(str(hh)))
    assert len(rows) == 2312
    assert rows[0][0] == f"{hh}:1" and rows[-1][0] == f"{hh}:2312"
    assert set(rows[0][1]) == {"chosen", "rejected"}
    tiny = list(iter_rows(str(REAL / "alpaca" / "alpaca_tiny.json")))
    demo = list(iter_rows(str(REAL / "alpaca" / "alpaca_en_demo.json")))
    assert (len(tiny), len(demo)) == (100, 999)
    assert set(tiny[0][1]) == {"instruction", "input", "output", "text"}
    assert set(demo[0][1]) == {"instruction", "input", "output"}
