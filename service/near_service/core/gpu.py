"""The GPU, read without a CUDA context, and the decisions that depend on it.

A CUDA context in the service process before vLLM starts costs ~0.5 GiB of the card, fails on
EXCLUSIVE_PROCESS GPUs, and (CUDA initialised before vLLM forks its engine) makes vLLM fall back to
spawning. So the facts here come from NVML (the driver's management library: ``nvidia-ml-py``, else
vLLM's bundled copy), then ``nvidia-smi``; the device count from torch's NVML-based count. Torch's
CUDA runtime is first touched when the pool moves to the GPU, after vLLM has loaded
(:mod:`near_service.core.memory`).

Each decision is a plain function of the facts, so tests feed it fake facts:

>>> dtype_for(GpuFacts(capability=(9, 0), total_bytes=80 << 30))
'bfloat16'
>>> choose_ivf_engine((9, 0), k=100, faiss_gpu=True)[0]
'faiss-cpu'
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# The faiss-gpu-cu12 wheel ships kernels for sm_70 and sm_80; a kernel runs on later minors of its
# major (sm_75, sm_86, sm_89), never on another major (Hopper sm_90, Blackwell sm_100/sm_120).
FAISS_GPU_MAJORS = (7, 8)
FAISS_GPU_MAX_K = 2048  # GPU FAISS's k (and nprobe) limit
IvfEngine = Literal["faiss-gpu", "faiss-cpu"]


@dataclass(frozen=True)
class GpuFacts:
    """What NVML (or nvidia-smi) says about the first visible GPU."""

    capability: tuple[int, int] | None
    total_bytes: int | None
    name: str = "GPU"


FactsSource = Callable[[], "GpuFacts | None"]


def cuda_device_count() -> int:
    """CUDA GPUs torch may use, counted through NVML: no CUDA context, no fork poisoning.

    ``torch.cuda.is_available()`` calls ``cudaGetDeviceCount``, which runs ``cuInit`` in this
    process unless ``PYTORCH_NVML_BASED_CUDA_CHECK=1``; torch's NVML count (it honours
    ``CUDA_VISIBLE_DEVICES``) does neither. Where NVML fails, fall back to torch's own check.
    """
    import torch

    if torch.version.cuda is None:  # a CPU build of torch
        return 0
    count = int(getattr(torch.cuda, "_device_count_nvml", lambda: -1)())
    if count >= 0:
        return count
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _nvml_index() -> int:
    """NVML's index of CUDA device 0 (``CUDA_VISIBLE_DEVICES`` may reorder them)."""
    try:
        import torch

        return int(torch.cuda._get_nvml_device_index(0))
    except Exception:
        return 0


def _nvml() -> Any | None:
    for name in ("pynvml", "vllm.third_party.pynvml"):
        try:
            return importlib.import_module(name)
        except Exception:
            continue
    return None


def nvml_facts() -> GpuFacts | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(_nvml_index())
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            name = nvml.nvmlDeviceGetName(handle)
        finally:
            nvml.nvmlShutdown()
    except Exception as exc:
        log.debug("NVML could not describe the GPU: %s", exc)
        return None
    return GpuFacts((int(major), int(minor)), total, name.decode() if isinstance(name, bytes) else str(name))


def parse_smi(line: str) -> GpuFacts:
    """One line of ``nvidia-smi --query-gpu=compute_cap,memory.total,name --format=csv,noheader,nounits``.

    >>> parse_smi("9.0, 81559, NVIDIA H100 80GB HBM3").capability
    (9, 0)
    """
    cap, mem, name = (x.strip() for x in line.split(",", 2))
    major, minor = cap.split(".")
    return GpuFacts((int(major), int(minor)), int(float(mem)) << 20, name)


def smi_facts() -> GpuFacts | None:
    query = "--query-gpu=compute_cap,memory.total,name"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={_nvml_index()}", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return parse_smi(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.debug("nvidia-smi could not describe the GPU: %s", exc)
        return None


def gpu_facts() -> GpuFacts | None:
    """The first visible GPU's compute capability and memory, or None where neither NVML nor nvidia-smi answers."""
    return nvml_facts() or smi_facts()


