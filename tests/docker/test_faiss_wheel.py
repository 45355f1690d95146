"""The faiss-gpu extra's wheel has Hopper (sm_90) kernels, read from its CUDA binaries with cuobjdump.

A version bump of the extra that drops sm_90 (or any architecture ``core/gpu.py`` sends to GPU FAISS)
fails here, before anyone runs it on an H100. The wheel (~120 MB) and ``nvidia-cuda-cuobjdump`` (~0.3 MB)
are downloaded once with ``pip download --no-deps`` into ``out/cache/wheels`` (reused offline);
where they cannot be downloaded (no index, another platform) the test is skipped with the reason.
The GPU image's build runs the same check (docker/cuda_arches.py) on the installed package.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from near_service.core.gpu import FAISS_GPU_ARCHES

from .composefile import ROOT

_spec = importlib.util.spec_from_file_location("cuda_arches", ROOT / "docker" / "cuda_arches.py")
assert _spec and _spec.loader
cuda_arches = importlib.util.module_from_spec(_spec)  # docker/cuda_arches.py: standard library only
_spec.loader.exec_module(cuda_arches)

CACHE = ROOT / "out" / "cache" / "wheels"
CUOBJDUMP = "nvidia-cuda-cuobjdump>=13.0"  # CUDA 13's cuobjdump reads CUDA 12 and 13 fat binaries


def faiss_gpu_requirement() -> str:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["faiss-gpu"]
    (req,) = extra
    return str(req)


def download(requirement: str, pattern: str) -> Path:
    """The cached wheel matching ``pattern``, else ``pip download --no-deps`` it (skip if that fails)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"the faiss-gpu wheels and cuobjdump are for Linux x86-64, not {platform.platform()}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = sorted(CACHE.glob(pattern))
    if cached:
        return cached[-1]
    tags = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *tags]
    cmd += ["--python-version", "3.11", "--disable-pip-version-check", "-q", "-d", str(CACHE), requirement]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
    cached = sorted(CACHE.glob(pattern))
    if out.returncode != 0 or not cached:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"could not download {requirement}: {last}")
    return cached[-1]


@pytest.fixture(scope="module")
def cuobjdump() -> Path:
    whl = download(CUOBJDUMP, "nvidia_cuda_cuobjdump-*.whl")
    tool = CACHE / whl.stem / "cuobjdump"
    if not tool.exists():
        with zipfile.ZipFile(whl) as z:
            (name,) = [n for n in z.namelist() if n.endswith("/bin/cuobjdump")]
            tool.parent.mkdir(parents=True, exist_ok=True)
            tool.write_bytes(z.read(name))
        tool.chmod(0o755)
    return tool


@pytest.fixture(scope="module")
def faiss_libs() -> Path:
    """The shared libraries of the extra's wheel, extracted once into the cache (a folder per wheel)."""
    req = faiss_gpu_requirement()
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.]+)", req).groups()  # type: ignore[union-attr]
    whl = download(req, f"{name.replace('-', '_')}-{version}-*.whl")
    folder = CACHE / whl.stem
    if not (folder / "complete").exists():
        with zipfile.ZipFile(whl) as z:
            for member in z.namelist():
                if re.search(r"\.so(\.\d+)*$", member):
                    z.extract(member, folder)
        (folder / "complete").touch()
    return folder


@pytest.fixture(scope="module")
def faiss_arches(cuobjdump: Path, faiss_libs: Path) -> dict[str, tuple[set[str], set[str]]]:
    with cuda_arches.libraries(str(faiss_libs)) as libs:
        found = cuda_arches.report(cuobjdump, libs)
    assert found, f"{faiss_libs.name}: no library with CUDA device code"
    return found


def test_the_faiss_gpu_extra_is_pinned_to_one_wheel() -> None:
    assert re.fullmatch(r"faiss-gpu[a-z0-9-]*==[0-9][0-9a-z.]*", faiss_gpu_requirement())


def test_faiss_gpu_wheel_has_hopper_kernels(faiss_arches: dict[str, tuple[set[str], set[str]]]) -> None:
    for lib, (sass, _ptx) in faiss_arches.items():
        assert "sm_90" in sass, f"{lib} has no sm_90 (Hopper) kernels: {sorted(sass)}"


def test_every_card_core_gpu_sends_to_faiss_gpu_has_kernels(
    faiss_arches: dict[str, tuple[set[str], set[str]]],
) -> None:
    claimed = {f"sm_{major}{minor}" for major, minor in FAISS_GPU_ARCHES}
    for lib, (sass, _ptx) in faiss_arches.items():
        assert claimed <= sass, (
            f"{lib}: core/gpu.py's FAISS_GPU_ARCHES lists {sorted(claimed - sass)}, not in the wheel"
        )


def test_the_image_build_check_passes_and_fails_where_it_should(
    cuobjdump: Path,
    faiss_libs: Path,
    faiss_arches: dict[str, tuple[set[str], set[str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docker/cuda_arches.py's verdict (what the GPU image build runs), on the report measured above
    (cuobjdump is not run a second time) and with cuobjdump found on PATH as in the image."""
    monkeypatch.setenv("PATH", f"{cuobjdump.parent}:/usr/bin:/bin")
    assert cuda_arches.find_cuobjdump() == cuobjdump
    monkeypatch.setattr(cuda_arches, "report", lambda tool, libs: faiss_arches)
    assert cuda_arches.main(["--require", "sm_90", str(faiss_libs)]) == 0
    assert "libfaiss" in capsys.readouterr().out
    assert cuda_arches.main(["--require", "sm_90", "--require", "sm_999", str(faiss_libs)]) == 1
    assert "no sm_999 kernels" in capsys.readouterr().err
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "path", [])
    assert cuda_arches.main(["--require", "sm_90", str(faiss_libs)]) == 2
