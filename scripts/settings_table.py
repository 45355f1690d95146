"""Write the README's configuration table from ``near_service.core.settings.Settings``.

    python scripts/settings_table.py           # print the table
    python scripts/settings_table.py --write   # replace it in README.md, between the markers
    python scripts/settings_table.py --check   # exit 1 if README.md is out of date

The table sits between ``<!-- settings:begin -->`` and ``<!-- settings:end -->``;
tests/docker/test_settings_doc.py checks that README.md holds exactly this output.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from near_service.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _type(info: FieldInfo) -> str:
    ann = info.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # X | None: the default says "unset"
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Literal:
        text = " \\| ".join(str(a) for a in typing.get_args(ann))
    elif typing.get_origin(ann) is list:
        text = "JSON list"
    else:
        text = {"SecretStr": "secret", "Path": "path"}.get(
            getattr(ann, "__name__", ""), getattr(ann, "__name__", str(ann))
        )
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if isinstance(meta, annotated_types.BaseMetadata) and value is not None:
                bounds.append(f"{sign} {value}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True) if info.default is PydanticUndefined else info.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        home = Path.home()
        value = "~/" + str(value.relative_to(home)) if value.is_relative_to(home) else str(value)
    if isinstance(value, list):
        value = "[]" if not value else str([str(v) for v in value])
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """The markdown table: one row per Settings field, in declaration order."""
    rows = ["| Variable | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        rows.append(f"| `NEAR_{name.upper()}` | {_type(info)} | {_default(info)} | {_cell(info.description or '')} |")
    return "\n".join(rows) + "\n"


def render_readme(text: str) -> str:
    """``text`` with the part between the markers replaced by the current table."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"README.md lacks the {BEGIN} … {END} markers")
    return f"{head}{BEGIN}\n{settings_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    ns = parser.parse_args(argv)
    if not (ns.write or ns.check):
        sys.stdout.write(settings_table())
        return 0
    current = README.read_text()
    wanted = render_readme(current)
    if ns.write:
        README.write_text(wanted)
        return 0
    if current != wanted:
        print("README.md's configuration table is stale: run python scripts/settings_table.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
