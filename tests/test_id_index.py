"""The kernels' hash index (csrc/id_index.h) on its own: tests/cpp/id_index_check.cc, a randomized
check against std::unordered_map, compiled with the C++ compiler that builds the extension and
run, once with SSE2 (as the kernels are built on x86-64) and once with the portable fallback the
kernels use on other CPUs (-U__SSE2__)."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler found (CXX, c++ or g++)")
@pytest.mark.parametrize("flags", [[], ["-U__SSE2__"]], ids=["default", "no_sse2"])
def test_id_index_against_unordered_map(tmp_path, flags):
    binary = tmp_path / "id_index_check"
    subprocess.run(
        [COMPILER, "-std=c++17", "-O1", "-Wall", "-Wextra", *flags,
         "-I", os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests", "cpp", "id_index_check.cc"),
         "-o", str(binary)],
        check=True,
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
