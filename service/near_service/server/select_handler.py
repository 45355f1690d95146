"""The serving object behind ``POST /select`` for one pool: limits, the run ledger, compute, store.

The route only translates HTTP; everything a ``/select`` means happens here, on the core's
:class:`~near_service.core.pool.SelectResult` (names: *select* is the request, *selection* the
core's budget strategies, *selector* only DataFlex's plug-in classes):

1. the request is checked against the service's limits (query count and length, ``max_k``);
2. without ``run_id``: embed the queries (micro-batched), search, fill the budget;
3. with ``run_id`` + ``round``: a stored round is returned as stored (409 if asked with other
   parameters); a new one is computed (leaving out earlier rounds' picks with
   ``exclude_previous``; 409 ``missing_rounds`` if an earlier round is not stored) and stored
   once, first writer wins. A run is bound to the pool of its first round (409 on another pool).
   Ledger calls wait on Redis outside the plain requests' admission.

>>> result = await handler.select(SelectRequest(queries=["2 + 2?"], max_k=10))   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import orjson

from near_schema import PoolInfo, SelectRequest, fingerprint
from near_service.core.errors import LimitError, MaxKError, UnavailableError
from near_service.core.pool import Pool, SelectResult
from near_service.core.settings import Settings
from near_service.server.batcher import QueryBatcher
from near_service.stores.ledger import Ledger, RunBindings

T = TypeVar("T")


def check_texts(settings: Settings, texts: Sequence[str]) -> None:
    """413 for more texts than ``max_queries`` or a text over ``max_query_chars``."""
    if len(texts) > settings.max_queries:
        raise LimitError(f"{len(texts)} texts in one request; the limit is {settings.max_queries} (NEAR_MAX_QUERIES)")
    for i, t in enumerate(texts):
        if len(t) > settings.max_query_chars:
            raise LimitError(
                f"text {i} has {len(t)} characters; the limit is {settings.max_query_chars} (NEAR_MAX_QUERY_CHARS)"
            )


def ledger_params(req: SelectRequest) -> dict[str, Any]:
    """What must match for a stored round to answer a request."""
    return {
        "queries": fingerprint(req.queries),
        "query_count": len(req.queries),
        "max_k": req.max_k,
        "budget": req.budget,
        "strategy": req.strategy,
        "exclude_previous": req.exclude_previous,
    }


class SelectHandler:
    """Answers ``/select`` requests for one loaded pool."""

    def __init__(
        self,
        name: str,
        pool: Pool,
        settings: Settings,
        batcher: QueryBatcher,
        cpu_executor: Executor,
        ledger: Ledger | None,
        bindings: RunBindings | None,
        ledger_scope: str,
        model_name: str,
        ledger_gate: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.name, self.pool, self.settings, self.batcher = name, pool, settings, batcher
        self.cpu_executor, self.ledger, self.ledger_gate = cpu_executor, ledger, ledger_gate
        self.bindings, self.ledger_scope = bindings, ledger_scope
        self.pool_info = PoolInfo(size=pool.size, fingerprint=pool.fingerprint, model=model_name, name=name)

    def check(self, req: SelectRequest) -> None:
        """The service's limits (the pool size itself is checked by the index)."""
        check_texts(self.settings, req.queries)
        if req.max_k > self.settings.max_k_limit:
            raise MaxKError(f"max_k {req.max_k} is larger than the limit NEAR_MAX_K_LIMIT={self.settings.max_k_limit}")
        entries, cap = len(req.queries) * req.max_k, self.settings.max_result_entries
        if entries > cap:
            raise LimitError(
                f"{len(req.queries)} queries x max_k {req.max_k} = {entries} results in one request; the limit is "
                f"{cap} (NEAR_MAX_RESULT_ENTRIES): send fewer queries per request or a smaller max_k"
            )
        self.pool.index.check_k(req.max_k)

    async def select(self, req: SelectRequest) -> SelectResult:
        self.check(req)
        if req.run_id is None or req.round is None:
            return await self._compute(req, None)
        if self.ledger is None:
            raise UnavailableError(
                "run_id needs the run ledger, which needs Redis: set NEAR_REDIS_URL (or leave out run_id and round)"
            )
        ledger, params = self.ledger, ledger_params(req)
        if self.bindings is not None:
            await self._ledger_call(self.bindings.bind, req.run_id, self.name, self.pool.fingerprint, self.ledger_scope)
        stored = await self._ledger_call(ledger.get, req.run_id, req.round)
        if stored is None:
            exclude = (
                await self._ledger_call(ledger.previous_selected, req.run_id, req.round)
                if req.exclude_previous
                else None
            )
            result = await self._compute(req, exclude)
            stored = await self._ledger_call(ledger.put, req.run_id, req.round, params, result, list(req.queries))
        stored.check_params(req.run_id, params)
        return stored.result

    async def _ledger_call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking ledger call in a worker thread, outside the plain requests' admission."""
        with self.ledger_gate():
            return await asyncio.to_thread(fn, *args)

    async def _compute(self, req: SelectRequest, exclude: list[int] | None) -> SelectResult:
        t0 = time.perf_counter()
        qvecs = await self.batcher.embed(req.queries)
        t1 = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(
            self.cpu_executor, self.pool.select_vectors, qvecs, req.max_k, req.budget, req.strategy, exclude
        )
        result.timings = {"embed_s": t1 - t0, **result.timings}
        return result

    def encode(self, result: SelectResult) -> bytes:
        """The ``SelectResponse`` JSON of ``result`` (orjson straight from the numpy arrays)."""
        return orjson.dumps(
            {
                "indices": result.indices,
                "scores": result.scores,
                "selected": result.selected,
                "source": result.source,
                "pool": self.pool_info.model_dump(),
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    def encode_chunks(self, result: SelectResult, rows: int = 256) -> Iterator[bytes]:
        """The same JSON as :meth:`encode`, ``rows`` queries at a time: a big answer is streamed,
        never held whole as one more copy in memory."""
        opt = orjson.OPT_SERIALIZE_NUMPY
        n = len(result.indices)
        for name, array in (("indices", result.indices), ("scores", result.scores)):
            yield b'{"indices":[' if name == "indices" else b'],"scores":['
            for start in range(0, n, rows):
                part = orjson.dumps(array[start : start + rows], option=opt)[1:-1]
                yield part if start == 0 else b"," + part
        tail = {"selected": result.selected, "source": result.source, "pool": self.pool_info.model_dump()}
        yield b"]," + orjson.dumps(tail, option=opt)[1:]

    async def encode_async(self, result: SelectResult) -> bytes:
        t = time.perf_counter()
        body = await asyncio.get_running_loop().run_in_executor(self.cpu_executor, self.encode, result)
        result.timings["encode_s"] = time.perf_counter() - t
        return body
