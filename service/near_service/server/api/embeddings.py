"""``POST /v1/embeddings``: OpenAI-compatible, so the service doubles as an embedding server.

Texts are embedded as documents (no query prompt), through the same caches as the pool.
"""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter
from near_schema import EmbeddingData, EmbeddingsRequest, EmbeddingsResponse, ErrorBody, Usage

from near_service.core.errors import InputError
from near_service.server.api.deps import PoolDep, StateDep
from near_service.server.selector import check_texts

router = APIRouter(tags=["embeddings"])


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses={c: {"model": ErrorBody} for c in (401, 413, 422, 429, 503)},
)
async def embeddings(req: EmbeddingsRequest, state: StateDep, pool: PoolDep) -> EmbeddingsResponse:
    """Embed ``input`` (a text or a list) with the service's model, as documents (no prompt)."""
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise InputError("input must hold at least one text")
    check_texts(state.settings, texts)
    name = state.embedder.spec.name
    if req.model is not None and req.model not in (name, name.rsplit("/", 1)[-1]):
        raise InputError(f"model {req.model!r} is not served here; this service serves {name!r}")
    dim = int(pool.vectors.shape[1])
    if req.dimensions is not None and req.dimensions != dim:
        raise InputError(f"dimensions {req.dimensions} is not supported: the model gives {dim}")
    loop = asyncio.get_running_loop()
    with state.admitted():
        vectors, tokens = await loop.run_in_executor(state.model_executor, state.embed_documents, texts)
    data = [
        EmbeddingData(
            index=i,
            embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()
            if req.encoding_format == "base64"
            else v.tolist(),
        )
        for i, v in enumerate(vectors)
    ]
    return EmbeddingsResponse(data=data, model=name, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
