"""Reading candidate and query files, and rendering their records to the texts we embed.

Files: a JSON list, JSONL, parquet, or a ``datasets.save_to_disk`` folder (a Dataset, or a
DatasetDict with one split). Record shapes:

- ``alpaca``: ``instruction``, optional ``input``, ``output``
- ``qa``: ``question``/``answer`` or ``prompt``/``response``/``completion`` (GSM8K and friends)
- ``text``: ``text``, embedded exactly as it is
- ``chat``: ``messages`` as ``[{"role", "content"}]``
- ``sharegpt``: ``conversations`` as ``[{"from", "value"}]``

Templates (``--template``):

- ``default``: the record's natural text (fields joined by newlines, chat turns as ``role: text``)
- ``dataflex``: DataFlex's offline selector rendering, byte for byte:
  ``Instruction: …\\nInput: …\\nOutput: …\\nPrediction:…``
- ``prompt``: only what the model is asked (no output / last assistant turn)
- any string with ``{field}`` placeholders, e.g. ``"{question}\\n{answer}"``

>>> render_records([{"instruction": "Add", "input": "1 2", "output": "3"}], "dataflex")
['Instruction: Add\\nInput: 1 2\\nOutput: 3\\nPrediction:']
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from near_schema import fingerprint
from near_service.core.errors import InputError, RecordError

__all__ = ["fingerprint", "load_records", "load_texts", "record_shape", "render_records"]

Record = dict[str, Any]
NAMED_TEMPLATES = ("default", "dataflex", "prompt")
ACCEPTED_FIELDS = (
    "instruction/input/output (alpaca), question/answer or prompt/response (qa), text, "
    "messages (chat) or conversations (sharegpt)"
)
_QA_PAIRS = (("question", "answer"), ("prompt", "response"), ("prompt", "completion"))
_ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def load_records(path: str | Path) -> list[Record]:
    """Read every record of one file or ``save_to_disk`` folder, in file order."""
    p = Path(path)
    if not p.exists():
        raise RecordError(f"{p}: no such file or folder")
    if p.is_dir():
        return _load_dataset_dir(p)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as exc:
            raise RecordError(f"{p}: not a readable parquet file ({exc})") from exc
        return _check_objects(rows, p)
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{p}: not UTF-8 text ({exc})") from exc
    if suffix == ".jsonl" or (suffix != ".json" and not raw.lstrip().startswith("[")):
        return _parse_jsonl(raw, p)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise RecordError(
                f"{p}: expected a JSON list of records (or JSONL), got an object with keys {sorted(data)[:10]}"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise RecordError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
    return _check_objects(data, p)


def _parse_jsonl(raw: str, p: Path) -> list[Record]:
    rows: list[Any] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RecordError(
                f"{p}: line {lineno} is not valid JSON ({exc.msg}): {line[:60]!r}. Expected JSON Lines (one "
                f'object per line, e.g. {{"text": "..."}}), a JSON list of objects, parquet, or a '
                "datasets.save_to_disk folder; CSV and plain text are not read"
            ) from exc
    return _check_objects(rows, p)


def _load_dataset_dir(p: Path) -> list[Record]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - part of the server extra
        raise RecordError(f"{p}: reading save_to_disk folders needs the 'datasets' package") from exc
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise RecordError(f"{p}: not a JSON/JSONL/parquet file or a datasets.save_to_disk folder ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise RecordError(
                f"{p}: a DatasetDict with splits {sorted(ds)}; point at one split's folder, e.g. {p / sorted(ds)[0]}"
            )
        ds = next(iter(ds.values()))
    return _check_objects(ds.to_list(), p)


def _check_objects(rows: Sequence[Any], p: Path) -> list[Record]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(
                f"{p}: row {i} is {type(row).__name__} ({str(row)[:40]!r}), expected an object with fields: "
                f'{ACCEPTED_FIELDS} (for plain strings write {{"text": "..."}} per row)'
            )
    return list(rows)


def record_shape(rec: Record) -> str | None:
    """The shape of one record (see module docstring), or None when unknown."""
    if "instruction" in rec:
        return "alpaca"
    if "messages" in rec:
        return "chat"
    if "conversations" in rec:
        return "sharegpt"
    if "text" in rec:
        return "text"
    for q, a in _QA_PAIRS:
        if q in rec and a in rec:
            return "qa"
    if "question" in rec or "prompt" in rec:
        return "qa"
    return None


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _turns(rec: Record, shape: str, where: str) -> list[tuple[str, str]]:
    key, role_key, text_key = ("messages", "role", "content") if shape == "chat" else ("conversations", "from", "value")
    turns = rec[key]
    if not isinstance(turns, list):
        raise RecordError(f"{where}: '{key}' must be a list of turns, got {type(turns).__name__}")
    out = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise RecordError(f"{where}: {key}[{j}] must be an object with '{role_key}' and '{text_key}'")
        content = turn[text_key]
        if isinstance(content, list):  # OpenAI multi-part content
            content = "".join(_s(part.get("text")) if isinstance(part, dict) else _s(part) for part in content)
        role = _s(turn[role_key])
        out.append((_ROLE_NAMES.get(role, role), _s(content)))
    return out


def _alpaca_fields(rec: Record, shape: str) -> tuple[str, str, str]:
    if shape == "alpaca":
        return _s(rec.get("instruction")), _s(rec.get("input")), _s(rec.get("output"))
    q = _s(rec.get("question", rec.get("prompt")))
    a = _s(rec.get("answer", rec.get("response", rec.get("completion"))))
    return q, "", a


def _render_one(rec: Record, template: str, where: str) -> str:
    shape = record_shape(rec)
    if shape is None:
        raise RecordError(
            f"{where}: unknown record shape; fields seen: {sorted(rec)[:20]}. Expected one of "
            "alpaca (instruction/input/output), qa (question/answer), text, chat (messages) "
            "or ShareGPT (conversations), or pass --template '{field}…'"
        )
    if template == "dataflex":
        if shape not in ("alpaca", "qa"):
            raise RecordError(
                f"{where}: template 'dataflex' renders alpaca records, this one is '{shape}' "
                f"(fields {sorted(rec)[:20]})"
            )
        if shape == "alpaca":
            instruction, inp, output = (
                _s(rec.get("instruction", "")),
                _s(rec.get("input", "")),
                _s(rec.get("output", "")),
            )
        else:
            instruction, inp, output = _alpaca_fields(rec, shape)
        return "\n".join(
            [
                f"Instruction: {instruction}",
                f"Input: {inp}",
                f"Output: {output}",
                f"Prediction:{_s(rec.get('prediction', ''))}",
            ]
        )
    prompt_only = template == "prompt"
    if shape == "text":
        return _s(rec["text"])
    if shape in ("alpaca", "qa"):
        instruction, inp, output = _alpaca_fields(rec, shape)
        parts = [instruction, inp] if prompt_only else [instruction, inp, output]
        return "\n".join(p for p in parts if p)
    turns = _turns(rec, shape, where)
    if prompt_only and turns and turns[-1][0] == "assistant":
        turns = turns[:-1]
    return "\n".join(f"{role}: {text}" for role, text in turns)


def _format_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise InputError(f"template {template!r} is not a valid format string ({exc})") from exc


def check_template(template: str) -> None:
    """Raise InputError unless ``template`` is a named template or a ``{field}`` format string."""
    if template in NAMED_TEMPLATES:
        return
    if not _format_fields(template):
        raise InputError(
            f"unknown template {template!r}: use one of {', '.join(NAMED_TEMPLATES)} "
            "or a format string with {field} placeholders"
        )


def render_records(records: Iterable[Record], template: str = "default", source: str = "records") -> list[str]:
    """Render records to texts; errors name the source, the row and the fields seen."""
    check_template(template)
    if template in NAMED_TEMPLATES:
        return [_render_one(rec, template, f"{source}: row {i}") for i, rec in enumerate(records)]
    fields = _format_fields(template)
    out = []
    for i, rec in enumerate(records):
        missing = [f for f in fields if f not in rec]
        if missing:
            raise RecordError(
                f"{source}: row {i} lacks field(s) {missing} used by the template; fields seen: {sorted(rec)[:20]}"
            )
        out.append(template.format_map({k: _s(v) for k, v in rec.items()}))
    return out


def load_texts(paths: str | Path | Sequence[str | Path], template: str = "default", what: str = "input") -> list[str]:
    """Load and render one or several files, concatenated in order. Empty sets are an error."""
    check_template(template)
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise InputError(f"no {what} file given")
    texts: list[str] = []
    for path in path_list:
        texts.extend(render_records(load_records(path), template, source=str(path)))
    if not texts:
        raise InputError(f"the {what} set is empty: {', '.join(str(p) for p in path_list)} hold no records")
    return texts
