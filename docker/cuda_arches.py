"""List the GPU architectures a package's CUDA binaries carry, and fail where a required one is missing.

    python docker/cuda_arches.py --require sm_90 faiss               # an installed package
    python docker/cuda_arches.py --require sm_90 faiss_gpu_cuvs-1.15.1-...whl    # a wheel (or a folder)

Each shared library with device code is read with ``cuobjdump --list-elf`` (the kernels, SASS) and
``--list-ptx`` (PTX, compiled by the driver on first use). ``cuobjdump`` comes from PATH or from the
``nvidia-cuda-cuobjdump`` wheel (``nvidia/cu*/bin/cuobjdump`` on sys.path). A required architecture
must be present as SASS in every library with device code: PTX alone means a JIT of the whole library
at first use. Exit 1 on a miss,
2 where cuobjdump is missing. The GPU image's build runs this on faiss; tests/docker/test_faiss_wheel.py
runs it on the wheel the faiss-gpu extra names. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ARCH = re.compile(r"\.(sm_\d+[af]?)\.(?:cubin|ptx)\b")


def find_cuobjdump() -> Path | None:
    """``cuobjdump`` on PATH, else the one the ``nvidia-cuda-cuobjdump`` wheel puts under sys.path."""
    found = shutil.which("cuobjdump")
    if found:
        return Path(found)
    for entry in sys.path:
        for candidate in sorted(Path(entry or ".").glob("nvidia/cu*/bin/cuobjdump")):
            if candidate.is_file():
                return candidate
    return None


def arches(cuobjdump: Path, library: Path, kind: str = "elf") -> set[str]:
    """The architectures of ``library``'s device code: ``kind`` "elf" (SASS) or "ptx"; empty where it has none."""
    out = subprocess.run(
        [str(cuobjdump), f"--list-{kind}", str(library)], capture_output=True, text=True, timeout=600, check=False
    )
    return set(ARCH.findall(out.stdout))


@contextmanager
def libraries(target: str) -> Iterator[list[Path]]:
    """The shared libraries of a wheel file (extracted to a temporary folder), a folder, or an installed package."""
    path = Path(target)
    if path.is_dir():
        yield sorted(p for p in path.rglob("*.so*") if p.is_file())
        return
    if path.suffix == ".whl":
        with tempfile.TemporaryDirectory(prefix="cuda-arches-") as tmp, zipfile.ZipFile(path) as whl:
            names = [n for n in whl.namelist() if re.search(r"\.so(\.\d+)*$", n)]
            for name in names:
                whl.extract(name, tmp)
            yield [Path(tmp) / n for n in sorted(names)]
        return
    import importlib.util

    spec = importlib.util.find_spec(target)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{target}: no such package installed")
    yield sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.so*") if p.is_file())


def report(cuobjdump: Path, libs: list[Path]) -> dict[str, tuple[set[str], set[str]]]:
    """Per library with device code: (SASS architectures, PTX architectures)."""
    found = {}
    for lib in libs:
        sass, ptx = arches(cuobjdump, lib, "elf"), arches(cuobjdump, lib, "ptx")
        if sass or ptx:
            found[lib.name] = (sass, ptx)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="an installed package (faiss), a .whl file or a folder")
    parser.add_argument("--require", action="append", default=[], help="an architecture that must be SASS, e.g. sm_90")
    ns = parser.parse_args(argv)
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("cuobjdump not found (pip install nvidia-cuda-cuobjdump)", file=sys.stderr)
        return 2
    with libraries(ns.target) as libs:
        found = report(cuobjdump, libs)
    for name, (sass, ptx) in found.items():
        print(f"{name}: SASS {' '.join(sorted(sass)) or '-'}; PTX {' '.join(sorted(ptx)) or '-'}")
    if not found:
        print(f"{ns.target}: no CUDA device code in {len(libs)} libraries", file=sys.stderr)
        return 1
    # every library with device code needs them: one without would fail on that GPU where it is used
    missing = {name: [a for a in ns.require if a not in sass] for name, (sass, _) in found.items()}
    missing = {name: arch for name, arch in missing.items() if arch}
    for name, arch in missing.items():
        print(f"{ns.target}: {name} has no {', '.join(arch)} kernels (SASS)", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
