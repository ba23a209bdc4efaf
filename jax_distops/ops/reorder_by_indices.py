"""``reorder_by_indices``: dedup rows (keeping first occurrences) and group them by shard, each
shard's rows in reverse first-occurrence order (Monolith's ``MonolithReorderByIndices``).

Semantics: ``spec/monolith_ops.md`` section 2 (the reversal is Monolith's and its test pins it).
Static shapes: the output keeps the input's shape, valid rows first, zero padding after.
Kernel: ``csrc/reorder_by_indices_cpu.cc``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from .._primitive import new_primitive, register_primitive

_OP = "reorder_by_indices"

# 1. Primitive --------------------------------------------------------------------------------------
# reorder_by_indices_p(input, shard_ids) -> (output, shard_sizes, num_unique)
reorder_by_indices_p = new_primitive(_OP)


class ReorderResult(NamedTuple):
    """Result of :func:`reorder_by_indices`.

    Attributes:
      output: the input's shape and dtype: shard 0's kept rows, then shard 1's, ..., each shard's in
        reverse first-occurrence order; ``num_unique`` valid rows, then zeros.
      shard_sizes: ``int32[S]``, kept rows per shard.
      num_unique: ``int32[]``, number of valid rows of ``output``.
    """

    output: jax.Array
    shard_sizes: jax.Array
    num_unique: jax.Array


_INPUT_DTYPES = _checks.ID_DTYPES + tuple(np.dtype(t) for t in (np.float32, np.float64))


# 2. Public function --------------------------------------------------------------------------------
def reorder_by_indices(input, shard_ids, num_of_shards: int) -> ReorderResult:  # noqa: A002 (Monolith's name)
    """Keeps the first occurrence of each row key and groups the kept rows by shard.

    The key of row ``i`` is ``input[i]`` (1-D input) or ``input[i, 0]`` (2-D input: only the first
    column counts, as in Monolith). A kept row goes to ``shard_ids[i]`` of its first occurrence;
    later duplicates' shard ids are ignored (but must still be in range). Within a shard, rows come
    out in *reverse* first-occurrence order. Float keys compare as values: ``+0.0 == -0.0``, and
    every NaN row is kept.

    Example (spec 2.6)::

        r = reorder_by_indices(jnp.array([0, 1, 2, 2, 3, 5]), jnp.array([0, 1, 2, 2, 0, 2]), 3)
        # r.output == [3, 0, 1, 5, 2, 0], r.shard_sizes == [2, 1, 2], r.num_unique == 5

    Args:
      input: ``[N]`` or ``[N, E]`` (E >= 1) of int32, int64, uint32, uint64, float32 or float64.
      shard_ids: ``int32`` or ``int64`` ``[N]``, each in ``[0, num_of_shards)``.
      num_of_shards: static int S >= 1.

    Returns:
      :class:`ReorderResult` ``(output, shard_sizes int32[S], num_unique int32[])``.

    Raises:
      ValueError / TypeError: (at trace time) bad ranks, lengths, dtypes or ``num_of_shards``.
      jax.errors.JaxRuntimeError: (when computed, CPU) a shard id outside ``[0, num_of_shards)``.

    Not differentiable (Monolith registers no gradient). ``jax.vmap`` runs one call per batch.
    """
    op = _OP
    input = _checks.as_array(input, op, "input", _INPUT_DTYPES)  # noqa: A001
    shard_ids = _checks.as_array(shard_ids, op, "shard_ids", _checks.INDEX_DTYPES)
    num_of_shards = _checks.static_int(num_of_shards, op, "num_of_shards", minimum=1)
    _checks.check_int32_count(num_of_shards, op, "num_of_shards")
    if input.ndim not in (1, 2):
        raise ValueError(f"{op}: input must be 1-D or 2-D, got shape {input.shape}")
    if input.ndim == 2 and input.shape[1] == 0:
        raise ValueError(f"{op}: a 2-D input needs at least one column (its key), got {input.shape}")
    if shard_ids.shape != input.shape[:1]:
        raise ValueError(
            f"{op}: shard_ids must have shape {input.shape[:1]} (one per input row), "
            f"got {shard_ids.shape}"
        )
    _checks.check_int32_count(input.shape[0], op, "the number of rows")
    output, shard_sizes, num_unique = reorder_by_indices_p.bind(
        input, shard_ids, num_shards=num_of_shards, row_ndim=input.ndim - 1
    )
    return ReorderResult(output, shard_sizes, num_unique)


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(input, shard_ids, *, num_shards, row_ndim):  # noqa: A002
    del shard_ids, row_ndim
    return [(input.shape, input.dtype), ((num_shards,), jnp.int32), ((), jnp.int32)]


def _in_core_ndims(num_operands, *, num_shards, row_ndim):
    del num_operands, num_shards
    return (1 + row_ndim, 1)


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, num_shards, row_ndim):
    return dict(num_shards=np.int64(num_shards), row_ndim=np.int64(row_ndim))


# 5. JVP / 6. transpose: none -- Monolith defines no gradient, and a silent zero would be wrong for the
#    float rows, so differentiating through this op raises JAX's "not implemented" error.
# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    reorder_by_indices_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
)
