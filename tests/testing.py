"""Assertions shared by the op tests (importable as `testing` through tests/conftest.py)."""

import jax.numpy as jnp
import numpy as np


def bits(x: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns (NaN and -0.0 compare exactly); other dtypes unchanged."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))
    return x


def assert_array_bits_equal(got, want: np.ndarray, what: str) -> None:
    """Same dtype, same shape, same bits."""
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, want {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    np.testing.assert_array_equal(bits(got), bits(want), err_msg=what, strict=True)
