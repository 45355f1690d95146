"""The ``near-select`` command: ``offline`` and ``serve`` (see :mod:`near_service.cli.main`)."""

from near_service.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
