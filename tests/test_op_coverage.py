"""The cross-cutting tests cover every public op.

Three test modules run every op under a condition of their own, each from its own case list (their
operands differ): inside ``shard_map`` with empty per-device operands (test_shard_map), under
``jax.vmap`` over an empty batch (test_zero_size_batch), and in a process whose default backend is
a GPU (test_gpu_backend, whose tests need a GPU; its list is checked here on any machine). A new op
must join all three lists; this test fails until it has. (An op with a CUDA kernel leaves
test_gpu_backend's list for ``GPU_KERNEL_OPS`` there.)
"""

import pytest

import jax_distops
import test_gpu_backend
import test_shard_map
import test_zero_size_batch


def _public_ops():
    """jax_distops' public ops: its exported functions, less the capability query."""
    return sorted(name for name in jax_distops.__all__
                  if name[0].islower() and name != "has_cuda_support")


@pytest.mark.parametrize("module, cases", [
    ("test_shard_map", test_shard_map._EMPTY_CASES),
    ("test_zero_size_batch", test_zero_size_batch._cases()),
    ("test_gpu_backend",
     test_gpu_backend.GPU_LESS_CASES + [(name,) for name in test_gpu_backend.GPU_KERNEL_OPS]),
], ids=lambda x: x if isinstance(x, str) else "")
def test_case_list_covers_every_public_op(module, cases):
    names = [case[0] for case in cases]
    assert len(names) == len(set(names)), f"{module}: an op listed twice"
    assert sorted(names) == _public_ops(), (
        f"{module}: missing {sorted(set(_public_ops()) - set(names))}, "
        f"unknown {sorted(set(names) - set(_public_ops()))}")
