"""Helpers the benchmark scripts share: the machine's name and writing one section of the results doc."""

from __future__ import annotations

import platform
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(mark: str, text: str, docs: Path = DOCS) -> None:
    """Replace what stands between ``<!-- mark -->`` and ``<!-- /mark -->`` in ``docs``."""
    src = docs.read_text(encoding="utf-8")
    start, end = f"<!-- {mark} -->", f"<!-- /{mark} -->"
    if start not in src or end not in src:
        raise SystemExit(f"{docs} has no {start} ... {end} section")
    head, rest = src.split(start, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}", encoding="utf-8")
