"""The GPU side, tested on the CPU: float16 storage stays exact, the memory plan fits or refuses,
the pool is copied once under a lock, and the GPU decisions (dtype, device, FAISS engine, vLLM's
share) from fake GPU facts. The torch path of VectorIndex runs here with the device string "cpu:0",
the same code CUDA runs; what only a GPU can show is bench/gpu_check.py's job.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from near_service.core import gpu
from near_service.core.errors import ConfigError
from near_service.core.index import VectorIndex
from near_service.core.memory import RESERVE_BYTES, plan_memory, prepare_search
from near_service.core.modelspec import resolve_device, resolve_dtype
from near_service.core.rescore import half_topk
from tests.conftest import InProcessFactory

GiB = 1 << 30


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(pool: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    s = queries @ pool.T
    return np.lexsort((np.broadcast_to(np.arange(pool.shape[0]), s.shape), -s), axis=1)[:, :k]


def device_index(pool: np.ndarray, storage: str = "float16") -> VectorIndex:
    index = VectorIndex(pool)
    index.device = "cpu:0"  # a torch device string: the path CUDA takes
    index.to_device(storage)  # type: ignore[arg-type]
    return index


def fake_cuda_memory(free: int, total: int = 80 * GiB):  # type: ignore[no-untyped-def]
    """Stands in for torch.cuda.mem_get_info, which needs a GPU."""
    return lambda device: (free, total)


# --- float16 storage is exact ---------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 37, 400])
def test_float16_storage_has_recall_one_against_exact_float32(k: int) -> None:
    rng = np.random.default_rng(0)
    pool, queries = unit(rng, 3000, 64), unit(rng, 12, 64)
    index = device_index(pool)
    assert index._device_vectors.dtype.is_floating_point and index._device_vectors.element_size() == 2
    s16, i16 = index.search(queries, k)
    s32, i32 = VectorIndex(pool).search(queries, k)  # exact float32 on the CPU
    assert all(set(a) == set(b) for a, b in zip(i16.tolist(), i32.tolist(), strict=True))  # recall 1.0
    np.testing.assert_allclose(s16, s32, rtol=0, atol=1e-6)  # float32 scores, not float16 ones


def test_float16_storage_keeps_exact_order_and_ties_to_the_lower_index() -> None:
    rng = np.random.default_rng(1)  # small integers: every score is exact, so ties are real ties
    pool = np.repeat(rng.integers(-2, 3, (6, 8)).astype(np.float32), 30, axis=0)[rng.permutation(180)]
    queries = rng.integers(-2, 3, (7, 8)).astype(np.float32)
    index = device_index(pool)
    for k in (1, 29, 31, 95):
        np.testing.assert_array_equal(index.search(queries, k)[1], brute_force(pool, queries, k))


def test_float16_rows_that_cannot_be_certified_are_searched_again(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)  # 3000 rows that differ by multiples of 2^-14: float16 ties them all,
    pool = np.repeat(rng.integers(-2, 3, (1, 8)).astype(np.float32), 3000, axis=0)  # float32 orders them exactly
    pool[:, 0] = 2 + (rng.permutation(3000) % 500) * 2.0**-14
    queries = rng.integers(-2, 3, (3, 8)).astype(np.float32)
    queries[:, 0] = [1, 2, -1]
    caplog.set_level("INFO", logger="near_service.core.rescore")
    for k in (10, 1990):  # settled by the float32 CPU search; by rescoring every row
        s, i = half_topk(pool.astype(np.float16), pool, queries, k, "cpu")
        np.testing.assert_array_equal(i, brute_force(pool, queries, k))
        assert np.all(np.diff(s, axis=1) <= 0)
    assert "unsettled" in caplog.text


def test_one_device_copy_when_first_searches_race(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    made = []
    real_empty = torch.empty

    def counting_empty(*args: object, **kwargs: object) -> torch.Tensor:
        made.append(args)
        return real_empty(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(torch, "empty", counting_empty)
    rng = np.random.default_rng(3)
    pool, queries = unit(rng, 500, 16), unit(rng, 4, 16)
    index = VectorIndex(pool)
    index.device = "cpu:0"
    start = threading.Barrier(6)
    results: list[np.ndarray] = []

    def first_search() -> None:
        start.wait()
        results.append(index.search(queries, 20)[1])

    threads = [threading.Thread(target=first_search) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1  # one pool-sized allocation
    for r in results:
        np.testing.assert_array_equal(r, brute_force(pool, queries, 20))


# --- the memory plan ------------------------------------------------------------------------------
def test_plan_fits_shrinks_blocks_or_refuses() -> None:
    roomy = plan_memory(1_000_000, 1024, 10000, 1024, "float32", free_bytes=int(7.9 * GiB), total_bytes=80 * GiB)
    assert roomy.pool_bytes == 4_096_000_000 and roomy.block_bytes == GiB
    assert roomy.pool_bytes + roomy.workspace_bytes + RESERVE_BYTES <= 7.9 * GiB
    tight = plan_memory(1_000_000, 1024, 10000, 1024, "float32", free_bytes=int(5.5 * GiB))
    assert tight.block_bytes < GiB and tight.pool_bytes + tight.workspace_bytes + RESERVE_BYTES <= 5.5 * GiB
    with pytest.raises(ConfigError, match=r"does not fit on cuda.*NEAR_GPU_STORAGE=float16") as exc:
        plan_memory(2_000_000, 1024, 10000, 1024, "float32", int(7.9 * GiB), 80 * GiB, 0.9)
    assert "gpu_memory_utilization 0.9" in exc.value.message and "7.90 GiB of 80.0 GiB" in exc.value.message
    half = plan_memory(2_000_000, 1024, 10000, 1024, "float16", int(7.9 * GiB), 80 * GiB, 0.9)
    assert half.pool_bytes == 4_096_000_000


def test_prepare_search_copies_and_warms_up_or_refuses_before_anything_moves() -> None:
    rng = np.random.default_rng(4)
    pool = unit(rng, 2000, 32)
    index = VectorIndex(pool)
    index.device = "cpu:0"
    with pytest.raises(ConfigError, match="does not fit"):
        prepare_search(index, "float32", 100, 64, 0.3, memory=fake_cuda_memory(free=RESERVE_BYTES))
    assert index._device_vectors is None
    plan = prepare_search(index, "float16", 100, 64, 0.3, memory=fake_cuda_memory(free=8 * GiB))
    assert plan.device == "cpu:0" and plan.storage == "float16" and plan.pool_bytes == 2000 * 32 * 2
    assert plan.vllm_gpu_memory_utilization == 0.3 and index.block_bytes == plan.block_bytes
    assert index._device_vectors is not None and index.storage == "float16"  # copied by the warm-up
    cpu_plan = prepare_search(VectorIndex(pool), "float32", 100, 64)
    assert cpu_plan.device == "cpu" and cpu_plan.pool_bytes == pool.nbytes


def test_info_reports_the_memory_plan(inprocess: InProcessFactory) -> None:
    svc = inprocess(max_k_limit=30, max_queries=64)
    memory = svc.client.get("/info").json()["memory"]
    assert memory["device"] == "cpu" and memory["storage"] == "float32" and memory["pool_bytes"] > 0
    assert memory["workspace_bytes"] > 0 and memory["vllm_gpu_memory_utilization"] is None


# --- decisions from fake GPU facts ----------------------------------------------------------------
def fake_gpu(capability: tuple[int, int] | None, total: int | None = 80 * GiB) -> gpu.FactsSource:
    """A fake NVML answer (no GPU here)."""
    return lambda: gpu.GpuFacts(capability, total, "FakeGPU")


@pytest.mark.parametrize(
    ("capability", "dtype"), [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float32"), (None, "float32")]
)
def test_cuda_dtype_from_compute_capability_without_a_context(capability: tuple[int, int] | None, dtype: str) -> None:
    assert resolve_dtype("auto", "cuda", facts=fake_gpu(capability)) == dtype
    assert resolve_dtype("auto", "cuda", facts=lambda: None) == "float32"
    assert resolve_dtype("float16", "cuda", facts=fake_gpu((9, 0))) == "float16"


def test_device_from_the_nvml_count() -> None:
    assert resolve_device("auto", count_gpus=lambda: 2) == "cuda"
    assert resolve_device("auto", count_gpus=lambda: 0) == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda", count_gpus=lambda: 0)
    assert gpu.cuda_device_count() == 0  # the real count on this CPU-only torch
    assert resolve_device("auto") == "cpu"


# The FAISS engine choice (kernels, k limits) is tested in tests/service/test_faiss_gpu.py.


def test_vllm_share_from_what_the_model_needs(tmp_path: Path) -> None:
    qwen3_06b = {  # Qwen3-Embedding-0.6B's config.json, the sizes that matter
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_hidden_layers": 28,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(qwen3_06b))
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.truncate(1_191_586_416)  # a sparse file the size of its weights
    need = gpu.vllm_need_bytes(tmp_path, "bfloat16", 32768)
    assert 7 * GiB < need < 8.5 * GiB
    assert gpu.vllm_memory_utilization(tmp_path, "bfloat16", 32768, fake_gpu((9, 0), 80 * GiB)) == 0.1
    assert gpu.vllm_memory_utilization(tmp_path, "bfloat16", 32768, fake_gpu((9, 0), 141 * GiB)) == 0.06
    assert gpu.vllm_memory_utilization(tmp_path, "bfloat16", 32768, lambda: None) == gpu.VLLM_FALLBACK_FRACTION
    assert gpu.vllm_fraction(200 * GiB, 80 * GiB) == 0.9


def test_nvidia_smi_line() -> None:
    facts = gpu.parse_smi("8.0, 40960, NVIDIA A100-SXM4-40GB")
    assert facts.capability == (8, 0) and facts.total_bytes == 40 * GiB and facts.name.startswith("NVIDIA A100")
