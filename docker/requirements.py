"""Print the requirements of the ``near-select`` distribution and the given extras, one per line.

The images install these in a layer of their own, before the source is copied, so that editing the
code does not reinstall torch:

    python docker/requirements.py server vllm > /tmp/requirements.txt

Reads pyproject.toml beside this folder (or the path given with ``--pyproject``); Python 3.11+.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomllib


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus those of ``extras``, in order, without repeats."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    out: list[str] = []
    for req in [*project["dependencies"], *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras to include, e.g. server vllm")
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    ns = parser.parse_args(argv)
    print("\n".join(requirements(ns.pyproject, ns.extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
