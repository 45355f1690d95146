"""``near-select embed``: embed the pool into the pool store ahead of time, here or on a Ray cluster.

    near-select embed --candidates pool.jsonl                      # this process, through the caches
    near-select embed --candidates pool.jsonl --ray                # a local Ray instance (every core)
    near-select embed --candidates pool.jsonl --ray ray://head:10001 --actors 8

With ``--ray``, Ray Data hands blocks of the pool's texts to an actor pool of embedder replicas (one
per GPU, or one per ``--cpus-per-actor`` CPU slots). Each replica builds its
:class:`~near_service.core.embedder.Embedder` from the same settings as ``serve``, so backend, prompts
and dtype are the single-process ones (the namespaces are compared, and a mismatch stops the run).
Finished blocks come back to this process and are written as shard files keyed by the block's content
hash; when all are there they are assembled into the pool file that ``serve`` and ``offline`` map,
and the shards are removed. A rerun after a failure embeds only the blocks without a shard, and a
rerun after success embeds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from near_service.cli.args import add_settings_args
from near_service.core.embedder import Embedder, EmbedStats
from near_service.core.errors import ConfigError
from near_service.core.records import fingerprint, load_texts
from near_service.core.settings import Settings, load_settings
from near_service.stores.cache import DiskCache, EmbeddingStore
from near_service.stores.vectors import PoolVectorStore

log = logging.getLogger(__name__)

EMBED_FIELDS = (
    "candidates",
    "template",
    "model",
    "backend",
    "dtype",
    "device",
    "max_length",
    "batch_tokens",
    "vllm_gpu_memory_utilization",
    "cache_dir",
    "log_level",
)


@dataclass(frozen=True)
class Block:
    start: int
    stop: int
    key: str  # sha256 of the namespace and the block's texts: a shard is valid only for those


@dataclass
class EmbedReport:
    """What one ``embed_pool`` call did."""

    pool_size: int
    blocks: int
    blocks_embedded: int
    texts_embedded: int
    seconds: float
    path: Path
    complete: bool  # the pool file is written

    @property
    def texts_per_s(self) -> float:
        return self.texts_embedded / self.seconds if self.seconds else 0.0


def plan_blocks(texts: Sequence[str], namespace: str, block_rows: int) -> list[Block]:
    blocks = []
    for start in range(0, len(texts), block_rows):
        h = hashlib.sha256(namespace.encode())
        for t in texts[start : start + block_rows]:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)
        blocks.append(Block(start, min(start + block_rows, len(texts)), h.hexdigest()[:16]))
    return blocks


class _Shards:
    """``<pool file>.shards/<start>-<key>.npy``: one finished block each, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, b: Block) -> Path:
        return self.folder / f"{b.start:012d}-{b.key}.npy"

    def has(self, b: Block) -> bool:
        return self.path(b).is_file()

    def write(self, b: Block, vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{b.start}-{os.getpid()}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
        os.replace(tmp, self.path(b))

    def read(self, b: Block) -> np.ndarray | None:
        try:
            v = np.load(self.path(b), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return v if v.ndim == 2 and len(v) == b.stop - b.start else None


class _EmbedActor:
    """One embedder replica in the Ray actor pool (built from the service's settings)."""

    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = Embedder.from_settings(load_settings(**settings))
        self.embedder.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"block": [], "vectors": [], "dims": [], "namespace": []}
        for block, texts in zip(batch["block"], batch["texts"], strict=True):
            v = self.embedder.embed([str(t) for t in texts], "document")
            out["block"].append(int(block))
            out["vectors"].append(v.tobytes())
            out["dims"].append(v.shape[1])
            out["namespace"].append(self.embedder.namespace)
        return {k: np.array(v, dtype=object if k in ("vectors", "namespace") else np.int64) for k, v in out.items()}


def _ray_blocks(
    settings: Settings,
    texts: Sequence[str],
    todo: list[Block],
    address: str,
    actors: int | None,
    cpus_per_actor: float,
) -> Iterator[tuple[Block, np.ndarray, str]]:
    """Embed ``todo`` on Ray; yield each block, its vectors and the actor's namespace as it finishes."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'near-select[ray]'") from None

    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and settings.device != "cpu"
    size = actors or (gpus if use_gpu else max(1, int(resources.get("CPU", 1) // cpus_per_actor)))
    size = max(1, min(size, len(todo)))
    items = [{"block": i, "texts": list(texts[b.start : b.stop])} for i, b in enumerate(todo)]
    dump = settings.model_dump(mode="json", exclude={"api_key", "candidates", "embeddings"})
    log.info("Ray: %d blocks on %d actors (%s)", len(todo), size, "1 GPU each" if use_gpu else f"{cpus_per_actor} CPU")
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(
        _EmbedActor,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        fn_constructor_kwargs={"settings": dump, "threads": int(cpus_per_actor)},
        num_cpus=0 if use_gpu else cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
    )
    for row in out.iter_rows():
        b = todo[int(row["block"])]
        v = np.frombuffer(row["vectors"], dtype=np.float32).reshape(b.stop - b.start, int(row["dims"]))
        yield b, v, str(row["namespace"])


def embed_pool(
    settings: Settings,
    ray_address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    block_rows: int = 4096,
    max_blocks: int | None = None,
    progress: bool = False,
) -> EmbedReport:
    """Embed the pool of ``settings`` into the pool store (see the module docstring)."""
    with Embedder.from_settings(settings) as embedder:  # closed on the way out: a vLLM engine stops here
        return _embed_pool(settings, embedder, ray_address, actors, cpus_per_actor, block_rows, max_blocks, progress)


def _embed_pool(
    settings: Settings,
    embedder: Embedder,
    ray_address: str | None,
    actors: int | None,
    cpus_per_actor: float,
    block_rows: int,
    max_blocks: int | None,
    progress: bool,
) -> EmbedReport:
    if not settings.cache_dir:
        raise ConfigError("embed writes the pool store under the cache folder: set --cache-dir")
    t0 = time.perf_counter()
    texts = load_texts(settings.candidates, settings.template, "candidate")
    pool_fp = fingerprint(texts)  # the model is loaded only if something is embedded
    store = PoolVectorStore(settings.cache_dir)
    path, _ = store.paths(embedder.namespace, pool_fp)
    blocks = plan_blocks(texts, embedder.namespace, block_rows)

    def report(n_blocks: int, n_texts: int, complete: bool) -> EmbedReport:
        return EmbedReport(len(texts), len(blocks), n_blocks, n_texts, time.perf_counter() - t0, path, complete)

    meta = store.manifest(embedder.namespace, pool_fp)
    if meta is not None and store.load(embedder.namespace, pool_fp, len(texts), meta.dims) is not None:
        log.info("pool %s is already in the store; nothing to embed", pool_fp)
        return report(0, 0, True)
    shards = _Shards(path.with_name(path.name + ".shards"))
    todo = [b for b in blocks if shards.read(b) is None]
    todo = todo if max_blocks is None else todo[:max_blocks]
    done_texts = 0
    if todo and ray_address is not None:
        for b, v, namespace in _ray_blocks(settings, texts, todo, ray_address, actors, cpus_per_actor):
            if namespace != embedder.namespace:
                raise ConfigError(
                    f"the Ray actors embed with other settings than this process (namespace {namespace} vs "
                    f"{embedder.namespace}); set --backend, --dtype and --device explicitly"
                )
            shards.write(b, v)
            done_texts += b.stop - b.start
    elif todo:
        stores: list[EmbeddingStore] = [DiskCache(settings.cache_dir)]
        for b in todo:
            stats = EmbedStats()
            shards.write(b, embedder.embed(texts[b.start : b.stop], "document", stores, progress, stats))
            done_texts += stats.embedded
    missing = [b for b in blocks if not shards.has(b)]
    if missing:
        log.info("%d of %d blocks still to embed; rerun to finish", len(missing), len(blocks))
        return report(len(todo), done_texts, False)
    first = shards.read(blocks[0])
    assert first is not None
    source = "ray" if ray_address is not None else "embedded"
    with store.writer(embedder.namespace, pool_fp, len(texts), first.shape[1], embedder.spec.name, source) as out:
        for b in blocks:
            shard = shards.read(b)
            if shard is None or shard.shape[1] != first.shape[1]:
                raise ConfigError(f"shard {shards.path(b)} is damaged; remove it and rerun")
            out[b.start : b.stop] = shard
    with contextlib.suppress(OSError):
        shutil.rmtree(shards.folder)
    return report(len(todo), done_texts, True)


def _cmd_embed(ns: argparse.Namespace, settings: Settings) -> int:
    if not settings.candidates:
        raise ConfigError("--candidates is required (or NEAR_CANDIDATES)")
    r = embed_pool(settings, ns.ray, ns.actors, ns.cpus_per_actor, ns.block_rows, ns.max_blocks, not ns.quiet)
    state = "wrote" if r.complete else "partly embedded (rerun to finish)"
    print(
        f"{state} {r.path}: {r.pool_size} candidates, {r.texts_embedded} embedded in {r.blocks_embedded} of "
        f"{r.blocks} blocks, {r.seconds:.1f}s ({r.texts_per_s:.0f} texts/s)"
    )
    return 0


def add_embed_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``embed`` to the ``near-select`` command."""
    parser = sub.add_parser(
        "embed",
        help="embed the pool into the pool store (this process, or a Ray cluster with --ray)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="embed on Ray: 'local' (the default with --ray alone) starts one here, else a cluster address",
    )
    parser.add_argument("--actors", type=int, default=None, help="embedder replicas (default: GPUs, else CPU slots)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPU slots (and threads) per replica")
    parser.add_argument("--block-rows", type=int, default=4096, help="texts per block (and per shard file)")
    parser.add_argument("--max-blocks", type=int, default=None, help="embed at most this many blocks, then stop")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_args(parser, EMBED_FIELDS)
    parser.set_defaults(func=_cmd_embed, fields=EMBED_FIELDS)
