"""The ``near-select`` command.

    near-select offline --candidates pool.jsonl --queries target.jsonl --max-k 1000 --out-dir out/
    near-select serve --candidates pool.jsonl

Every setting flag mirrors a ``NEAR_*`` environment variable (see ``near_service.settings``);
flags win. Errors print one ``error: …`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from near_service.cli.args import settings_from
from near_service.cli.offline import add_offline_parser
from near_service.cli.report import add_report_parser
from near_service.cli.serve import add_serve_parser
from near_service.cli.vectors import add_vector_parsers
from near_service.core.errors import NearError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="near-select", description="NEAR data selection: the training data closest to a target task."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    add_offline_parser(sub)
    add_serve_parser(sub)
    add_vector_parsers(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        settings = settings_from(ns, ns.fields)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("faiss").setLevel(logging.WARNING)
        return int(ns.func(ns, settings))
    except NearError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; embeddings computed so far are in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
