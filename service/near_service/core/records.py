"""Reading candidate and query files, and rendering their records to the texts we embed.

Files: a JSON list, JSONL, parquet, or a ``datasets.save_to_disk`` folder (a Dataset, or a
DatasetDict with one split). Rendering is :mod:`near_schema.templates` (shared with the client, so
a trainer renders its dataset exactly as the service does); here its errors become ``RecordError``
/ ``InputError``. Record shapes:

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from near_schema import fingerprint, templates
from near_service.core.errors import InputError, RecordError

__all__ = ["fingerprint", "load_records", "load_texts", "record_shape", "render_records"]

Record = dict[str, Any]
ACCEPTED_FIELDS = templates.ACCEPTED_FIELDS
NAMED_TEMPLATES = templates.NAMED_TEMPLATES


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
    """The shape of one record (see :mod:`near_schema.templates`), or None when unknown."""
    return templates.record_shape(rec)


def check_template(template: str) -> None:
    """Raise InputError unless ``template`` is a named template or a ``{field}`` format string."""
    try:
        templates.check_template(template)
    except templates.TemplateError as exc:
        raise InputError(str(exc)) from None


def render_records(records: Iterable[Record], template: str = "default", source: str = "records") -> list[str]:
    """Render records to texts (:func:`near_schema.templates.render_records`); errors name the source,
    the row and the fields seen."""
    try:
        return templates.render_records(records, template, source)
    except templates.RecordRenderError as exc:
        raise RecordError(str(exc)) from None
    except templates.TemplateError as exc:
        raise InputError(str(exc)) from None


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


SOURCE_FIELDS = ("source", "dataset", "task")


def record_sources(paths: str | Path | Sequence[str | Path]) -> tuple[list[str], str]:
    """The source of each record of ``paths`` (in :func:`load_texts` order), and a note saying how.

    A row's source is its ``source``, ``dataset`` or ``task`` field (the first of these that any
    row has), else the file it came from. One file with no such field gives one source.

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text(json.dumps({"text": "x", "task": "gsm8k"}) + "\\n")
    >>> _ = (d / "b.jsonl").write_text(json.dumps({"text": "y"}) + "\\n")
    >>> record_sources([d / "a.jsonl", d / "b.jsonl"])
    (['gsm8k', 'b.jsonl'], "source: each row's 'task' field, else its file (2 sources)")
    """
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = [(str(p), load_records(p)) for p in path_list]
    names = [Path(p).name for p, _ in files]
    if len(set(names)) < len(names):  # two files of the same name: the full paths tell them apart
        names = [p for p, _ in files]
    field = next((f for f in SOURCE_FIELDS if any(f in r for _, recs in files for r in recs)), None)
    out: list[str] = []
    for name, (_, recs) in zip(names, files, strict=True):
        for r in recs:
            value = r.get(field) if field is not None else None
            out.append(str(value) if isinstance(value, (str, int)) and str(value) else name)
    count = len(set(out))
    if field is not None:
        note = f"source: each row's {field!r} field, else its file ({count} source{'s' * (count != 1)})"
    elif len(files) == 1:
        note = f"source: one file ({names[0]}) with no {'/'.join(SOURCE_FIELDS)} field, so one source"
    else:
        note = f"source: the file each row came from ({count} files)"
    return out, note
