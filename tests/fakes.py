"""Fakes, named as such: stand-ins for what is too slow for the in-process test tier.

:class:`FakeEmbedder` is a real :class:`~near_service.core.embedder.Embedder` (deduplication, cache
stores, batching, stats) whose *model* is a hashing bag of words: deterministic, instant, and close
enough to meaning that texts sharing words are near each other. The real model runs in the
end-to-end tests (real uvicorn, real MiniLM, real Redis). :class:`FakeHeldPoolStats` stands in for
the density statistics' computation and holds it until the test lets it finish, so a test sees a pool
whose statistics are still being computed. :class:`FakeFullDisk` is a disk that fills up part-way
through a write (ENOSPC).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from near_service.core.density import PoolStats, StatsStopped, compute_pool_stats
from near_service.core.embedder import Embedder
from near_service.core.modelspec import ModelSpec

FAKE_DIM = 64


class HashingBackend:
    """A fake model: each word adds a fixed pseudo-random vector; rows are L2-normalised."""

    batch_tokens = 4096
    max_batch_texts = 256
    dim = FAKE_DIM

    def __init__(self) -> None:
        self.calls: list[int] = []  # texts per encode call, so tests can see what the model ran on
        self.delay = 0.0  # seconds each encode call takes, so tests can keep requests in flight

    @staticmethod
    def _words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower()) or [""]

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(self._words(t)) for t in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if self.delay:
            time.sleep(self.delay)
        out = np.zeros((len(texts), FAKE_DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in self._words(text):
                seed = int.from_bytes(hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest()[:8], "little")
                out[row] += np.random.default_rng(seed).standard_normal(FAKE_DIM).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class FakeEmbedder(Embedder):
    """An :class:`Embedder` whose model is :class:`HashingBackend` (no weights, no torch)."""

    def __init__(self, query_prompt: str = "") -> None:
        spec = ModelSpec(
            name="fake/hashing-bow",
            path=Path("/nonexistent"),
            revision="fake-1",
            query_prompt=query_prompt,
            pooling="mean",
            max_length=512,
        )
        super().__init__(spec, "fake", "cpu", "float32", 512, query_prompt)
        self.backend = HashingBackend()
        self._backend = self.backend


class FakeHeldPoolStats:
    """A fake ``compute_pool_stats`` that holds the density statistics until the test releases them.

    Put it where the engine calls the computation (``near_service.engine.open.compute_pool_stats``):
    each call reports ``held_done`` of the pool's rows as done, sets ``started`` and waits for
    ``release`` (or for the pool to be stopped), then runs the real computation, so a test sees a pool
    whose statistics are being computed for as long as it needs and the real statistics afterwards.
    """

    def __init__(self, held_done: int = 7, timeout: float = 60.0) -> None:
        self.held_done = held_done
        self.timeout = timeout  # a test that forgets to release does not hang the service's shutdown
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []  # rows of each pool it was called for

    def __call__(
        self,
        vectors: np.ndarray,
        device: str = "cpu",
        method: str = "auto",
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> PoolStats:
        n = len(vectors)
        self.calls.append(n)
        if on_progress is not None:
            on_progress(min(self.held_done, n), n)
        self.started.set()
        deadline = time.monotonic() + self.timeout
        while not self.release.wait(0.02):
            if (should_stop is not None and should_stop()) or time.monotonic() > deadline:
                raise StatsStopped("FakeHeldPoolStats: stopped while held")
        return compute_pool_stats(vectors, device, method, on_progress, should_stop, **kwargs)


class FakeFullDisk:
    """A fake full disk for files a module opens for writing: once ``room`` bytes are written (in all,
    to files whose path contains ``where``), a write stores what still fits and raises ENOSPC.

    Put it in place of the module's ``open`` (``monkeypatch.setattr(module, "open", disk,
    raising=False)``); reads and other paths go to the real ``open``.
    """

    def __init__(self, room: int = 0, where: str = "") -> None:
        self.room, self.where = room, where
        self.written = 0
        self.refused = 0  # writes that hit the full disk

    def __call__(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = open(file, mode, *args, **kwargs)  # noqa: SIM115 - handed to the caller, who closes it
        if not any(c in mode for c in "wax+") or self.where not in str(file):
            return fh
        return _FullFile(fh, self)


class _FullFile:
    def __init__(self, fh: Any, disk: FakeFullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data: bytes) -> int:
        disk = self._disk
        fits = max(0, min(len(data), disk.room - disk.written))
        if fits:
            self._fh.write(data[:fits])
            disk.written += fits
        if fits < len(data):
            disk.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()
