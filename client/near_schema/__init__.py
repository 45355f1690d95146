"""The wire contract of NEAR Select, written once: request and response models, the names both
sides agree on (strategies, statuses) and the pool fingerprint.

Both sides import this package and nothing else of each other: the service for its
``response_model``s and validation, the client to build requests and parse answers. It needs only
pydantic, so importing it stays cheap.

>>> SelectRequest(queries=["What is 2 + 2?"], max_k=10).strategy
'density'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["density", "round_robin", "max_score", "importance"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
LoadStatus = Literal["ready", "loading", "failed"]
#: A pool's life: queued -> embedding -> stats (searchable; density statistics computing) -> ready;
#: failed (with a message); evicted (vectors on disk only, reloaded by the next /select).
PoolState = Literal["queued", "embedding", "stats", "ready", "failed", "evicted"]
StatsState = Literal["pending", "computing", "ready", "off", "failed"]
PoolSource = Literal["startup", "texts", "files"]
POOL_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
DEFAULT_POOL = "default"
#: Every ``error.code`` the service sends. The client maps each one to an exception class
#: (``near_client.errors.ERROR_CLASSES``); a test checks that both lists agree.
ErrorCode = Literal[
    "invalid_config",
    "invalid_input",
    "invalid_record",
    "invalid_max_k",
    "budget_too_large",
    "invalid_pool_path",
    "unauthorized",
    "not_found",
    "pool_not_found",
    "request_timeout",
    "conflict",
    "missing_rounds",
    "ledger_damaged",
    "pool_conflict",
    "run_pool_mismatch",
    "too_large",
    "insufficient_memory",
    "insufficient_storage",
    "overloaded",
    "unavailable",
    "pool_not_ready",
    "stats_pending",
    "internal",
    "method_not_allowed",
    "bad_request",
    "forbidden",
    "not_acceptable",
    "unsupported_media_type",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)
RedisStatus = Literal["ok", "degraded", "disabled"]
ResultSource = Literal["computed", "stored"]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$"


def fingerprint(texts: Sequence[str]) -> str:
    """A stable fingerprint of an ordered list of texts (16 hex digits of a SHA-256).

    The service reports it for its candidate pool in every ``/select`` answer and in ``/info``, so a
    training job can check that the service holds its dataset.

    >>> fingerprint(["a", "b"]) == fingerprint(["a", "b"]) != fingerprint(["b", "a"])
    True
    """
    h = hashlib.sha256()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def _utf8(text: str) -> str:
    """Refuse a text that cannot be sent on as UTF-8 (a lone surrogate such as ``"\\ud800"`` in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}"
        ) from None
    return text


#: A text both sides can encode as UTF-8 (JSON allows lone surrogates like ``"\\ud800"``; UTF-8 does not).
Text = Annotated[str, AfterValidator(_utf8)]


class _Model(BaseModel):
    # strict: "5" is not an int, 0 is not a bool (JSON types are checked as sent)
    model_config = ConfigDict(extra="forbid", strict=True)


class SelectRequest(_Model):
    """``POST /select``: find each query's ``max_k`` nearest candidates, optionally pick ``budget``."""

    # the cross-field rules of _ledger_fields, in the OpenAPI schema too (JSON Schema 2020-12)
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "dependentRequired": {"run_id": ["round"], "round": ["run_id"]},
            "if": {"properties": {"exclude_previous": {"const": True}}, "required": ["exclude_previous"]},
            "then": {"required": ["run_id", "round", "budget"]},
        },
    )

    queries: list[Text] = Field(min_length=1, description="Query (target/validation) texts.")
    max_k: int = Field(ge=1, description="Neighbours per query; at most the pool size.")
    budget: int | None = Field(None, ge=1, description="Also return this many unique candidates.")
    strategy: Strategy = Field(
        "density",
        description="How the budget is filled: density (recommended: target density over the candidate's "
        "pool-neighbourhood density), round_robin (DataFlex's order), max_score, importance (target over "
        "pool density).",
    )
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Training run for the ledger.")
    round: int | None = Field(None, ge=0, le=100_000, description="Update round within the run.")
    exclude_previous: bool = Field(False, description="Leave out candidates selected in earlier rounds.")
    pool: str | None = Field(
        None, pattern=POOL_NAME_PATTERN, description="Registered pool to search (default: the pool named 'default')."
    )

    @model_validator(mode="after")
    def _ledger_fields(self) -> SelectRequest:
        if (self.run_id is None) != (self.round is None):
            raise ValueError("run_id and round go together: give both or neither")
        if self.exclude_previous and self.run_id is None:
            raise ValueError("exclude_previous needs run_id and round")
        if self.exclude_previous and self.budget is None:
            raise ValueError("exclude_previous needs a budget")
        return self


class PoolInfo(BaseModel):
    size: int
    fingerprint: str
    model: str
    name: str = DEFAULT_POOL


