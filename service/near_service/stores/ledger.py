"""The run ledger: every ``/select`` with ``run_id`` and ``round`` is stored in Redis, once.

Asking for a stored (run_id, round) again returns the stored result byte for byte, so a restarted
or resumed trainer gets the same data. Asking for it with *different* parameters is a
:class:`ConflictError` (409): the ledger never silently answers a question that was not asked.
``exclude_previous`` leaves out what the run's earlier rounds (``< round``) selected.

Keys carry a scope that hashes the pool fingerprint, the embedder namespace (model, revision,
backend, dtype, max length, pooling), the query prompt and the index settings, so a service with
a different pool or model never reads another's rounds:

    near:run:<scope>:<run_id>:meta   hash  round -> JSON {params, created_at, selected, shape}
    near:run:<scope>:<run_id>:data   hash  round -> int32 indices + float32 scores (row-major)

Every Redis error becomes an :class:`UnavailableError` (503): no silently forgotten round. A hung
Redis is a 503 after the client's socket timeout, and at once while the shared :class:`Breaker` is
open. ``exclude_previous`` with an earlier round missing is a :class:`MissingRoundsError` (409);
an entry that cannot be read back is a :class:`LedgerDamagedError` (409), never a 500.

The ledger's keys never expire: Redis must not evict them (``maxmemory-policy volatile-lru`` or
``volatile-ttl``, so only the expiring query vectors of the cache are evicted, or no ``maxmemory``).

>>> ledger = Ledger(redis_client, scope="3f2a...")                           # doctest: +SKIP
>>> ledger.get("run-1", 0) is None                                           # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from near_service.core.errors import (
    ConflictError,
    LedgerDamagedError,
    MissingRoundsError,
    NotFoundError,
    RunPoolMismatchError,
    UnavailableError,
)
from near_service.core.pool import SelectResult
from near_service.stores.breaker import Breaker

# Store both halves of a round only if the round is new; returns 1 if stored, 0 if it already existed.
_PUT_IF_ABSENT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


QUERY_SAMPLE = 32  # query texts kept per round for reports
QUERY_SAMPLE_CHARS = 2000


def ledger_scope(*parts: object) -> str:
    """A short hash of everything that decides a round's answer besides the request."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:20]


@dataclass
class StoredRound:
    """A round as the ledger holds it: what was asked (``params``), when, and the answer."""

    round: int
    params: dict[str, Any]
    created_at: float
    result: SelectResult

    def check_params(self, run_id: str, params: dict[str, Any]) -> None:
        """ConflictError naming what differs when this round is asked again with other parameters."""
        diffs = [
            f"{k}: stored {self.params.get(k)!r}, asked {v!r}" for k, v in params.items() if self.params.get(k) != v
        ]
        if diffs:
            raise ConflictError(
                f"run {run_id!r} round {self.round} is already stored with different "
                f"parameters ({'; '.join(diffs)}); ask for a new round or a new run_id"
            )


def _damaged(run_id: str, round_: object, why: str) -> LedgerDamagedError:
    return LedgerDamagedError(
        f"run {run_id!r} round {round_}: the ledger entry is damaged ({why}); it cannot be replayed. "
        "Use a new run_id, or delete the run's near:run:*:<run_id>:* keys in Redis"
    )


