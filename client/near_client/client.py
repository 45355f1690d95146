"""Sync and async HTTP clients for the NEAR Select service.

>>> with NearClient("http://127.0.0.1:8000", api_key="s3cret") as near:   # doctest: +SKIP
...     near.wait_ready(timeout=300)
...     answer = near.select(["What is 7 * 8?"], max_k=100, budget=512, run_id="exp1", round=0)
...     answer.selected[:3], answer.pool.size
([412, 17, 3301], 50000)

Every call has explicit timeouts and retries with exponential backoff and jitter on connection
errors, timeouts, 429 (waiting at least the service's ``Retry-After``) and 502/503/504. Every
endpoint is idempotent (a ``/select`` with ``run_id`` and ``round`` returns the stored result), so
retrying is always safe; but a POST that timed out *reading* the answer is not retried by default
(``RetryPolicy.retry_read_timeouts``): the service was busy with it, and asking again would only
add the same work to a loaded service. Failures end in the tree of :mod:`near_client.errors`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import operator
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, ValidationError

from near_schema import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    HealthResponse,
    InfoResponse,
    PoolList,
    PoolRequest,
    PoolStatus,
    ReadyResponse,
    RunInfo,
    RunRoundDetail,
    SelectRequest,
    SelectResponse,
    Strategy,
)

from .errors import (
    APIError,
    ConnectError,
    InvalidResponseError,
    NearClientError,
    PoolFailedError,
    PoolNotReadyError,
    RateLimitedError,
    RequestTimeoutError,
    ServiceUnavailableError,
    TransportError,
    raise_for_status,
)

__all__ = ["DEFAULT_TIMEOUT", "AsyncNearClient", "NearClient", "RetryPolicy"]

log = logging.getLogger("near_client")

#: Connecting is quick or hopeless; a /select over thousands of queries on a CPU may take a while.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried: ``attempts`` tries in all, exponential backoff with jitter.

    The n-th retry waits ``min(max_backoff, backoff * 2**n)`` plus up to ``jitter`` of that again,
    and never less than the service's ``Retry-After`` (capped at ``max_retry_after``).
    ``RetryPolicy(attempts=1)`` disables retries. A POST (``/select``, ``/v1/embeddings``) whose
    answer timed out is retried only with ``retry_read_timeouts=True``.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    retry_read_timeouts: bool = False

    def delay(self, attempt: int, error: NearClientError) -> float | None:
        """Seconds to wait before retrying after the ``attempt``-th failure (0-based), or None."""
        if attempt + 1 >= self.attempts or not retryable(error):
            return None
        base = min(self.max_backoff, self.backoff * (2**attempt))
        wait = base + random.uniform(0.0, self.jitter * base)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, min(float(retry_after), self.max_retry_after))
        return float(wait)


def retryable(error: NearClientError) -> bool:
    """Transport failures, 429 and 502/503/504 are worth retrying; other errors would repeat."""
    return isinstance(error, (TransportError, RateLimitedError, ServiceUnavailableError))


def _transport_error(exc: httpx.TransportError, url: str) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeoutError(f"{url}: timed out ({type(exc).__name__})")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return ConnectError(f"{url}: {exc or type(exc).__name__}")
    return TransportError(f"{url}: {exc or type(exc).__name__}")


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise InvalidResponseError(
            f"{response.request.method} {response.request.url.path}: answer is not a {model.__name__} "
            f"({exc.error_count()} problems; first: {exc.errors()[0]['msg']})"
        ) from exc


def _ready(response: httpx.Response) -> ReadyResponse:
    """A /ready answer: 200, or 503 with the loading progress (any other 503 body is an error)."""
    try:
        return _parse(ReadyResponse, response)
    except InvalidResponseError:
        raise_for_status(response)
        raise


class _Base:
    """What the sync and async clients share: configuration, request bodies, answer parsing."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy | int,
        headers: dict[str, str] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(attempts=retry) if isinstance(retry, int) else retry
        self._headers = {"User-Agent": "near-client", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)

    def __repr__(self) -> str:  # never shows the API key
        return f"{type(self).__name__}({self.base_url!r})"

    @staticmethod
    def _select_body(
        queries: Sequence[str],
        max_k: int,
        budget: int | None,
        strategy: Strategy,
        run_id: str | None,
        round: int | None,
        exclude_previous: bool,
        pool: str | None = None,
    ) -> dict[str, Any]:
        request = SelectRequest(  # the schema is strict: numpy integers become ints here, "5" is refused
            queries=list(queries),
            max_k=operator.index(max_k),
            budget=None if budget is None else operator.index(budget),
            strategy=strategy,
            run_id=run_id,
            round=None if round is None else operator.index(round),
            exclude_previous=bool(exclude_previous),
            pool=pool,
        )
        return request.model_dump(mode="json", exclude_none=True)

    @staticmethod
    def _pool_put(
        name: str,
        texts: Sequence[str] | None,
        files: Sequence[str] | None,
        template: str,
        replace: bool,
        density_stats: str | None,
    ) -> tuple[str, dict[str, Any] | _Ndjson]:
        """The request of ``PUT /pools/{name}``: texts go as NDJSON, streamed (never one JSON body:
        a large pool would be held in memory several times), files as JSON."""
        body = PoolRequest(  # validates both shapes (non-empty, strings, no lone surrogates)
            texts=None if texts is None else list(texts),  # the strings are shared, not copied
            files=None if files is None else [str(f) for f in files],
            template=template,
            density_stats=density_stats,  # type: ignore[arg-type]
        )
        params = {"replace": "true"} if replace else {}
        if body.texts is not None and density_stats is not None:  # an NDJSON body's option goes in the query
            params["density_stats"] = density_stats
        path = _pool_path(name) + ("?" + urlencode(params) if params else "")
        if body.texts is None:
            return path, body.model_dump(mode="json", exclude_none=True)
        return path, _Ndjson(body.texts)

    @staticmethod
    def _embeddings_body(input: str | Sequence[str], model: str | None, dimensions: int | None) -> dict[str, Any]:
        texts = input if isinstance(input, str) else list(input)
        body = EmbeddingsRequest(input=texts, model=model, dimensions=dimensions)
        return body.model_dump(mode="json", exclude_none=True)

    def _log_retry(self, method: str, path: str, error: NearClientError, wait: float, attempt: int) -> None:
        log.warning(
            "%s %s%s failed (%s); retry %d/%d in %.1fs",
            method,
            self.base_url,
            path,
            error,
            attempt + 1,
            self.retry.attempts - 1,
            wait,
        )


