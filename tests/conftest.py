"""Test configuration: 64-bit ids on, four simulated CPU devices, and the gpu / multidevice / slow
markers.

* ``jax_enable_x64`` is on for the whole suite (int64/uint64 ids, float64 gradient checks); tests of
  the x64-off behaviour use ``with jax.enable_x64(False):``.
* ``@pytest.mark.gpu`` tests are skipped without a CUDA device, unless ``JAX_DISTOPS_REQUIRE_GPU=1``,
  which turns that skip into a failure (GPU CI must not pass by skipping).
* ``@pytest.mark.slow`` tests run only with ``--runslow``.
"""

from __future__ import annotations

import os
import sys

# Four simulated CPU devices for the shard_map tests (tests/test_shard_map.py). XLA reads the flag
# when its CPU backend starts, so it is set before jax is imported; a device count already in
# XLA_FLAGS is kept. Single-device tests are unaffected: they run on the default device.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Test modules import the numpy oracle as `oracle` and the benchmarks' workload builders
# (fused_reorder, routing) from here.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    require_gpu = os.environ.get("JAX_DISTOPS_REQUIRE_GPU") == "1"
    has_gpu = _has_gpu() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            if require_gpu:
                item.add_marker(pytest.mark.usefixtures("_fail_without_gpu"))
            else:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow; run with --runslow"))


@pytest.fixture
def _fail_without_gpu():
    pytest.fail("JAX_DISTOPS_REQUIRE_GPU=1 but JAX sees no GPU")