class PoolRequest(_Model):
    """``PUT /pools/{name}``: the pool's texts (rendered) or files under NEAR_POOL_DIR (rendered here).

    An NDJSON body (``Content-Type: application/x-ndjson``, one JSON string per line) is the same as
    ``{"texts": [...]}`` and is read as it streams in."""

    texts: list[Text] | None = Field(None, min_length=1, description="Already rendered texts, one per row.")
    files: list[str] | None = Field(
        None, min_length=1, max_length=256, description="Files relative to NEAR_POOL_DIR, read in order."
    )
    template: str = Field("default", description="How the files' records become texts (see --template).")
    density_stats: Literal["auto", "load", "off"] | None = Field(
        None, description="This pool's density statistics (default: NEAR_DENSITY_STATS)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> PoolRequest:
        if (self.texts is None) == (self.files is None):
            raise ValueError("give exactly one of texts or files")
        if self.texts is not None:
            for i, t in enumerate(self.texts):
                if not t.strip():
                    raise ValueError(f"texts[{i}] is empty: every row needs text")
        return self


class PoolProgress(BaseModel):
    done: int = 0
    total: int = 0
    rows_per_s: float | None = None
    eta_s: float | None = None


class StatsStatus(BaseModel):
    state: StatsState = "pending"
    done: int = 0
    total: int = 0
    method: str | None = None
    message: str | None = None


class PoolStatus(BaseModel):
    """One registered pool, as ``GET /pools/{name}`` shows it."""

    name: str
    state: PoolState
    rows: int
    fingerprint: str
    source: PoolSource
    default: bool = Field(description="The pool /select searches when the request names none.")
    progress: PoolProgress = Field(default_factory=PoolProgress)
    stats: StatsStatus = Field(default_factory=StatsStatus)
    memory_bytes: int = Field(0, description="Host (or GPU) memory the pool holds now: vectors, index, statistics.")
    planned_bytes: int = Field(0, description="What the pool holds once loaded (the memory plan).")
    message: str | None = None
    created_at: float = 0.0
    last_used: float | None = None
    embedded: int = Field(0, description="Rows run through the model for this pool (0: all from stores).")


class PoolList(BaseModel):
    pools: list[PoolStatus]
    default: str | None
    memory_bytes: int = Field(description="Memory all loaded pools hold.")
    max_memory_bytes: int = Field(description="NEAR_MAX_POOL_MEMORY: what pools may hold together.")


class MemoryPlanInfo(BaseModel):
    """Where search runs and the memory it holds there, as planned (and checked) before ready."""

    device: str = Field(description="'cpu', or the CUDA device holding the pool.")
    storage: str = Field(description="float32 or float16: how the pool is held on the device.")
    pool_bytes: int = Field(description="The pool's vectors on the search device (host RAM on the CPU).")
    workspace_bytes: int = Field(description="One search at max_k_limit over a block of queries (estimated).")
    block_bytes: int = Field(description="One score block, as bounded by the plan.")
    query_block: int = Field(description="Queries per block.")
    free_bytes: int | None = Field(None, description="Free on the device after the model loaded, before the pool.")
    total_bytes: int | None = Field(None, description="The card's memory, where known.")
    vllm_gpu_memory_utilization: float | None = Field(None, description="vLLM's share of the GPU (vLLM only).")
    peak_bytes: int | None = Field(None, description="Measured peak over the warm-up search, pool included (CUDA).")


class SelectResponse(BaseModel):
    indices: list[list[int]] = Field(description="Per query, max_k candidate indices, nearest first.")
    scores: list[list[float]] = Field(description="Cosine similarities matching indices.")
    selected: list[int] | None = Field(None, description="The budget's unique candidates, or null.")
    source: ResultSource = Field(
        "computed",
        description="computed for this request, or stored: read back "
        "from the run ledger (the same (run_id, round) asked before).",
    )
    pool: PoolInfo


class InfoResponse(BaseModel):
    version: str
    model: str
    revision: str
    backend: str
    device: str
    dtype: str
    dim: int
    max_length: int
    pooling: str
    query_prompt: str
    index: str
    pool: PoolInfo | None = Field(None, description="The default pool, where there is one and it is searchable.")
    pools: list[PoolStatus] = Field(default_factory=list)
    redis: RedisStatus
    memory: MemoryPlanInfo | None = None
    max_k_limit: int | None = Field(
        None, description="NEAR_MAX_K_LIMIT: the largest max_k a /select may ask for (null: an older service)."
    )


class Progress(BaseModel):
    done: int
    total: int


class ReadyResponse(BaseModel):
    status: LoadStatus
    progress: Progress | None = None
    redis: RedisStatus
    message: str | None = None
    pool: str | None = Field(None, description="The default pool this status is about (null: none).")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class RunRound(BaseModel):
    round: int
    selected: int = Field(description="How many candidates the round selected.")
    max_k: int
    strategy: Strategy
    created_at: float = Field(description="Unix time the round was first stored.")
    budget: int | None = None
    query_count: int | None = None


class RunInfo(BaseModel):
    run_id: str
    pool: PoolInfo
    rounds: list[RunRound]
    pool_deleted: bool = Field(False, description="The run's pool is no longer registered (its rounds remain).")


class RunRoundDetail(BaseModel):
    """One stored round of a run, as ``GET /runs/{run_id}/rounds/{round}`` shows it: what was asked
    and the selection it answered (what a resumed trainer replays without computing its queries)."""

    run_id: str
    round: int
    strategy: Strategy
    max_k: int
    budget: int | None = None
    query_count: int | None = None
    exclude_previous: bool = False
    created_at: float = Field(description="Unix time the round was first stored.")
    selected: list[int] | None = Field(description="The round's selected candidates, best first (null: no budget).")
    pool: PoolInfo
    pool_deleted: bool = Field(False, description="The run's pool is no longer registered (its rounds remain).")


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorBody(BaseModel):
    """Every error the service sends: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings`` (OpenAI-compatible; unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="Text or texts to embed (as documents)."
    )
    model: str | None = Field(None, description="Ignored beyond a check: the service has one model.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage
