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
'faiss-gpu'
>>> choose_ivf_engine((9, 0), k=5000, faiss_gpu=True)[0]
'faiss-cpu'
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# The faiss-gpu extra's wheel (faiss-gpu-cuvs 1.15.1, CUDA 13) has kernels (SASS) for these architectures
# and PTX for sm_90 only; tests/docker/test_faiss_wheel.py reads them with cuobjdump, so a version bump that
# drops one fails there. A kernel runs on its own major at the same or a later minor (sm_86 code on an
# sm_87), never on another major. V100 (sm_70) has none; Blackwell (sm_100, sm_120) would have the driver
# JIT-compile the sm_90 PTX of a 120 MB library on first use: both search with faiss-cpu.
FAISS_GPU_ARCHES = ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0))
# GPU FAISS's k-selection limits. Past them faiss does not raise: the whole process aborts (a C++ assert
# in the k-selection kernels), so no search may ask for more; nprobe has the classic limit too.
FAISS_GPU_MAX_K = 2048  # the classic GPU k-selection (GPU_MAX_SELECTION_K), faiss.knn_gpu and GPU indexes
FAISS_CUVS_MAX_K = 16384  # the cuVS path (use_cuvs=True; getMaxKSelection(use_cuvs))
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
    """faiss is a GPU build and sees a GPU (this creates a CUDA context: call it where the pool goes to the GPU)."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


def faiss_has_cuvs() -> bool:
    """The installed faiss is a cuVS build (faiss-gpu-cuvs writes a ``faiss._cuvs_build`` marker)."""
    try:
        return importlib.util.find_spec("faiss._cuvs_build") is not None
    except (ImportError, ValueError):
        return False


def faiss_gpu_runs_on(capability: tuple[int, int] | None) -> bool:
    """The faiss-gpu wheel has a kernel for this compute capability.

    >>> [faiss_gpu_runs_on(c) for c in [(7, 0), (7, 5), (8, 7), (9, 0), (10, 0)]]
    [False, True, True, True, False]
    """
    if capability is None:
        return False
    return any(capability[0] == major and capability[1] >= minor for major, minor in FAISS_GPU_ARCHES)


def faiss_max_k(cuvs: bool) -> int:
    """The largest k a GPU FAISS search may ask for: 16384 on the cuVS path, else 2048."""
    return FAISS_CUVS_MAX_K if cuvs else FAISS_GPU_MAX_K


def faiss_gpu_k_refusal(k: int, cuvs: bool = False, nprobe: int = 1) -> str | None:
    """Why a GPU FAISS search (``faiss.knn_gpu``, a GPU index) of ``k`` must not run, or None where it may.

    Call it before every GPU FAISS search: past these limits faiss aborts the process instead of raising.

    >>> faiss_gpu_k_refusal(2048) is None, faiss_gpu_k_refusal(10000, cuvs=True) is None
    (True, True)
    >>> faiss_gpu_k_refusal(2049)
    'K 2049 is above 2048, the most the classic GPU FAISS k-selection returns (faiss would abort the process)'
    """
    limit, path = (FAISS_CUVS_MAX_K, "cuVS") if cuvs else (FAISS_GPU_MAX_K, "classic GPU FAISS")
    if k > limit:
        return f"K {k} is above {limit}, the most the {path} k-selection returns (faiss would abort the process)"
    if nprobe > FAISS_GPU_MAX_K:
        return f"nprobe {nprobe} is above {FAISS_GPU_MAX_K}, GPU FAISS's limit (faiss would abort the process)"
    return None


def choose_ivf_engine(
    capability: tuple[int, int] | None, k: int, faiss_gpu: bool, cuvs: bool = False, nprobe: int = 1
) -> tuple[IvfEngine, str]:
    """Where an ``ivf`` search of ``k`` neighbours runs, and why (for the log).

    faiss-gpu only where its wheel has kernels for this GPU and ``k`` (and ``nprobe``) is within the limit
    of the k-selection in use (the cuVS path where faiss is a cuVS build, else the classic one).

    >>> choose_ivf_engine((8, 0), 5000, True)[1]
    'K 5000 is above 2048, the most the classic GPU FAISS k-selection returns (faiss would abort the process)'
    >>> choose_ivf_engine((8, 0), 5000, True, cuvs=True)[0]
    'faiss-gpu'
    """
    if not faiss_gpu:
        return "faiss-cpu", "faiss has no GPU support here (install the faiss-gpu extra)"
    if capability is None:
        return "faiss-cpu", "the GPU's compute capability is unknown"
    arch = f"sm_{capability[0]}{capability[1]}"
    if not faiss_gpu_runs_on(capability):
        have = ", ".join(f"sm_{a}{b}" for a, b in FAISS_GPU_ARCHES)
        return "faiss-cpu", f"the faiss-gpu wheel has no kernels for {arch} (only {have})"
    refusal = faiss_gpu_k_refusal(k, cuvs, nprobe)
    if refusal:
        return "faiss-cpu", refusal
    return "faiss-gpu", f"{arch} and K {k} <= {faiss_max_k(cuvs)} ({'cuVS' if cuvs else 'classic GPU FAISS'})"


def ivf_to_gpu(index: Any, cuvs: bool) -> tuple[Any, Any, bool]:
    """A GPU clone of a faiss IVF index on device 0, the ``StandardGpuResources`` it needs (keep both:
    the resources must outlive the index) and whether it is on the cuVS path: tried first where
    ``cuvs``; where cuVS refuses the index (faiss raises), the classic GPU implementation."""
    import faiss

    res = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    if cuvs:
        options.use_cuvs = True
        try:
            return res, faiss.index_cpu_to_gpu(res, 0, index, options), True
        except RuntimeError as exc:
            log.warning("cuVS refused the ivf index (%s); using the classic GPU FAISS (K <= %d)", exc, FAISS_GPU_MAX_K)
            options.use_cuvs = False
    return res, faiss.index_cpu_to_gpu(res, 0, index, options), False


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
