"""Trace-time argument checks shared by the ops: every error names the op and the argument."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _compat

ID_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.uint32, np.uint64))
INDEX_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64))
FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, jnp.bfloat16))
INT32_MAX = int(np.iinfo(np.int32).max)


def _dtype_names(dtypes) -> str:
    return ", ".join(d.name for d in dtypes)


def as_array(x: Any, op: str, arg: str, dtypes: tuple[np.dtype, ...]) -> jax.Array:
    """Converts ``x`` to a jax array of one of ``dtypes`` without silent narrowing.

    With ``jax_enable_x64`` off, JAX would silently wrap a 64-bit numpy array to 32 bits (2**40 + 1
    becomes 1); that is refused here with an error that says how to fix it.
    """
    if not isinstance(x, jax.Array):  # tracers are jax.Arrays too
        dtype = getattr(x, "dtype", None)
        if dtype is not None and np.dtype(dtype).itemsize == 8 and not _compat.x64_enabled():
            raise TypeError(
                f"{op}: {arg} has dtype {np.dtype(dtype).name}, but 64-bit types are disabled in JAX, "
                "which would silently truncate the values to 32 bits. Enable them with "
                "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1), or pass 32-bit ids."
            )
        x = jnp.asarray(x)
    if x.dtype not in dtypes:
        raise TypeError(f"{op}: {arg} has dtype {x.dtype}, expected one of {_dtype_names(dtypes)}")
    return x


def as_array_list(
    xs: Any, op: str, arg: str, dtypes: tuple[np.dtype, ...], ndim: int | None = None
) -> list[jax.Array]:
    """A list or tuple of arrays, all of one dtype among ``dtypes`` (and of rank ``ndim`` if given)."""
    if isinstance(xs, jax.Array | np.ndarray) or not isinstance(xs, Sequence):
        raise TypeError(f"{op}: {arg} must be a list or tuple of arrays, got {type(xs).__name__}")
    arrays = [as_array(x, op, f"{arg}[{i}]", dtypes) for i, x in enumerate(xs)]
    for i, x in enumerate(arrays):
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{op}: {arg}[{i}] must be {ndim}-D, got shape {x.shape}")
        if x.dtype != arrays[0].dtype:
            raise TypeError(
                f"{op}: {arg} entries must share one dtype; {arg}[0] is {arrays[0].dtype}, "
                f"{arg}[{i}] is {x.dtype}"
            )
    return arrays


def static_int(x: Any, op: str, arg: str, minimum: int | None = None) -> int:
    """A static Python int (also numpy ints), optionally ``>= minimum``."""
    if isinstance(x, bool):
        raise TypeError(f"{op}: {arg} must be an int, got bool")
    try:
        value = operator.index(x)
    except TypeError:
        raise TypeError(f"{op}: {arg} must be a static Python int, got {type(x).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {arg} must be >= {minimum}, got {value}")
    return value


def check_int32_count(value: int, op: str, what: str) -> None:
    """Counts and offsets are int32 (as in Monolith): refuse statically sizes that cannot fit."""
    if value > INT32_MAX:
        raise ValueError(f"{op}: {what} is {value}, more than int32 counts/offsets can hold ({INT32_MAX})")


def concrete(x: Any, op: str, what: str) -> np.ndarray:
    """``x`` as a numpy array; a clear error when it is traced (data-dependent sizes need values)."""
    if _compat.is_tracer(x):
        raise ValueError(
            f"{op}: {what} needs concrete values and cannot run inside jax.jit, vmap or grad "
            "(the pieces have data-dependent sizes); call it on the result outside the traced function"
        )
    return np.asarray(x)
