"""Fakes, named as such: stand-ins for what is too slow for the in-process test tier.

:class:`FakeEmbedder` is a real :class:`~near_service.core.embedder.Embedder` (deduplication, cache
stores, batching, stats) whose *model* is a hashing bag of words: deterministic, instant, and close
enough to meaning that texts sharing words are near each other. The real model runs in the
end-to-end tests (real uvicorn, real MiniLM, real Redis).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
