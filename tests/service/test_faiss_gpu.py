"""GPU FAISS's limits, guarded without a GPU: which cards the faiss-gpu wheel has kernels for, and the
k-selection limits (2048 classic, 16384 cuVS) past which faiss aborts the whole process instead of raising.

The device query (``gpu_facts``, ``faiss_has_gpu``) and the GPU clone of the index are fakes, named as
such; the IVF index under them is real faiss-cpu. That the wheel really has the kernels is
tests/docker/test_faiss_wheel.py's job; running on a GPU is bench/gpu_check.py's.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import numpy as np
import pytest

from near_service.core import gpu
from near_service.core.index import VectorIndex

H100 = gpu.GpuFacts(capability=(9, 0), total_bytes=80 << 30, name="fake H100")


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("capability", "k", "faiss_gpu", "cuvs", "engine"),
    [
        ((9, 0), 100, True, False, "faiss-gpu"),  # H100/H200: the cuVS wheel has sm_90 kernels
        ((8, 0), 2048, True, False, "faiss-gpu"),  # A100, at the classic limit
        ((8, 0), 2049, True, False, "faiss-cpu"),  # one past it: faiss would abort
        ((9, 0), 2049, True, True, "faiss-gpu"),  # the cuVS path goes further
        ((9, 0), 16384, True, True, "faiss-gpu"),  # at the cuVS limit
        ((9, 0), 16385, True, True, "faiss-cpu"),  # one past it
        ((8, 6), 10, True, False, "faiss-gpu"),  # A10
        ((8, 7), 10, True, False, "faiss-gpu"),  # Orin: sm_86 kernels run on sm_87
        ((8, 9), 10, True, False, "faiss-gpu"),  # L4, L40S
        ((7, 5), 10, True, False, "faiss-gpu"),  # T4
        ((7, 0), 10, True, False, "faiss-cpu"),  # V100: the wheel starts at sm_75
        ((10, 0), 10, True, False, "faiss-cpu"),  # B200: PTX only (JIT of the whole library)
        ((12, 0), 10, True, False, "faiss-cpu"),
        (None, 10, True, False, "faiss-cpu"),
        ((9, 0), 10, False, False, "faiss-cpu"),  # faiss-cpu installed
    ],
)
def test_ivf_engine_choice(
    capability: tuple[int, int] | None, k: int, faiss_gpu: bool, cuvs: bool, engine: str
) -> None:
    chosen, why = gpu.choose_ivf_engine(capability, k, faiss_gpu, cuvs)
    assert chosen == engine and why


def test_k_and_nprobe_limits() -> None:
    assert gpu.faiss_max_k(cuvs=False) == 2048 and gpu.faiss_max_k(cuvs=True) == 16384
    assert gpu.faiss_gpu_k_refusal(2048) is None
    assert "abort" in (gpu.faiss_gpu_k_refusal(2049) or "")
    assert gpu.faiss_gpu_k_refusal(16384, cuvs=True) is None
    assert "16384" in (gpu.faiss_gpu_k_refusal(16385, cuvs=True) or "")
    assert "nprobe 4096" in (gpu.faiss_gpu_k_refusal(10, nprobe=4096) or "")
    assert gpu.choose_ivf_engine((9, 0), 10, True, nprobe=4096)[0] == "faiss-cpu"


class FakeGpuIvf:
    """Stands in for faiss's GPU clone of the IVF index (no GPU here): searches the real CPU index, and
    fails the test where real GPU FAISS would abort the process (k past the k-selection limit)."""

    def __init__(self, cpu_index: Any, cuvs: bool) -> None:
        self.cpu_index, self.limit = cpu_index, gpu.faiss_max_k(cuvs)
        self.calls: list[int] = []

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > self.limit:
            pytest.fail(f"GPU FAISS searched at k {k} > {self.limit}: the real one aborts the process")
        self.calls.append(k)
        return self.cpu_index.search(queries, k)  # type: ignore[no-any-return]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake H100 behind the device query, faiss said to be a GPU build, and FakeGpuIvf clones."""
    made: dict[str, Any] = {"cuvs": False, "clones": []}

    def fake_ivf_to_gpu(index: Any, cuvs: bool) -> tuple[None, FakeGpuIvf, bool]:
        clone = FakeGpuIvf(index, cuvs)
        made["clones"].append(clone)
        return None, clone, cuvs

    monkeypatch.setattr(gpu, "gpu_facts", lambda: H100)
    monkeypatch.setattr(gpu, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(gpu, "faiss_has_cuvs", lambda: made["cuvs"])
    monkeypatch.setattr(gpu, "ivf_to_gpu", fake_ivf_to_gpu)
    return made


@pytest.mark.parametrize("cuvs", [False, True])
def test_ivf_never_asks_gpu_faiss_past_its_limit(
    fake_gpu: dict[str, Any], cuvs: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fake_gpu["cuvs"] = cuvs
    rng = np.random.default_rng(0)
    pool, queries = unit(rng, 17000, 8), unit(rng, 3, 8)
    with caplog.at_level(logging.INFO, logger="near_service.core.index"):
        index = VectorIndex(pool, kind="ivf", device="cuda")
    (clone,) = fake_gpu["clones"]
    assert "ivf index on faiss-gpu" in caplog.text
    cpu = VectorIndex(pool, kind="ivf")  # the same index, faiss-cpu only
    limit = gpu.faiss_max_k(cuvs)
    for k in (10, limit, limit + 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="near_service.core.index"):
            _, i = index.search(queries, k)
        np.testing.assert_array_equal(i, cpu.search(queries, k)[1])
        assert i.min() >= 0 and i.shape == (3, k)
        if k > limit:  # went to faiss-cpu, and the log says why
            assert f"ivf search on faiss-cpu: K {k} is above {limit}" in caplog.text
    assert clone.calls == [10, limit]


def test_ivf_stays_on_the_cpu_where_the_wheel_has_no_kernels(
    fake_gpu: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gpu, "gpu_facts", lambda: gpu.GpuFacts(capability=(7, 0), total_bytes=32 << 30))  # V100
    rng = np.random.default_rng(1)
    with caplog.at_level(logging.INFO, logger="near_service.core.index"):
        index = VectorIndex(unit(rng, 2000, 8), kind="ivf", device="cuda")
    assert not fake_gpu["clones"] and index._faiss_gpu is None
    assert "ivf index on faiss-cpu: the faiss-gpu wheel has no kernels for sm_70" in caplog.text
    assert index.search(unit(rng, 2, 8), 5)[1].shape == (2, 5)


class FakeFaissGpuModule(types.ModuleType):
    """Stands in for a GPU build of the ``faiss`` module: records the clones asked for; ``cuvs_refuses``
    makes the cuVS clone raise the way faiss does for an index cuVS cannot hold."""

    def __init__(self, cuvs_refuses: bool) -> None:
        super().__init__("faiss")
        self.cuvs_refuses = cuvs_refuses
        self.asked: list[bool] = []

    class StandardGpuResources:
        pass

    class GpuClonerOptions:
        use_cuvs = False

    def index_cpu_to_gpu(self, res: Any, device: int, index: Any, options: Any) -> str:
        self.asked.append(options.use_cuvs)
        if options.use_cuvs and self.cuvs_refuses:
            raise RuntimeError("Error in ... cuVS does not support this index")
        return "gpu index"


@pytest.mark.parametrize("refuses", [False, True])
def test_ivf_to_gpu_tries_cuvs_then_the_classic_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refuses: bool
) -> None:
    fake = FakeFaissGpuModule(cuvs_refuses=refuses)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    _, clone, on_cuvs = gpu.ivf_to_gpu(object(), cuvs=True)
    assert clone == "gpu index" and on_cuvs is not refuses
    assert fake.asked == ([True, False] if refuses else [True])
    if refuses:
        assert "cuVS refused the ivf index" in caplog.text
    assert gpu.ivf_to_gpu(object(), cuvs=False)[2] is False


def test_cuvs_build_detection_on_this_faiss_cpu() -> None:
    import faiss

    assert gpu.faiss_has_cuvs() is False  # faiss-cpu has no _cuvs_build marker
    assert gpu.faiss_has_gpu() is (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
