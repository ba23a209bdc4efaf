"""``split_by_indices``: stable partition of a tensor's rows by a split index (Monolith's
``MonolithSplitByIndices``), and its gradient, the inverse permutation
(``MonolithSplitByIndicesGradient``).

Semantics: ``spec/monolith_ops.md`` section 1. Static shapes (``DESIGN.md`` section 1): instead of S
tensors of data-dependent length, one tensor of the input's shape in split-major order plus the
split sizes; ``SplitResult.to_list()`` gives Monolith's list for concrete values.
Kernel: ``csrc/split_by_indices_cpu.cc`` (``csrc/partition.h``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from .. import _checks, _compat
from .._primitive import new_primitive, register_primitive

_OP = "split_by_indices"
_GRAD_OP = "split_by_indices_gradient"

# 1. Primitives -------------------------------------------------------------------------------------
# split_by_indices_p(indices, tensor) -> (values, split_sizes); linear in tensor.
# split_by_indices_gradient_p(indices, grads) -> tensor gradient; linear in grads; its transpose.
split_by_indices_p = new_primitive(_OP)
split_by_indices_gradient_p = new_primitive(_GRAD_OP, multiple_results=False)


class SplitResult(NamedTuple):
    """Result of :func:`split_by_indices`.

    Attributes:
      values: the input's shape and dtype: the rows of split 0, then of split 1, ..., each split's
        rows in their original order.
      split_sizes: ``int32[S]``, rows per split.
    """

    values: jax.Array
    split_sizes: jax.Array

    def to_list(self) -> list[jax.Array]:
        """Monolith's output: the S per-split arrays (concrete, unbatched results only)."""
        sizes = _checks.concrete(self.split_sizes, _OP, "SplitResult.to_list()")
        if sizes.ndim != 1:
            raise ValueError(f"{_OP}: SplitResult.to_list() needs an unbatched result")
        ends = np.cumsum(sizes)
        return [self.values[end - size : end] for size, end in zip(sizes, ends)]


# 2. Public functions -------------------------------------------------------------------------------
def split_by_indices(indices, tensor, num_splits: int) -> SplitResult:
    """Groups the rows of ``tensor`` by split index, keeping their order within a split.

    Row ``i`` goes to split ``indices[i]``. No dedup: every row appears exactly once in ``values``.

    Example (spec 1.6)::

        r = split_by_indices(jnp.array([0, 1, 2, 2, 0]), jnp.array([0, 1, 2, 2, 3]), 3)
        # r.values == [0, 3, 1, 2, 2], r.split_sizes == [2, 1, 2]
        # r.to_list() == [[0, 3], [1], [2, 2]]

    Args:
      indices: ``int32`` or ``int64`` ``[N]``, each in ``[0, num_splits)``.
      tensor: ``[N, *E]`` (rank >= 1) of float32, float64, bfloat16, int32 or int64.
      num_splits: static int S >= 1.

    Returns:
      :class:`SplitResult` ``(values [N, *E], split_sizes int32[S])``.

    Raises:
      ValueError / TypeError: (at trace time) bad ranks, lengths, dtypes or ``num_splits``.
      jax.errors.JaxRuntimeError: (when computed, CPU) an index outside ``[0, num_splits)``.

    Differentiable w.r.t. ``tensor``: the JVP splits the tangent the same way, and the transpose is
    :func:`split_by_indices_gradient` (both primitives, so higher-order and
    ``jax.linear_transpose`` work). ``jax.vmap`` over any arguments runs one call per batch.
    """
    indices, tensor, num_splits = _check_args(_OP, indices, tensor, "tensor", num_splits)
    values, sizes = split_by_indices_p.bind(
        indices, tensor, num_splits=num_splits, row_ndim=tensor.ndim - 1
    )
    return SplitResult(values, sizes)


def split_by_indices_gradient(indices, grads, num_splits: int) -> jax.Array:
    """The inverse of :func:`split_by_indices`: the gradient w.r.t. its ``tensor``.

    ``grads`` is laid out like ``split_by_indices(...).values`` (split-major); the result has the
    original row order: ``out[i] = grads[dest(i)]``, where ``dest(i)`` is where the forward op put
    row ``i``.

    Args:
      indices: ``int32`` or ``int64`` ``[N]``, each in ``[0, num_splits)``.
      grads: ``[N, *E]``, same dtypes as the forward ``tensor``.
      num_splits: static int S >= 1.

    Returns:
      ``[N, *E]``, ``grads``' dtype. Linear in ``grads``; its transpose is the forward split.
    """
    indices, grads, num_splits = _check_args(_GRAD_OP, indices, grads, "grads", num_splits)
    return split_by_indices_gradient_p.bind(
        indices, grads, num_splits=num_splits, row_ndim=grads.ndim - 1
    )


