"""The ``near-select`` command.

    near-select offline --candidates pool.jsonl --queries target.jsonl --max-k 1000 --out-dir out/
    near-select serve --candidates pool.jsonl

Every setting flag mirrors a ``NEAR_*`` environment variable (see ``near_service.settings``);
flags win. Errors print one ``error: …`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import NearError
from .settings import Settings, load_settings

# Settings that mean something offline; serve takes them all.
OFFLINE_FIELDS = ("candidates", "template", "model", "backend", "dtype", "device", "max_length",
                  "query_instruction", "batch_tokens", "vllm_gpu_memory_utilization", "cache_dir", "index",
                  "ivf_nprobe", "hnsw_m", "log_level")

Command = Callable[[argparse.Namespace, Settings], int]


def add_settings_args(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """One flag per setting, help text from the settings class; unset flags leave env/defaults alone."""
    group = parser.add_argument_group("settings (also NEAR_<NAME> environment variables)")
    for name in fields:
        info = Settings.model_fields[name]
        kwargs: dict[str, typing.Any] = {"dest": name, "default": None,
                                         "help": f"{info.description} [NEAR_{name.upper()}]"}
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


def _cmd_offline(ns: argparse.Namespace, settings: Settings) -> int:
    from .offline import OfflineJob, run_offline

    if not settings.candidates:
        raise NearError("--candidates is required (or NEAR_CANDIDATES)")
    job = OfflineJob(queries=[Path(q) for q in ns.queries], out_dir=Path(ns.out_dir), max_k=ns.max_k,
                     budget=ns.budget, strategy=ns.strategy, clamp=ns.clamp, query_template=ns.query_template,
                     progress=not ns.quiet, save_embeddings=ns.save_embeddings)
    manifest = run_offline(settings, job)
    t = manifest["timings"]
    print(f"wrote {ns.out_dir}/top_indices.npy: {manifest['query_count']} queries x {manifest['max_k']} "
          f"neighbours over {manifest['pool_size']} candidates ({manifest['backend']}, {manifest['dtype']}, "
          f"{t['total_s']:.1f}s)")
    if manifest["budget"] is not None:
        print(f"wrote {ns.out_dir}/selected.json: {manifest['budget']} candidates ({manifest['strategy']})")
    if manifest["recall_at_k"] is not None:
        print(f"{manifest['index']} recall@{manifest['max_k']} vs exact (sampled): {manifest['recall_at_k']:.4f}")
    if ns.json:
        print(json.dumps(manifest, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="near-select", description="NEAR data selection: the training "
                                     "data closest to a target task.")
    sub = parser.add_subparsers(dest="command", required=True)

    off = sub.add_parser("offline", help="embed, search and write DataFlex-compatible top_indices.npy",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    off.add_argument("--queries", nargs="+", required=True, help="query (target/validation) files")
    off.add_argument("--out-dir", required=True, help="folder for top_indices.npy, top_scores.npy, manifest.json")
    off.add_argument("--max-k", type=int, default=1000, help="neighbours per query")
    off.add_argument("--budget", type=int, default=None, help="also write selected.json with this many "
                     "unique candidates")
    off.add_argument("--strategy", choices=["round_robin", "max_score"], default="round_robin",
                     help="how the budget is filled")
    off.add_argument("--clamp", action="store_true", help="clamp max_k to the pool size instead of failing")
    off.add_argument("--query-template", default=None, help="template for queries (default: --template)")
    off.add_argument("--save-embeddings", action="store_true",
                     help="also write candidate_embeddings.npy and query_embeddings.npy (float32, L2-normalised)")
    off.add_argument("--quiet", action="store_true", help="no progress bar")
    off.add_argument("--json", action="store_true", help="print the manifest")
    add_settings_args(off, OFFLINE_FIELDS)
    off.set_defaults(func=_cmd_offline, fields=OFFLINE_FIELDS)

    try:
        from .serve import add_serve_parser
    except ImportError:  # the service is added by its own module
        pass
    else:
        add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        settings = _settings_from(ns, ns.fields)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
