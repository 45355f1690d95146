"""Reading and rendering candidate/query files: every format, every shape, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from near_service.core.errors import InputError, RecordError
from near_service.core.records import load_records, load_texts, record_shape, render_records

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
ROWS = [
    ALPACA,
    {"question": "What is 2 + 2?", "answer": "4"},
    {"text": "  exactly this text \n"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
]


def test_shapes() -> None:
    assert [record_shape(r) for r in ROWS] == ["alpaca", "qa", "text", "chat", "sharegpt"]
    assert record_shape({"foo": 1}) is None


def test_default_template() -> None:
    assert render_records(ROWS) == [
        "Add the numbers.\n2 and 3\n5",
        "What is 2 + 2?\n4",
        "  exactly this text \n",
        "user: hi\nassistant: hello",
        "user: hi\nassistant: hello",
    ]


def test_prompt_template_drops_the_answer() -> None:
    assert render_records(ROWS, "prompt") == [
        "Add the numbers.\n2 and 3",
        "What is 2 + 2?",
        "  exactly this text \n",
        "user: hi",
        "user: hi",
    ]


def test_dataflex_template_is_byte_exact() -> None:
    # DataFlex offline_near_selector._load_alpaca_json renders exactly this.
    rec = {"instruction": "I", "input": "", "output": "O", "prediction": "P"}
    assert render_records([rec], "dataflex") == ["Instruction: I\nInput: \nOutput: O\nPrediction:P"]
    assert render_records([{"instruction": "I"}], "dataflex") == ["Instruction: I\nInput: \nOutput: \nPrediction:"]


def test_dataflex_template_rejects_text_records() -> None:
    with pytest.raises(RecordError, match=r"row 0.*'text'"):
        render_records([{"text": "x"}], "dataflex", source="pool.jsonl")


def test_format_string_template() -> None:
    assert render_records([{"q": "a", "a": 1}], "Q: {q}\nA: {a}") == ["Q: a\nA: 1"]
    with pytest.raises(RecordError, match=r"f\.jsonl: row 1 lacks field\(s\) \['a'\].*fields seen: \['q'\]"):
        render_records([{"q": "a", "a": 1}, {"q": "b"}], "{q} {a}", source="f.jsonl")


def test_unknown_template() -> None:
    with pytest.raises(InputError, match="unknown template 'fancy'"):
        render_records(ROWS, "fancy")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "save_to_disk", "datasetdict"])
def test_file_formats(tmp_path: Path, fmt: str) -> None:
    rows = [ALPACA, {"instruction": "Second", "input": "", "output": "x"}]
    if fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        path = tmp_path / "ds"
        ds = datasets.Dataset.from_list(rows)
        (datasets.DatasetDict({"train": ds}) if fmt == "datasetdict" else ds).save_to_disk(str(path))
    assert load_records(path) == rows


def test_datasetdict_with_several_splits_names_them(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list([ALPACA])
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(RecordError, match=r"splits \['test', 'train'\]; point at one split"):
        load_records(tmp_path / "dd")


def test_multiple_files_concatenate(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    a.write_text(json.dumps({"text": "one"}) + "\n")
    b.write_text(json.dumps([{"text": "two"}, {"text": "three"}]))
    assert load_texts([a, b]) == ["one", "two", "three"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"nope\.jsonl: no such file"):
        load_texts(tmp_path / "nope.jsonl")


def test_bad_json_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(RecordError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_records(p)


def test_bad_json_document(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('[{"text": "ok"},')
    with pytest.raises(RecordError, match=r"bad\.json: invalid JSON at line 1"):
        load_records(p)


def test_non_object_row(tmp_path: Path) -> None:
    p = tmp_path / "rows.json"
    p.write_text('[{"text": "ok"}, "just a string"]')
    with pytest.raises(RecordError, match="row 1 is str"):
        load_records(p)


def test_unknown_shape_names_file_row_and_fields(tmp_path: Path) -> None:
    p = tmp_path / "odd.jsonl"
    p.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"title": "t", "body": "b"}) + "\n")
    with pytest.raises(RecordError, match=r"odd.jsonl: row 1: unknown record shape; fields seen: \['body', 'title'\]"):
        load_texts(p)


def test_empty_set(tmp_path: Path) -> None:
    p = tmp_path / "empty.json"
    p.write_text("[]")
    with pytest.raises(InputError, match="the query set is empty"):
        load_texts(p, what="query")


def test_malformed_chat(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"messages\[0\] must be an object with 'role' and 'content'"):
        render_records([{"messages": [{"text": "hi"}]}])


def test_unreadable_inputs_say_what_is_expected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "queries.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\n")
    with pytest.raises(RecordError, match=r"line 1 is not valid JSON .*'question,answer'.*Expected JSON Lines"):
        load_records(csv)
    strings = tmp_path / "queries.json"
    strings.write_text(json.dumps(["What is 2+2?", "Name a prime."]))
    with pytest.raises(RecordError, match=r"row 0 is str .*question/answer.*\{\"text\": \"\.\.\.\"\}"):
        load_records(strings)
    from near_service.core.errors import ConfigError
    from near_service.core.settings import load_settings

    monkeypatch.setenv("NEAR_CANDIDATES", "pool.jsonl")
    with pytest.raises(ConfigError, match=r"NEAR_CANDIDATES must be JSON \(a list: NEAR_CANDIDATES='\[\"pool"):
        load_settings()


def test_choices_from_the_environment_take_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from near_service.core.errors import ConfigError
    from near_service.core.settings import load_settings

    monkeypatch.setenv("NEAR_LOG_LEVEL", "WARNING")  # Python logging's spelling
    monkeypatch.setenv("NEAR_DEVICE", " CPU ")
    s = load_settings()
    assert (s.log_level, s.device) == ("warning", "cpu")
    monkeypatch.setenv("NEAR_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="log_level"):
        load_settings()