_TENSOR_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, jnp.bfloat16, np.int32, np.int64))


def _check_args(op, indices, tensor, tensor_arg, num_splits):
    indices = _checks.as_array(indices, op, "indices", _checks.INDEX_DTYPES)
    tensor = _checks.as_array(tensor, op, tensor_arg, _TENSOR_DTYPES)
    num_splits = _checks.static_int(num_splits, op, "num_splits", minimum=1)
    _checks.check_int32_count(num_splits, op, "num_splits")
    if indices.ndim != 1:
        raise ValueError(f"{op}: indices must be 1-D, got shape {indices.shape}")
    if tensor.ndim < 1:
        raise ValueError(f"{op}: {tensor_arg} must have rank >= 1, got a scalar")
    if tensor.shape[0] != indices.shape[0]:
        raise ValueError(
            f"{op}: {tensor_arg} has {tensor.shape[0]} rows but indices has {indices.shape[0]}"
        )
    _checks.check_int32_count(indices.shape[0], op, "the number of rows")
    return indices, tensor, num_splits


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(indices, tensor, *, num_splits, row_ndim):
    del indices, row_ndim
    return [(tensor.shape, tensor.dtype), ((num_splits,), jnp.int32)]


def _gradient_abstract_eval(indices, grads, *, num_splits, row_ndim):
    del indices, num_splits, row_ndim
    return [(grads.shape, grads.dtype)]


def _in_core_ndims(num_operands, *, num_splits, row_ndim):
    del num_operands, num_splits
    return (1, 1 + row_ndim)


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, num_splits, row_ndim):
    return dict(num_splits=np.int64(num_splits), row_ndim=np.int64(row_ndim))


# 5. JVP --------------------------------------------------------------------------------------------
# Both primitives are linear in their second operand and constant in `indices`:
#   d values = split(indices, d tensor).values,  d split_sizes = 0 (integer output);
#   d gradient(indices, grads) = gradient(indices, d grads).
def _jvp(primals, tangents, *, num_splits, row_ndim):
    indices, tensor = primals
    values, sizes = split_by_indices_p.bind(indices, tensor, num_splits=num_splits, row_ndim=row_ndim)
    t = tangents[1]
    if type(t) is ad.Zero:
        t_values = _compat.zero_tangent(values)
    else:
        t_values = split_by_indices_p.bind(indices, t, num_splits=num_splits, row_ndim=row_ndim)[0]
    return (values, sizes), (t_values, _compat.zero_tangent(sizes))


def _gradient_jvp(primals, tangents, *, num_splits, row_ndim):
    indices, grads = primals
    out = split_by_indices_gradient_p.bind(indices, grads, num_splits=num_splits, row_ndim=row_ndim)
    t = tangents[1]
    if type(t) is ad.Zero:
        return out, _compat.zero_tangent(out)
    return out, split_by_indices_gradient_p.bind(
        indices, t, num_splits=num_splits, row_ndim=row_ndim
    )


# 6. Transpose --------------------------------------------------------------------------------------
# split is a permutation P of the rows, so its adjoint is P^-1 = the gradient op, and vice versa:
#   split^T(ct_values) = gradient(indices, ct_values);  gradient^T(ct) = split(indices, ct).values.
def _transpose(cts, indices, tensor, *, num_splits, row_ndim):
    assert not ad.is_undefined_primal(indices) and ad.is_undefined_primal(tensor)
    ct_values = cts[0]
    if type(ct_values) is ad.Zero:
        return [None, ad.Zero(tensor.aval)]
    return [
        None,
        split_by_indices_gradient_p.bind(indices, ct_values, num_splits=num_splits, row_ndim=row_ndim),
    ]


def _gradient_transpose(ct, indices, grads, *, num_splits, row_ndim):
    assert not ad.is_undefined_primal(indices) and ad.is_undefined_primal(grads)
    if type(ct) is ad.Zero:
        return [None, ad.Zero(grads.aval)]
    return [None, split_by_indices_p.bind(indices, ct, num_splits=num_splits, row_ndim=row_ndim)[0]]


# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    split_by_indices_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_jvp,
    transpose=_transpose,
)
register_primitive(
    split_by_indices_gradient_p,
    abstract_eval=_gradient_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_gradient_jvp,
    transpose=_gradient_transpose,
)
