"""Independent numpy oracles for jax_distops, transcribed from the spec.

Each function here restates one op of `spec/monolith_ops.md` as plainly as possible: Python loops,
lists and dicts over Python ints, no vectorisation tricks and no code shared with the package under
test. The oracles are meant to be obviously correct, not fast (they still handle a few hundred
thousand ids in well under a second). They also apply jax_distops' deliberate deviations from
Monolith (DESIGN.md section 2) and its static-shape layout (DESIGN.md section 1): data-dependent
outputs are padded with 0 up to their static bound, and every counter is int32.

Ops:
  * `fused_reorder_by_indices` (spec section 3).
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np

INT32_MAX = 2**31 - 1


class FusedReorderExpected(NamedTuple):
    """Expected outputs of `fused_reorder_by_indices`, same fields and order as the op's result."""

    ids: np.ndarray  # input dtype, [N_tot]: deduped ids, then zero padding
    shard_sizes: np.ndarray  # int32 [S]
    sharded_slot_sizes: np.ndarray  # int32 [S*M]
    slot_sizes: np.ndarray  # int32 [M]  (Monolith output 3, emb_offset_sz)
    fused_embedding_offsets: np.ndarray  # int32 [N_tot]  (Monolith output 4, fused_emb_offset)
    num_unique: np.ndarray  # int32 scalar
    fused_embedding_size: np.ndarray  # int32 scalar, E_tot


def fused_reorder_by_indices(
    ids_list: Sequence[np.ndarray],
    num_of_shards: int,
    dim_sizes: Optional[Sequence[int]] = None,
    rank0_empty: bool = False,
) -> FusedReorderExpected:
    """Spec section 3.2, with floor-mod sharding for signed ids (DESIGN.md section 2).

    Args:
      ids_list: M one-dimensional integer arrays, all of one dtype (the tables).
      num_of_shards: S >= 1.
      dim_sizes: embedding dim of each table; None means all 1.
      rank0_empty: the already-resolved rank-0-empty flag (the oracle never reads the environment).

    Returns:
      The seven outputs, padded to the static lengths of the JAX op.
    """
    tables = [np.asarray(t) for t in ids_list]
    dtype = tables[0].dtype
    assert dtype.kind in "iu", dtype
    assert all(t.dtype == dtype and t.ndim == 1 for t in tables)
    num_tables = len(tables)
    dims = [1] * num_tables if dim_sizes is None else [int(d) for d in dim_sizes]
    assert len(dims) == num_tables and all(d >= 1 for d in dims)
    r = 1 if rank0_empty else 0
    modulus = num_of_shards - r
    assert modulus >= 1

    def shard(v: int) -> int:
        # v is a Python int holding the exact id value (unsigned values stay >= 0). Python's `%`
        # is floor-mod, so this is floormod(v, S - r) + r for signed ids and plain mod for
        # unsigned ones; a negative id lands in [r, S).
        return v % modulus + r

    # blocks[n][m] is B[n][m]: the distinct ids of table m whose shard is n, in first-occurrence
    # order.
    blocks = [[[] for _ in range(num_tables)] for _ in range(num_of_shards)]
    # where[m][v] = (shard of v, position of v inside B[shard][m]); dedup is per table only.
    where = [{} for _ in range(num_tables)]
    for m, table in enumerate(tables):
        for v in table.tolist():
            if v not in where[m]:
                n = shard(v)
                where[m][v] = (n, len(blocks[n][m]))
                blocks[n][m].append(v)

    # base[n, m]: number of floats in all blocks before block (n, m), shard-major then table-minor.
    base = {}
    total_floats = 0
    for n in range(num_of_shards):
        for m in range(num_tables):
            base[n, m] = total_floats
            total_floats += len(blocks[n][m]) * dims[m]
    if total_floats > INT32_MAX:
        raise ValueError(f"E_tot = {total_floats} does not fit in int32")

    # Output 4: for every raw element, in input order, base(shard(v), m) + local(m, v).
    offsets = []
    for m, table in enumerate(tables):
        for v in table.tolist():
            n, position = where[m][v]
            offsets.append(base[n, m] + position * dims[m])

    # Output 0: concat over shards, then over tables, of B[n][m]; padded with 0 to N_tot.
    unique = [v for n in range(num_of_shards) for m in range(num_tables) for v in blocks[n][m]]
    total_ids = sum(len(t) for t in tables)
    ids = np.zeros(total_ids, dtype=dtype)
    ids[: len(unique)] = np.array(unique, dtype=dtype)

    shard_sizes = [sum(len(blocks[n][m]) for m in range(num_tables)) for n in range(num_of_shards)]
    sharded_slot_sizes = [
        len(blocks[n][m]) for n in range(num_of_shards) for m in range(num_tables)
    ]
    return FusedReorderExpected(
        ids=ids,
        shard_sizes=np.array(shard_sizes, dtype=np.int32),
        sharded_slot_sizes=np.array(sharded_slot_sizes, dtype=np.int32),
        slot_sizes=np.array([len(t) for t in tables], dtype=np.int32),
        fused_embedding_offsets=np.array(offsets, dtype=np.int32),
        num_unique=np.array(len(unique), dtype=np.int32),
        fused_embedding_size=np.array(total_floats, dtype=np.int32),
    )
