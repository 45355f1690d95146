"""Exact top-K from a float16 copy of the pool: search in float16, rescore in float32, certify.

Storing the pool in float16 on the GPU halves its memory (``NEAR_GPU_STORAGE=float16``). The answer
stays the float32 answer: the GPU returns each query's top ``K + margin`` by float16 score and the
best score it left out; the candidates are rescored in float32 against the CPU's float32 vectors
and sorted (ties to the lower index). A float16 score is within ``E`` of the exact one, where

    E = (3u + 2d·2^-24)·|q|·M + 2^-24·√d·(|q| + M),   u = 2^-11 (float16 rounding), M = max |row|

(inputs rounded to float16: 2u; the float16 result: u; float32 sums of d terms on the GPU and in the
rescoring: d·2^-24 each; subnormals: the last term). So a left-out row scores at most
``left_out + E`` in float32, and where the K-th rescored score is above that, the row's top K is
exact. Rows where it is not (a dense band of near-ties at the cut) are searched again with 8x the
margin, then, if still unsettled, exactly in float32 on the CPU.

>>> rng = np.random.default_rng(0)
>>> base = rng.standard_normal((200, 8)).astype(np.float32)
>>> base /= np.linalg.norm(base, axis=1, keepdims=True)
>>> s, i = half_topk(base.astype(np.float16), base, base[:3], 5, "cpu")
>>> i[:, 0].tolist()
[0, 1, 2]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from near_service.core.topk import numpy_topk, sort_rows, torch_topk_dropped

log = logging.getLogger(__name__)

FP16_UNIT = 2.0**-11
FP16_MAX = 65504.0


def margin_for(k: int) -> int:
    """Extra candidates the first float16 pass keeps beyond ``k``."""
    return max(256, k // 4)


def fp16_error(dim: int, qnorm: np.ndarray, max_norm: float) -> np.ndarray:
    """Per query, a bound on |float16 score - float32 score| (see the module docstring)."""
    rel = (3 * FP16_UNIT + 2 * dim * 2.0**-24) * 1.01
    return np.asarray(rel * qnorm * max_norm + 2.0**-24 * np.sqrt(dim) * (qnorm + max_norm), dtype=np.float64)


def rescore(base: np.ndarray, queries: np.ndarray, cand: np.ndarray, max_bytes: int = 64 << 20) -> np.ndarray:
    """float32 scores of each query against its candidate rows of ``base``, gathered in bounded chunks."""
    out = np.empty(cand.shape, dtype=np.float32)
    step = max(1, max_bytes // max(1, 4 * cand.shape[1] * base.shape[1]))
    for r0 in range(0, len(cand), step):
        rows = base[cand[r0 : r0 + step]]  # (step, candidates, dim)
        out[r0 : r0 + step] = np.matmul(rows, queries[r0 : r0 + step, :, None])[..., 0]
    return out


def half_topk(
    base16: Any,
    base32: np.ndarray,
    queries: np.ndarray,
    k: int,
    device: str,
    max_block_bytes: int = 1 << 30,
    max_norm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 top-``k`` (rows sorted, ties to the lower index) from a float16 search.

    ``base16`` is the float16 pool (a torch tensor on ``device``, or numpy), ``base32`` the same
    rows in float32 (on the CPU).
    """
    n, dim = base32.shape
    if max_norm is None:
        max_norm = float(np.sqrt((base32.astype(np.float64) ** 2).sum(axis=1).max()))
    qnorm = np.linalg.norm(queries.astype(np.float64), axis=1)
    out_s = np.empty((len(queries), k), dtype=np.float32)
    out_i = np.empty((len(queries), k), dtype=np.int64)
    todo = np.arange(len(queries))
    margin = margin_for(k)
    for attempt in range(2):
        kk = min(n, k + margin)
        _, cand, left_out = torch_topk_dropped(base16, queries[todo], kk, device, max_block_bytes)
        s32, cand = sort_rows(rescore(base32, queries[todo], cand), cand)
        s32, cand = s32[:, :k], cand[:, :k]
        exact = (kk == n) | (s32[:, -1].astype(np.float64) > left_out + fp16_error(dim, qnorm[todo], max_norm))
        out_s[todo[exact]], out_i[todo[exact]] = s32[exact], cand[exact]
        todo = todo[~exact]
        if not len(todo):
            return out_s, out_i
        log.info("float16 search: %d rows unsettled at margin %d (attempt %d)", len(todo), margin, attempt + 1)
        margin *= 8
    s, i = numpy_topk(base32, queries[todo], k)
    out_s[todo], out_i[todo] = sort_rows(s, i)
    return out_s, out_i