def dtype_for(facts: GpuFacts | None) -> str:
    """``auto`` dtype on CUDA: bfloat16 from compute capability 8.0 (Ampere) on, else float32."""
    if facts is None or facts.capability is None:
        log.warning("could not read the GPU's compute capability (NVML, nvidia-smi): embedding in float32")
        return "float32"
    return "bfloat16" if facts.capability >= (8, 0) else "float32"


def faiss_has_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


def choose_ivf_engine(capability: tuple[int, int] | None, k: int, faiss_gpu: bool) -> tuple[IvfEngine, str]:
    """Where an ``ivf`` search of ``k`` neighbours runs, and why (for the log).

    faiss-gpu only where its wheel has kernels for this GPU and ``k`` is within GPU FAISS's limit.

    >>> choose_ivf_engine((8, 0), 5000, True)
    ('faiss-cpu', 'K 5000 is above 2048, the most GPU FAISS returns')
    """
    if not faiss_gpu:
        return "faiss-cpu", "faiss has no GPU support here (install the faiss-gpu extra)"
    if capability is None:
        return "faiss-cpu", "the GPU's compute capability is unknown"
    if capability[0] not in FAISS_GPU_MAJORS:
        arch = f"sm_{capability[0]}{capability[1]}"
        return "faiss-cpu", f"the faiss-gpu wheel has no kernels for {arch} (only sm_70 and sm_80 families)"
    if k > FAISS_GPU_MAX_K:
        return "faiss-cpu", f"K {k} is above {FAISS_GPU_MAX_K}, the most GPU FAISS returns"
    return "faiss-gpu", f"sm_{capability[0]}{capability[1]} and K {k} <= {FAISS_GPU_MAX_K}"


# --- vLLM's share of the card ------------------------------------------------------------------
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
VLLM_OVERHEAD_BYTES = 2 << 30  # CUDA graphs, torch.compile, cuBLAS workspaces, allocator slack
VLLM_FALLBACK_FRACTION = 0.3  # where the card's size is unknown


def vllm_need_bytes(model_dir: Path, dtype: str, max_length: int) -> int:
    """What vLLM needs to embed with the model in ``model_dir``: weights, KV cache for one
    max-length sequence (and no less than 16384 tokens, for batching), activations, overhead.

    Qwen3-Embedding-0.6B in bfloat16 at 32768 tokens: 1.1 GiB + 3.5 GiB + 0.9 GiB + 2 GiB.
    """
    cfg = _json(model_dir / "config.json")
    cfg = {**cfg, **(cfg.get("text_config") or {})}
    size = DTYPE_BYTES.get(dtype, 4)
    stored = DTYPE_BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"), 4)
    files = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    weights = sum(f.stat().st_size for f in files) * size // stored
    hidden = int(cfg.get("hidden_size") or 1024)
    heads = int(cfg.get("num_attention_heads") or 16)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    layers = int(cfg.get("num_hidden_layers") or 24)
    tokens = max(max_length, 16384)
    kv = 2 * layers * kv_heads * head_dim * size * tokens
    intermediate = int(cfg.get("intermediate_size") or 4 * hidden)
    activations = tokens * (3 * intermediate + 6 * hidden) * size
    return int(weights + kv + activations + VLLM_OVERHEAD_BYTES)


def vllm_fraction(need_bytes: int, total_bytes: int | None) -> float:
    """``gpu_memory_utilization`` that covers ``need_bytes`` (rounded up to 0.01, within 0.05..0.9).

    >>> vllm_fraction(7 << 30, 80 << 30)
    0.09
    """
    if not total_bytes:
        return VLLM_FALLBACK_FRACTION
    return min(0.9, max(0.05, -(-100 * need_bytes // total_bytes) / 100))


def vllm_memory_utilization(model_dir: Path, dtype: str, max_length: int, source: FactsSource = gpu_facts) -> float:
    """vLLM's default share of the GPU: what the model needs, leaving the rest to the pool."""
    facts = source()
    need = vllm_need_bytes(model_dir, dtype, max_length)
    fraction = vllm_fraction(need, facts.total_bytes if facts else None)
    total = f"{facts.total_bytes / 2**30:.1f} GiB" if facts and facts.total_bytes else "unknown size"
    log.info(
        "vLLM gpu_memory_utilization %.2f (needs ~%.1f GiB of a %s GPU; NEAR_VLLM_GPU_MEMORY_UTILIZATION overrides)",
        fraction,
        need / 2**30,
        total,
    )
    return fraction


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
