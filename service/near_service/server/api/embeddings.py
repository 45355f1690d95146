"""``POST /v1/embeddings``: OpenAI-compatible, so the service doubles as an embedding server.

Texts are embedded as documents (no query prompt), through the same caches as the pool.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Request, Response

from near_schema import EmbeddingData, EmbeddingsRequest, EmbeddingsResponse, ErrorBody, Usage
from near_service.core.errors import InputError
from near_service.server.api.deps import ClientGone, StateDep, unless_disconnected
from near_service.server.select_handler import check_texts
from near_service.server.state import ServiceState

router = APIRouter(tags=["embeddings"])


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses={c: {"model": ErrorBody} for c in (401, 408, 413, 422, 429, 503)},
)
async def embeddings(req: EmbeddingsRequest, request: Request, state: StateDep) -> EmbeddingsResponse | Response:
    """Embed ``input`` (a text or a list) with the service's model, as documents (no prompt)."""
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise InputError("input must hold at least one text")
    check_texts(state.settings, texts)
    state.engine.require_model()
    name = state.engine.embedder.spec.name
    if req.model is not None and req.model not in (name, name.rsplit("/", 1)[-1]):
        raise InputError(f"model {req.model!r} is not served here; this service serves {name!r}")
    dim = int(state.engine.embedder.load().dim)
    if req.dimensions is not None and req.dimensions != dim:
        raise InputError(f"dimensions {req.dimensions} is not supported: the model gives {dim}")
    with state.admitted():
        try:
            vectors, tokens = await unless_disconnected(request, _embed_in_chunks(state, texts))
        except ClientGone:
            return Response(status_code=499)
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


async def _embed_in_chunks(state: ServiceState, texts: list[str]) -> tuple[np.ndarray, int]:
    """Embed ``texts`` ``embed_chunk_texts`` at a time: the model thread takes /select batches between
    the chunks, and a cancelled request stops before its next chunk."""
    loop = asyncio.get_running_loop()
    step = state.settings.embed_chunk_texts
    parts, tokens = [], 0
    for start in range(0, len(texts), step):
        vectors, n = await loop.run_in_executor(
            state.engine.worker, state.engine.embed_documents, texts[start : start + step]
        )
        parts.append(vectors)
        tokens += n
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), tokens
