"""``near-select embed --ray`` on a local Ray instance (2 CPU workers) with the packaged model.

The vectors equal the single-process path's, a run stopped half way leaves shards that the rerun
keeps (it embeds only the rest), and a rerun after success embeds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from near_service.cli.embed import embed_pool
from near_service.core.embedder import Embedder
from near_service.core.records import fingerprint, load_texts
from near_service.core.settings import load_settings
from near_service.stores.vectors import PoolVectorStore
from tests.service.api_data import qa_records, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'near-select[ray]' (the `ray` extra)")

# slow: a Ray instance and two model replicas; Ray's own deprecation notices are not ours to fix
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_embed_matches_single_process_and_resumes(tmp_path: Path, local_ray: None) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(96))
    # dtype float32: the single-process reference and the actors then run the same arithmetic
    settings = load_settings(candidates=[pool], cache_dir=tmp_path / "cache", dtype="float32", device="cpu")

    first = embed_pool(settings, ray_address="local", block_rows=32, max_blocks=1)
    assert not first.complete and first.blocks == 3 and first.blocks_embedded == 1
    assert first.texts_embedded == 32

    rest = embed_pool(settings, ray_address="local", block_rows=32)  # a rerun after a stop: only the rest
    assert rest.complete and rest.blocks_embedded == 2 and rest.texts_embedded == 64

    again = embed_pool(settings, ray_address="local", block_rows=32)
    assert again.complete and again.texts_embedded == 0 and again.blocks_embedded == 0

    texts = load_texts([pool], settings.template, "candidate")
    embedder = Embedder.from_settings(settings)
    want = embedder.embed(texts, "document")
    got = PoolVectorStore(settings.cache_dir or "").load(embedder.namespace, fingerprint(texts), len(texts))
    assert got is not None
    cosine = np.einsum("ij,ij->i", got, want)
    assert cosine.min() >= 0.9999, cosine.min()
    assert not list((tmp_path / "cache").glob("pools/*/*.shards"))  # assembled and cleaned up
