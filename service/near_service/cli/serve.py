"""``near-select serve``: run the selection service with uvicorn.

    near-select serve --candidates pool.jsonl --redis-url redis://localhost:6379/0 --port 8000

Every setting is a flag and a ``NEAR_*`` variable; prefer ``NEAR_API_KEY`` to ``--api-key`` (flags
show up in process listings). Bad settings exit with status 2 and one ``error:`` line, before the
model loads.
"""

from __future__ import annotations

import argparse

from near_service.cli.args import add_settings_args
from near_service.core.settings import Settings

SERVE_FIELDS = tuple(Settings.model_fields)


def _cmd_serve(ns: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from near_service.server.app import create_app, quiet_health_checks
    from near_service.server.http import uvicorn_config

    embedder = None
    if settings.embeddings is not None:  # check and store them now: a bad file exits 2 before serving
        from near_service.cli.vectors import import_pool_vectors
        from near_service.server.state import check_settings

        check_settings(settings)
        embedder = import_pool_vectors(settings)
    if embedder is None:  # resolve the model now (no weights loaded): a bad one is one "error:" line, exit 2
        from near_service.core.embedder import Embedder

        embedder = Embedder.from_settings(settings)
    app = create_app(settings, embedder)  # checks the settings first: ConfigError -> "error: ..." and exit 2
    config = uvicorn_config(app, settings)
    quiet_health_checks()  # after uvicorn configured its loggers
    uvicorn.Server(config).run()
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``serve`` to the ``near-select`` command."""
    parser = sub.add_parser(
        "serve",
        help="serve /select over HTTP (embedder, index, Redis cache, run ledger)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_settings_args(parser, SERVE_FIELDS)
    parser.set_defaults(func=_cmd_serve, fields=SERVE_FIELDS)