class NearClient(_Base):
    """Synchronous client. Use it as a context manager, or call :meth:`close`.

    Args:
        base_url: the service, e.g. ``http://near:8000``.
        api_key: sent as ``Authorization: Bearer <key>`` (the service's ``NEAR_API_KEY``).
        timeout: seconds, or an ``httpx.Timeout`` (default: 5 s to connect, 120 s for the rest).
        retry: a :class:`RetryPolicy`, or the number of attempts.
        transport: an ``httpx`` transport (tests, proxies).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | int = RetryPolicy(),
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry, headers)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    def __enter__(self) -> NearClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, json: Any = None, *, retry: bool = True, accept: tuple[int, ...] = ()
    ) -> httpx.Response:
        attempt = 0
        while True:
            error: NearClientError
            try:
                if isinstance(json, _Ndjson):  # a fresh stream for every attempt
                    response = self._http.request(method, path, content=json.chunks(), headers=json.headers)
                else:
                    response = self._http.request(method, path, json=json)
                if response.status_code not in accept:
                    raise_for_status(response)
                return response
            except httpx.TransportError as exc:
                error = _transport_error(exc, self.base_url + path)
                if method == "POST" and isinstance(exc, httpx.ReadTimeout) and not self.retry.retry_read_timeouts:
                    retry = False  # the service was working on it: asking again adds load, not speed
            except APIError as exc:
                error = exc
            wait = self.retry.delay(attempt, error) if retry else None
            if wait is None:
                raise error
            self._log_retry(method, path, error, wait, attempt)
            time.sleep(wait)
            attempt += 1

    def select(
        self,
        queries: Sequence[str],
        max_k: int,
        *,
        budget: int | None = None,
        strategy: Strategy = "density",
        run_id: str | None = None,
        round: int | None = None,
        exclude_previous: bool = False,
        pool: str | None = None,
    ) -> SelectResponse:
        """``POST /select``: each query's ``max_k`` nearest candidates, and ``budget`` unique ones,
        in pool ``pool`` (default: the service's pool named ``default``)."""
        body = self._select_body(queries, max_k, budget, strategy, run_id, round, exclude_previous, pool)
        return _parse(SelectResponse, self._request("POST", "/select", body))

    def put_pool(
        self,
        name: str,
        texts: Sequence[str] | None = None,
        *,
        files: Sequence[str] | None = None,
        template: str = "default",
        replace: bool = False,
        density_stats: str | None = None,
    ) -> PoolStatus:
        """``PUT /pools/{name}``: register ``texts`` (rendered) or ``files`` (under the service's
        NEAR_POOL_DIR, rendered with ``template``). Returns at once; :meth:`wait_pool` waits.

        >>> near.put_pool("gsm8k", texts=pool_texts).state                  # doctest: +SKIP
        'queued'
        """
        path, body = self._pool_put(name, texts, files, template, replace, density_stats)
        return _parse(PoolStatus, self._request("PUT", path, body))

    def pools(self) -> list[PoolStatus]:
        """``GET /pools``: every pool with its state, rows, fingerprint, progress and memory."""
        return _parse(PoolList, self._request("GET", "/pools")).pools

    def pool(self, name: str) -> PoolStatus:
        """``GET /pools/{name}`` (``PoolNotFoundError`` if there is none)."""
        return _parse(PoolStatus, self._request("GET", _pool_path(name)))

    def delete_pool(self, name: str) -> PoolStatus:
        """``DELETE /pools/{name}``: frees its memory and vector file (runs keep their ledger)."""
        return _parse(PoolStatus, self._request("DELETE", _pool_path(name)))

    def wait_pool(
        self,
        name: str,
        timeout: float = 600.0,
        *,
        interval: float = 1.0,
        progress: bool = False,
        searchable: bool = False,
    ) -> PoolStatus:
        """Poll ``GET /pools/{name}`` until the pool is ``ready`` (or, with ``searchable``, already
        searchable while its statistics compute). ``progress`` shows a tqdm bar on a terminal.
        Raises :class:`PoolFailedError` if it fails, ``PoolNotReadyError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with _Bar(name, progress) as bar:
            while True:
                status = self.pool(name)
                bar.show(status)
                if _pool_done(status, searchable):
                    return status
                if time.monotonic() >= deadline:
                    raise _pool_timeout(status, timeout)
                time.sleep(interval)

    def info(self) -> InfoResponse:
        """``GET /info``: model, backend, dtype, pool size and fingerprint, Redis state."""
        return _parse(InfoResponse, self._request("GET", "/info"))

    def health(self) -> HealthResponse:
        """``GET /health``: liveness (never needs the API key)."""
        return _parse(HealthResponse, self._request("GET", "/health"))

    def ready(self) -> ReadyResponse:
        """``GET /ready`` once, without retrying: ``status`` is ready, loading (with progress) or failed."""
        return _ready(self._request("GET", "/ready", retry=False, accept=(503,)))

    def wait_ready(self, timeout: float = 600.0, interval: float = 1.0) -> ReadyResponse:
        """Poll ``/ready`` until the service is ready (connection errors count as not yet up).

        Raises ``ServiceUnavailableError`` if it reports ``failed`` or is still loading after
        ``timeout`` seconds, and ``ConnectError`` if it never answered.
        """
        deadline = time.monotonic() + timeout
        last: ReadyResponse | NearClientError | None = None
        while True:
            try:
                last = self.ready()
                if last.status == "ready":
                    return last
                if last.status == "failed":
                    raise ServiceUnavailableError(503, "failed", last.message or "the service failed to load")
            except (TransportError, ServiceUnavailableError) as exc:
                if isinstance(exc, ServiceUnavailableError) and exc.code == "failed":
                    raise
                last = exc
            if time.monotonic() >= deadline:
                raise _not_ready(self.base_url, timeout, last)
            time.sleep(interval)

    def runs(self, run_id: str) -> RunInfo:
        """``GET /runs/{run_id}``: the rounds the ledger stored for a training run."""
        return _parse(RunInfo, self._request("GET", f"/runs/{quote(run_id, safe='')}"))

    def run_round(self, run_id: str, round: int) -> RunRoundDetail:
        """``GET /runs/{run_id}/rounds/{round}``: one stored round and its selection (NotFoundError if not stored).

        >>> near.run_round("exp1", 0).selected[:3]                             # doctest: +SKIP
        [412, 17, 3301]
        """
        return _parse(RunRoundDetail, self._request("GET", _round_path(run_id, round)))

    def run_report(self, run_id: str) -> str:
        """``GET /runs/{run_id}/report``: the run's report, one self-contained HTML page."""
        return self._request("GET", f"/runs/{quote(run_id, safe='')}/report").text

    def pool_report(self, name: str) -> str:
        """``GET /pools/{name}/report``: the pool's report, one self-contained HTML page."""
        return self._request("GET", _pool_path(name) + "/report").text

    def embeddings(
        self, input: str | Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingsResponse:
        """``POST /v1/embeddings`` (OpenAI-compatible): embed texts as documents."""
        body = self._embeddings_body(input, model, dimensions)
        return _parse(EmbeddingsResponse, self._request("POST", "/v1/embeddings", body))


class AsyncNearClient(_Base):
    """Asynchronous twin of :class:`NearClient` (same arguments, same methods, awaited).

    >>> async with AsyncNearClient("http://near:8000") as near:   # doctest: +SKIP
    ...     answer = await near.select(["What is 7 * 8?"], max_k=100)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | int = RetryPolicy(),
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retry, headers)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncNearClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, json: Any = None, *, retry: bool = True, accept: tuple[int, ...] = ()
    ) -> httpx.Response:
        attempt = 0
        while True:
            error: NearClientError
            try:
                if isinstance(json, _Ndjson):  # a fresh stream for every attempt
                    response = await self._http.request(method, path, content=json.achunks(), headers=json.headers)
                else:
                    response = await self._http.request(method, path, json=json)
                if response.status_code not in accept:
                    raise_for_status(response)
                return response
            except httpx.TransportError as exc:
                error = _transport_error(exc, self.base_url + path)
                if method == "POST" and isinstance(exc, httpx.ReadTimeout) and not self.retry.retry_read_timeouts:
                    retry = False  # the service was working on it: asking again adds load, not speed
            except APIError as exc:
                error = exc
            wait = self.retry.delay(attempt, error) if retry else None
            if wait is None:
                raise error
            self._log_retry(method, path, error, wait, attempt)
            await asyncio.sleep(wait)
            attempt += 1

    async def select(
        self,
        queries: Sequence[str],
        max_k: int,
        *,
        budget: int | None = None,
        strategy: Strategy = "density",
        run_id: str | None = None,
        round: int | None = None,
        exclude_previous: bool = False,
        pool: str | None = None,
    ) -> SelectResponse:
        body = self._select_body(queries, max_k, budget, strategy, run_id, round, exclude_previous, pool)
        return _parse(SelectResponse, await self._request("POST", "/select", body))

    async def put_pool(
        self,
        name: str,
        texts: Sequence[str] | None = None,
        *,
        files: Sequence[str] | None = None,
        template: str = "default",
        replace: bool = False,
        density_stats: str | None = None,
    ) -> PoolStatus:
        path, body = self._pool_put(name, texts, files, template, replace, density_stats)
        return _parse(PoolStatus, await self._request("PUT", path, body))

    async def pools(self) -> list[PoolStatus]:
        return _parse(PoolList, await self._request("GET", "/pools")).pools

    async def pool(self, name: str) -> PoolStatus:
        return _parse(PoolStatus, await self._request("GET", _pool_path(name)))

    async def delete_pool(self, name: str) -> PoolStatus:
        return _parse(PoolStatus, await self._request("DELETE", _pool_path(name)))

    async def wait_pool(
        self,
        name: str,
        timeout: float = 600.0,
        *,
        interval: float = 1.0,
        progress: bool = False,
        searchable: bool = False,
    ) -> PoolStatus:
        deadline = time.monotonic() + timeout
        with _Bar(name, progress) as bar:
            while True:
                status = await self.pool(name)
                bar.show(status)
                if _pool_done(status, searchable):
                    return status
                if time.monotonic() >= deadline:
                    raise _pool_timeout(status, timeout)
                await asyncio.sleep(interval)

    async def info(self) -> InfoResponse:
        return _parse(InfoResponse, await self._request("GET", "/info"))

    async def health(self) -> HealthResponse:
        return _parse(HealthResponse, await self._request("GET", "/health"))

    async def ready(self) -> ReadyResponse:
        return _ready(await self._request("GET", "/ready", retry=False, accept=(503,)))

    async def wait_ready(self, timeout: float = 600.0, interval: float = 1.0) -> ReadyResponse:
        deadline = time.monotonic() + timeout
        last: ReadyResponse | NearClientError | None = None
        while True:
            try:
                last = await self.ready()
                if last.status == "ready":
                    return last
                if last.status == "failed":
                    raise ServiceUnavailableError(503, "failed", last.message or "the service failed to load")
            except (TransportError, ServiceUnavailableError) as exc:
                if isinstance(exc, ServiceUnavailableError) and exc.code == "failed":
                    raise
                last = exc
            if time.monotonic() >= deadline:
                raise _not_ready(self.base_url, timeout, last)
            await asyncio.sleep(interval)

    async def runs(self, run_id: str) -> RunInfo:
        return _parse(RunInfo, await self._request("GET", f"/runs/{quote(run_id, safe='')}"))

    async def run_round(self, run_id: str, round: int) -> RunRoundDetail:
        return _parse(RunRoundDetail, await self._request("GET", _round_path(run_id, round)))

    async def embeddings(
        self, input: str | Sequence[str], *, model: str | None = None, dimensions: int | None = None
    ) -> EmbeddingsResponse:
        body = self._embeddings_body(input, model, dimensions)
        return _parse(EmbeddingsResponse, await self._request("POST", "/v1/embeddings", body))


@dataclass(frozen=True)
class _Ndjson:
    """A pool's texts as an NDJSON body (one JSON string a line), made as it is sent, in chunks."""

    texts: list[str]
    chunk_bytes: int = 256 * 1024

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/x-ndjson"}

    def chunks(self) -> Iterator[bytes]:
        lines: list[bytes] = []
        size = 0
        for text in self.texts:
            line = jsonlib.dumps(text, ensure_ascii=False).encode() + b"\n"
            lines.append(line)
            size += len(line)
            if size >= self.chunk_bytes:
                yield b"".join(lines)
                lines, size = [], 0
        if lines:
            yield b"".join(lines)

    async def achunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


def _pool_path(name: str) -> str:
    return f"/pools/{quote(name, safe='')}"


def _round_path(run_id: str, round: int) -> str:
    return f"/runs/{quote(run_id, safe='')}/rounds/{int(round)}"


def _pool_done(status: PoolStatus, searchable: bool) -> bool:
    if status.state == "failed":
        raise PoolFailedError(f"pool {status.name!r} failed on the service: {status.message}")
    return status.state == "ready" or (searchable and status.state in ("stats", "evicted"))


def _pool_timeout(status: PoolStatus, timeout: float) -> NearClientError:
    p = status.progress
    return PoolNotReadyError(
        503, "pool_not_ready", f"pool {status.name!r} still {status.state} after {timeout:g}s ({p.done}/{p.total})"
    )


class _Bar:
    """A tqdm bar of a pool's progress, on a terminal and where tqdm is installed; else nothing."""

    def __init__(self, name: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=0, unit="row", desc=f"pool {name}")

    def show(self, status: PoolStatus) -> None:
        if self._bar is not None:
            self._bar.total = status.progress.total
            self._bar.n = status.progress.done
            self._bar.set_postfix_str(status.state, refresh=True)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _not_ready(url: str, timeout: float, last: ReadyResponse | NearClientError | None) -> NearClientError:
    if isinstance(last, ReadyResponse):
        progress = f" ({last.progress.done}/{last.progress.total} embedded)" if last.progress else ""
        return ServiceUnavailableError(503, "not_ready", f"{url} still {last.status} after {timeout:g}s{progress}")
    if isinstance(last, TransportError):
        return ConnectError(f"{url} did not answer within {timeout:g}s: {last}")
    return ServiceUnavailableError(503, "not_ready", f"{url} not ready after {timeout:g}s: {last}")