def _parse_meta(run_id: str, round_: object, raw: bytes | str) -> dict[str, Any]:
    """A round's meta JSON, checked for the fields the ledger reads (LedgerDamagedError if not)."""
    try:
        m = json.loads(raw)
        q, k = (int(x) for x in m["shape"])
        selected = m["selected"]
        if selected is not None and not all(isinstance(i, int) for i in selected):
            raise ValueError("selected is not a list of integers")
        if not isinstance(m["params"], dict) or q < 0 or k < 0:
            raise ValueError("bad params or shape")
        float(m["created_at"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise _damaged(run_id, round_, f"{type(exc).__name__}: {str(exc)[:120]}") from None
    return dict(m)


def _round_numbers(run_id: str, metas: dict[Any, Any]) -> list[tuple[int, Any]]:
    out = []
    for r, raw in metas.items():
        try:
            out.append((int(r), raw))
        except ValueError:
            raise _damaged(run_id, r, "the round is not a number") from None
    return sorted(out, key=lambda x: x[0])


class Ledger:
    """Rounds of training runs in Redis. Blocking calls: the service runs them in a worker thread.

    ``client`` should have a socket timeout (the service uses ``NEAR_LEDGER_TIMEOUT``, 2 s); while
    ``breaker`` (shared with the embedding cache) is open, every call is a 503 at once.
    """

    def __init__(self, client: Any, scope: str, breaker: Breaker | None = None) -> None:
        self.client, self.scope = client, scope
        self.breaker = breaker if breaker is not None else Breaker()
        self._put_script = client.register_script(_PUT_IF_ABSENT)

    def _keys(self, run_id: str) -> tuple[str, str]:
        base = f"near:run:{self.scope}:{run_id}"
        return base + ":meta", base + ":data"

    def _call(self, fn: Callable[[], Any]) -> Any:
        return _guarded(self.breaker, fn)

    def get(self, run_id: str, round_: int) -> StoredRound | None:
        meta_key, data_key = self._keys(run_id)

        def fetch() -> Any:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(meta_key, str(round_))
            pipe.hget(data_key, str(round_))
            return pipe.execute()

        meta, data = self._call(fetch)
        if meta is None and data is None:
            return None
        if meta is None or data is None:
            raise _damaged(run_id, round_, "half of the entry is missing")
        m = _parse_meta(run_id, round_, meta)
        q, k = m["shape"]
        if len(data) != 8 * q * k:
            raise _damaged(run_id, round_, f"{len(data)} bytes of results for shape {q}x{k}")
        indices = np.frombuffer(data, dtype="<i4", count=q * k).reshape(q, k).astype(np.int64)
        scores = np.frombuffer(data, dtype="<f4", offset=4 * q * k).reshape(q, k).copy()
        selected = None if m["selected"] is None else np.asarray(m["selected"], dtype=np.int64)
        return StoredRound(round_, m["params"], m["created_at"], SelectResult(indices, scores, selected, "stored"))

    def previous_selected(self, run_id: str, round_: int) -> list[int]:
        """Candidates selected in the run's rounds before ``round_``, in round order.

        Every earlier round (0 .. round_-1) must be stored: a gap (Redis lost data, or rounds asked
        out of order) is a :class:`MissingRoundsError` (409), never a silently different exclusion.
        """
        meta_key, _ = self._keys(run_id)
        metas = self._call(lambda: self.client.hgetall(meta_key))
        earlier = [(r, raw) for r, raw in _round_numbers(run_id, metas) if r < round_]
        missing = sorted(set(range(round_)) - {r for r, _ in earlier})
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise MissingRoundsError(
                f"run {run_id!r} round {round_} asks to exclude earlier rounds, but round(s) {shown} "
                "are not in the ledger (asked out of order, or Redis lost them); ask those rounds first, "
                "or use a new run_id"
            )
        out: list[int] = []
        for r, raw in earlier:
            out.extend(_parse_meta(run_id, r, raw)["selected"] or [])
        return out

    def put(
        self,
        run_id: str,
        round_: int,
        params: dict[str, Any],
        result: SelectResult,
        query_texts: list[str] | None = None,
    ) -> StoredRound:
        """Store a new round; if another request stored it first, return that one instead.

        ``query_texts``: a sample of the round's queries (the first ``QUERY_SAMPLE``, each cut to
        ``QUERY_SAMPLE_CHARS``), kept for reports; the answer never depends on them."""
        meta_key, data_key = self._keys(run_id)
        created = time.time()
        selected = None if result.selected is None else [int(i) for i in result.selected]
        sample = [t[:QUERY_SAMPLE_CHARS] for t in (query_texts or [])[:QUERY_SAMPLE]]
        meta = json.dumps(
            {
                "params": params,
                "created_at": created,
                "selected": selected,
                "shape": list(result.indices.shape),
                "query_texts": sample,
            }
        )
        data = result.indices.astype("<i4").tobytes() + result.scores.astype("<f4").tobytes()
        stored = self._call(lambda: self._put_script(keys=[meta_key, data_key], args=[str(round_), meta, data]))
        if not stored:
            existing = self.get(run_id, round_)
            if existing is None:  # pragma: no cover - stored, then deleted under us
                raise UnavailableError(f"run {run_id!r} round {round_} vanished from the ledger; retry")
            return existing
        return StoredRound(round_, params, created, result)

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The run's rounds in order (NotFoundError if it has none)."""
        meta_key, _ = self._keys(run_id)
        metas = self._call(lambda: self.client.hgetall(meta_key))
        if not metas:
            raise NotFoundError(f"no run {run_id!r} in the ledger for this pool and model")
        out = []
        for r, raw in _round_numbers(run_id, metas):
            m = _parse_meta(run_id, r, raw)
            out.append(
                {
                    "round": r,
                    "selected": len(m["selected"] or []),
                    "max_k": m["params"].get("max_k"),
                    "strategy": m["params"].get("strategy"),
                    "created_at": m["created_at"],
                    "budget": m["params"].get("budget"),
                    "query_count": m["params"].get("query_count"),
                }
            )
        return out

    def stored_rounds(self, run_id: str) -> list[tuple[StoredRound, list[str]]]:
        """Every stored round of the run, in order, with its sample of query texts (for reports)."""
        meta_key, _ = self._keys(run_id)
        metas = self._call(lambda: self.client.hgetall(meta_key))
        if not metas:
            raise NotFoundError(f"no run {run_id!r} in the ledger for this pool and model")
        out = []
        for r, raw in _round_numbers(run_id, metas):
            stored = self.get(run_id, r)
            if stored is not None:
                texts = _parse_meta(run_id, r, raw).get("query_texts") or []
                out.append((stored, [str(t) for t in texts]))
        return out


class RunBindings:
    """Which pool (name, fingerprint, ledger scope) each run belongs to: set by its first round.

    ``near:runpool:<scope>:<run_id>`` holds ``{"pool", "fingerprint", "ledger_scope"}``; ``scope``
    hashes the model and query prompt, so services of other models never see each other's runs.
    A run asked against another pool, or against its pool after the pool's content changed, is a
    :class:`RunPoolMismatchError` (409) naming both fingerprints."""

    def __init__(self, client: Any, scope: str, breaker: Breaker | None = None) -> None:
        self.client, self.scope = client, scope
        self.breaker = breaker if breaker is not None else Breaker()

    def _key(self, run_id: str) -> str:
        return f"near:runpool:{self.scope}:{run_id}"

    def get(self, run_id: str) -> dict[str, str] | None:
        raw = _guarded(self.breaker, lambda: self.client.get(self._key(run_id)))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return {k: str(data[k]) for k in ("pool", "fingerprint", "ledger_scope")}
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise LedgerDamagedError(
                f"run {run_id!r}: its pool binding in the ledger is damaged; use a new run_id"
            ) from None

    def bind(self, run_id: str, pool: str, fingerprint: str, ledger_scope: str) -> None:
        """Bind ``run_id`` to this pool unless it is bound already; 409 if bound to another."""
        value = json.dumps({"pool": pool, "fingerprint": fingerprint, "ledger_scope": ledger_scope})
        _guarded(self.breaker, lambda: self.client.set(self._key(run_id), value, nx=True))
        bound = self.get(run_id)
        if bound is not None and (bound["pool"], bound["fingerprint"]) != (pool, fingerprint):
            raise RunPoolMismatchError(
                f"run {run_id!r} belongs to pool {bound['pool']!r} (fingerprint {bound['fingerprint']}); this "
                f"request asks pool {pool!r} (fingerprint {fingerprint}). A run stays on the pool of its first "
                "round: use a new run_id for another pool or for changed pool content"
            )


def _guarded(breaker: Breaker, fn: Callable[[], Any]) -> Any:
    """``fn`` behind the breaker; any Redis error is a 503 (UnavailableError)."""
    if not breaker.allow():
        raise UnavailableError(
            f"the run ledger needs Redis, which is unavailable (next try in {breaker.retry_in():.1f}s); "
            "retry later, or leave out run_id to select without the ledger"
        )
    try:
        out = fn()
    except Exception as exc:  # any Redis or socket error: the ledger cannot be trusted now
        breaker.failure(exc)
        raise UnavailableError(
            f"the run ledger needs Redis, which is unavailable ({type(exc).__name__}); "
            "retry later, or leave out run_id to select without the ledger"
        ) from exc
    breaker.success()
    return out
