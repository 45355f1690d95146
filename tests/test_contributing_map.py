"""CONTRIBUTING.md's map of the packages (the block under "## Layout") is true: it lists every
package and module under ``service/near_service`` and ``client/``, and nothing that does not exist.

The map is an indented tree: a line starts with one name (``core/``, ``pool.py``) or several
(``middleware.py, metrics.py``), then two or more spaces and what it is for; a name ending in ``/``
is a folder, and the lines indented under it are inside it. A line indented deeper than the entries
above it continues a description. A top-level name may be a path (``client/near_schema/``).
The tree is read as it is when the test runs: add a module, add its line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
SCOPES = ("service/near_service/", "client/")
NAME = re.compile(r"[\w.*-]+(?:/[\w.*-]+)*/?")


def layout_block(text: str) -> str:
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"^```\n(.*?)^```", section, re.S | re.M)
    assert m, 'CONTRIBUTING.md: no code block under "## Layout"'
    return m.group(1)


def map_paths(block: str) -> list[str]:
    """The paths the map names, relative to the repository (folders end with ``/``)."""
    paths: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, folder) of the open folders
    last_indent = 0
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split(", ")
        if indent > last_indent + 2 or not all(NAME.fullmatch(n) for n in names):
            continue  # a description going on
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        paths += [parent + n for n in names]
        if len(names) == 1 and names[0].endswith("/"):
            stack.append((indent, parent + names[0]))
        last_indent = indent
    return paths


def tree_paths() -> set[str]:
    """Every package (folder with ``__init__.py``) and module (but ``__init__.py``) in scope."""
    out: set[str] = set()
    for scope in SCOPES:
        for init in (ROOT / scope).rglob("__init__.py"):
            package = init.parent
            if "__pycache__" in package.parts:
                continue
            out.add(package.relative_to(ROOT).as_posix() + "/")
            out |= {p.relative_to(ROOT).as_posix() for p in package.glob("*.py") if p.name != "__init__.py"}
    return out


MAP = map_paths(layout_block(CONTRIBUTING.read_text(encoding="utf-8")))


def test_parser_reads_the_tree() -> None:
    block = (
        "client/near_schema/         the contract\n"
        "  templates.py              records -> texts\n"
        "                            (continued: see core.py)\n"
        "service/near_service/\n"
        "  server/                   the service\n"
        "    middleware.py, metrics.py\n"
        "    api/                    routes\n"
        "      pools.py              /pools\n"
        "  cli/                      the command\n"
        "tests/                      tests\n"
    )
    assert map_paths(block) == [
        "client/near_schema/",
        "client/near_schema/templates.py",
        "service/near_service/",
        "service/near_service/server/",
        "service/near_service/server/middleware.py",
        "service/near_service/server/metrics.py",
        "service/near_service/server/api/",
        "service/near_service/server/api/pools.py",
        "service/near_service/cli/",
        "tests/",
    ]


def test_map_lists_every_package_and_module() -> None:
    missing = sorted(tree_paths() - set(MAP))
    assert not missing, f"CONTRIBUTING.md's Layout map does not list {missing}: add a line for each"


@pytest.mark.parametrize("path", MAP)
def test_what_the_map_lists_exists(path: str) -> None:
    assert any(ROOT.glob(path.rstrip("/"))), f"CONTRIBUTING.md's Layout map lists {path}, which does not exist"


def test_map_names_each_path_once() -> None:
    dupes = sorted({p for p in MAP if MAP.count(p) > 1})
    assert not dupes, f"CONTRIBUTING.md's Layout map lists {dupes} more than once"
