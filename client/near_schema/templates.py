"""Records -> the texts we embed: the one rendering function, shared by the service and the client.

The service renders pool and query files with it; the Trainer callback and the DataFlex selector
render a trainer's own dataset with it before registering that dataset as a pool, so both sides
produce the same texts (and so the same fingerprint) by construction. Pure Python: no I/O.

Record shapes:

- ``alpaca``: ``instruction``, optional ``input``, ``output``
- ``qa``: ``question``/``answer`` or ``prompt``/``response``/``completion`` (GSM8K and friends)
- ``text``: ``text``, embedded exactly as it is
- ``chat``: ``messages`` as ``[{"role", "content"}]``
- ``sharegpt``: ``conversations`` as ``[{"from", "value"}]``

Templates:

- ``default``: the record's natural text (fields joined by newlines, chat turns as ``role: text``)
- ``dataflex``: DataFlex's offline selector rendering, byte for byte:
  ``Instruction: …\\nInput: …\\nOutput: …\\nPrediction:…``
- ``prompt``: only what the model is asked (no output / last assistant turn)
- any string with ``{field}`` placeholders, e.g. ``"{question}\\n{answer}"``

>>> render_records([{"instruction": "Add", "input": "1 2", "output": "3"}], "dataflex")
['Instruction: Add\\nInput: 1 2\\nOutput: 3\\nPrediction:']
>>> render_records([{"question": "2 + 2?", "answer": "4"}])
['2 + 2?\\n4']
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ACCEPTED_FIELDS",
    "NAMED_TEMPLATES",
    "RecordRenderError",
    "TemplateError",
    "check_template",
    "record_shape",
    "render_records",
]


class TemplateError(ValueError):
    """A template that is neither a named one nor a ``{field}`` format string."""


class RecordRenderError(ValueError):
    """A record the template cannot render (unknown shape, missing field, bad turns)."""


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
        raise RecordRenderError(f"{where}: '{key}' must be a list of turns, got {type(turns).__name__}")
    out = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise RecordRenderError(f"{where}: {key}[{j}] must be an object with '{role_key}' and '{text_key}'")
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
        raise RecordRenderError(
            f"{where}: unknown record shape; fields seen: {sorted(rec)[:20]}. Expected one of "
            "alpaca (instruction/input/output), qa (question/answer), text, chat (messages) "
            "or ShareGPT (conversations), or pass --template '{field}…'"
        )
    if template == "dataflex":
        if shape not in ("alpaca", "qa"):
            raise RecordRenderError(
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
        raise TemplateError(f"template {template!r} is not a valid format string ({exc})") from exc


def check_template(template: str) -> None:
    """Raise InputError unless ``template`` is a named template or a ``{field}`` format string."""
    if template in NAMED_TEMPLATES:
        return
    if not _format_fields(template):
        raise TemplateError(
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
            raise RecordRenderError(
                f"{source}: row {i} lacks field(s) {missing} used by the template; fields seen: {sorted(rec)[:20]}"
            )
        out.append(template.format_map({k: _s(v) for k, v in rec.items()}))
    return out
