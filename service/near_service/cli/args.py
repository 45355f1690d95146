"""Settings as command-line flags: one flag per :class:`Settings` field, help from its description."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence

from near_service.core.settings import Settings, load_settings


def add_settings_args(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """One flag per setting, help text from the settings class; unset flags leave env/defaults alone."""
    group = parser.add_argument_group("settings (also NEAR_<NAME> environment variables)")
    for name in fields:
        info = Settings.model_fields[name]
        kwargs: dict[str, typing.Any] = {
            "dest": name,
            "default": None,
            "help": f"{info.description} [NEAR_{name.upper()}]",
        }
        args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        if typing.get_origin(info.annotation) is typing.Literal:
            literal = info.annotation
        if literal is not None:
            kwargs["choices"] = list(typing.get_args(literal))
        if name == "candidates":
            kwargs["nargs"] = "+"
        group.add_argument("--" + name.replace("_", "-"), **kwargs)


def _settings_from(ns: argparse.Namespace, fields: Sequence[str]) -> Settings:
    return load_settings(**{name: getattr(ns, name) for name in fields})


def settings_from(ns: argparse.Namespace, fields: Sequence[str]) -> Settings:
    """Settings from the flags in ``fields`` that were given, then ``NEAR_*``, then defaults."""
    return load_settings(**{name: getattr(ns, name) for name in fields})
