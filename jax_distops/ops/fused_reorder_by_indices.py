"""``fused_reorder_by_indices``: dedup ids per table, group them by shard, and lay out their offsets
into the fused embedding buffer that the shards send back (Monolith's ``FusedReorderByIndices``).

Semantics: ``spec/monolith_ops.md`` section 3; deviations (floor-mod shard for negative ids, the
``rank0_empty_shard`` argument, int32 overflow errors): ``DESIGN.md`` section 2.
Kernel: ``csrc/fused_reorder_by_indices_cpu.cc``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from .._primitive import new_primitive, register_primitive

_OP = "fused_reorder_by_indices"

# 1. Primitive --------------------------------------------------------------------------------------
# Operands: the M id arrays. Outputs: ids, shard_sizes, sharded_slot_sizes, fused_embedding_offsets,
# num_unique, fused_embedding_size (slot_sizes is static and built in Python).
fused_reorder_p = new_primitive(_OP)


class FusedReorderResult(NamedTuple):
    """Result of :func:`fused_reorder_by_indices` (Monolith's outputs 0-4, plus two counts).

    Attributes:
      ids: ``[N]`` (N = total input ids), input dtype: the deduped ids, shard-major then table, each
        (shard, table) block in first-occurrence order; the first ``num_unique`` entries are valid,
        the rest are 0. The ids to send: shard ``n`` gets ``shard_sizes[n]`` consecutive ids.
      shard_sizes: ``int32[S]``, ids sent to each shard.
      sharded_slot_sizes: ``int32[S * M]``, entry ``n * M + m`` = distinct ids of table m on shard n.
      slot_sizes: ``int32[M]``, the raw length of each input table (splits the offsets per table).
      fused_embedding_offsets: ``int32[N]``, for every raw input id (tables concatenated in order),
        the offset of its embedding row in the fused embedding buffer.
      num_unique: ``int32[]``, number of valid entries of ``ids``.
      fused_embedding_size: ``int32[]``, length E_tot of the fused embedding buffer.
    """

    ids: jax.Array
    shard_sizes: jax.Array
    sharded_slot_sizes: jax.Array
    slot_sizes: jax.Array
    fused_embedding_offsets: jax.Array
    num_unique: jax.Array
    fused_embedding_size: jax.Array


# 2. Public function --------------------------------------------------------------------------------
def fused_reorder_by_indices(
    ids_list: Sequence[jax.typing.ArrayLike],
    num_of_shards: int,
    dim_sizes: Sequence[int] | None = None,
    *,
    rank0_empty_shard: bool | None = None,
) -> FusedReorderResult:
    """Dedups each table's ids, groups them shard by shard, and computes fused embedding offsets.

    For table ``m`` and shard ``n``, block ``B[n][m]`` holds the distinct ids of ``ids_list[m]`` whose
    shard is ``n``, in first-occurrence order. Blocks are laid out shard-major, table-minor; block
    ``(n, m)`` takes ``|B[n][m]| * dim_sizes[m]`` floats in the fused embedding buffer, which is what
    the shards' answers concatenate to. The shard of an id ``v`` is ``floormod(v, S - r) + r`` (plain
    mod for unsigned ids), where ``r = 1`` if shard 0 is kept empty.

    Example (spec case 6)::

        r = fused_reorder_by_indices([jnp.array([0, 1, 0]), jnp.array([3, 2, 3]),
                                      jnp.array([5, 6, 7])], 2, [1, 2, 3])
        # r.ids                     == [0, 2, 6, 1, 3, 5, 7]   (shard 0: 0 | 2 | 6; shard 1: 1 | 3 | 5 7)
        # r.shard_sizes             == [3, 4]
        # r.fused_embedding_offsets == [0, 6, 0, 7, 1, 7, 9, 3, 12];  r.fused_embedding_size == 15

    Args:
      ids_list: M >= 1 one-dimensional id arrays (one per table), all of one dtype: int32, int64,
        uint32 or uint64 (64-bit needs ``jax_enable_x64``).
      num_of_shards: static int S >= 1.
      dim_sizes: static embedding width per table (ints >= 1); ``None`` means all 1.
      rank0_empty_shard: keep shard 0 empty (Monolith's "N-1 sharding scheme"). ``None`` applies
        Monolith's rule at trace time: env ``MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD`` (default "1") equals
        "1" and ``num_of_shards > 4``. An explicit bool wins over the environment.

    Returns:
      A :class:`FusedReorderResult`. Counts and offsets are int32; ``ids`` keeps the input dtype and is
      padded with 0 to the total number of input ids.

    Raises:
      ValueError: ``num_of_shards < 1``; no shard left after keeping shard 0 empty; ``dim_sizes`` of
        the wrong length or with entries < 1; an id array that is not 1-D; an empty ``ids_list``;
        more than 2**31 - 1 ids in total.
      TypeError: non-integer or mixed id dtypes; a 64-bit numpy array while x64 is disabled; a
        non-int ``num_of_shards``.
      jax.errors.JaxRuntimeError: (when the result is computed) the fused buffer would exceed
        2**31 - 1 floats, so int32 offsets cannot address it.

    Batching and differentiation: ``jax.vmap`` over any subset of the id arrays and any axis runs one
    custom call for the whole batch. The outputs are integers: gradients through them are zero (float0)
    and ``jax.grad`` of a function using them works.
    """
    op = _OP
    ids = _checks.as_array_list(ids_list, op, "ids_list", _checks.ID_DTYPES, ndim=1)
    if not ids:
        raise ValueError(f"{op}: ids_list must contain at least one id array")
    num_of_shards = _checks.static_int(num_of_shards, op, "num_of_shards", minimum=1)
    _checks.check_int32_count(num_of_shards, op, "num_of_shards")
    if dim_sizes is None:
        dims = (1,) * len(ids)
    else:
        dims = tuple(_checks.static_int(d, op, "dim_sizes", minimum=1) for d in dim_sizes)
        if len(dims) != len(ids):
            raise ValueError(
                f"{op}: dim_sizes has {len(dims)} entries but ids_list has {len(ids)} tables"
            )
        for d in dims:
            _checks.check_int32_count(d, op, "a dim_sizes entry")
    if rank0_empty_shard is None:
        rank0_empty_shard = (
            os.environ.get("MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD", "1") == "1" and num_of_shards > 4
        )
    elif not isinstance(rank0_empty_shard, bool | np.bool_):
        raise TypeError(f"{op}: rank0_empty_shard must be a bool or None, got {rank0_empty_shard!r}")
    first_shard = int(bool(rank0_empty_shard))
    if num_of_shards - first_shard < 1:
        raise ValueError(
            f"{op}: rank0_empty_shard=True with num_of_shards={num_of_shards} leaves no shard for ids"
        )
    lengths = [x.shape[0] for x in ids]
    _checks.check_int32_count(sum(lengths), op, "the total number of ids in ids_list")

    out_ids, shard_sizes, slot_counts, offsets, num_unique, emb_size = fused_reorder_p.bind(
        *ids, num_shards=num_of_shards, first_shard=first_shard, dims=dims
    )
    return FusedReorderResult(
        ids=out_ids,
        shard_sizes=shard_sizes,
        sharded_slot_sizes=slot_counts,
        slot_sizes=jnp.asarray(np.array(lengths, np.int32)),
        fused_embedding_offsets=offsets,
        num_unique=num_unique,
        fused_embedding_size=emb_size,
    )


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(*ids, num_shards, first_shard, dims):
    del first_shard, dims
    total = sum(x.shape[0] for x in ids)
    return [
        ((total,), ids[0].dtype),
        ((num_shards,), jnp.int32),
        ((num_shards * len(ids),), jnp.int32),
        ((total,), jnp.int32),
        ((), jnp.int32),
        ((), jnp.int32),
    ]


def _in_core_ndims(num_operands, **params):
    del params
    return (1,) * num_operands


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, num_shards, first_shard, dims):
    # Explicit int64 types: the handler decodes Attr<int64_t> and Span<const int64_t>.
    return dict(
        num_shards=np.int64(num_shards),
        first_shard=np.int64(first_shard),
        dims=np.asarray(dims, np.int64),
    )


# 5. JVP: none needed -- every output is an integer (registered as non-differentiable below).
# 6. Transpose: none (not linear in anything).
# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    fused_reorder_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    differentiable=False,
)
