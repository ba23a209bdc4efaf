"""Tests of the shared primitive machinery (jax_distops._primitive, _checks, _ffi), through the
fused_reorder_by_indices primitive: vmap becomes one custom call, nested and mixed batching,
clear errors for unsupported platforms and bad arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_distops
from jax_distops import _checks, _ffi

OP = jax_distops.fused_reorder_by_indices


def _hlo(f, *args):
    return jax.jit(f).lower(*args).as_text()


def test_vmap_lowers_to_one_custom_call_without_loops():
    a = jnp.arange(24, dtype=jnp.int32).reshape(4, 6)
    b = jnp.arange(5, dtype=jnp.int32)
    f = jax.vmap(lambda x, y: OP([x, y], 3).ids, in_axes=(0, None))
    text = _hlo(f, a, b)
    assert text.count("stablehlo.custom_call @jax_distops_fused_reorder_by_indices") == 1
    assert "stablehlo.while" not in text
    # The unbatched operand is passed as is (shared by the batch), not broadcast.
    assert "tensor<5xi32>" in text.split("custom_call @jax_distops_fused_reorder_by_indices")[1]


def test_nested_vmap_with_operands_batched_at_different_levels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, (3, 8)).astype(np.int32)  # batched by the inner vmap only
    b = rng.integers(0, 50, (2, 5)).astype(np.int32)  # batched by the outer vmap only
    inner = jax.vmap(lambda x, y: OP([x, y], 4, [2, 3]), in_axes=(0, None))
    outer = jax.vmap(inner, in_axes=(None, 0))
    got = outer(a, b)
    for j in range(2):
        for i in range(3):
            want = OP([a[i], b[j]], 4, [2, 3])
            for g, w in zip(got, want):
                np.testing.assert_array_equal(np.asarray(g)[j, i], np.asarray(w))
    assert "stablehlo.while" not in _hlo(outer, a, b)


def test_cuda_lowering_without_cuda_extension_says_how_to_fix():
    if _ffi.has_cuda_support():
        pytest.skip("this build has the CUDA extension")
    x = jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(NotImplementedError, match="JAX_DISTOPS_CUDA=ON"):
        jax.jit(lambda v: OP([v], 2).ids).trace(x).lower(lowering_platforms=("cuda",))


def test_static_int_rejects_non_ints():
    with pytest.raises(TypeError, match="op: n must be a static Python int"):
        _checks.static_int(2.5, "op", "n")
    with pytest.raises(TypeError, match="op: n must be an int, got bool"):
        _checks.static_int(True, "op", "n")
    with pytest.raises(ValueError, match="op: n must be >= 1, got 0"):
        _checks.static_int(0, "op", "n", minimum=1)
    assert _checks.static_int(np.int64(7), "op", "n") == 7


def test_integer_only_primitive_has_zero_jvp():
    x = jnp.arange(6, dtype=jnp.int32)
    zero = np.zeros(6, jax.dtypes.float0)
    primal, tangent = jax.jvp(lambda v: OP([v], 2).fused_embedding_offsets, (x,), (zero,))
    np.testing.assert_array_equal(primal, OP([x], 2).fused_embedding_offsets)
    assert tangent.dtype == jax.dtypes.float0
