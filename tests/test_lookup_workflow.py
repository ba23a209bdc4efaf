"""End to end: the embedding lookup of Monolith's sync (all-to-all) training step, on one process.

Spec section 18, sync training, with the all-to-alls replaced by slicing one array:
  1. `fused_reorder_by_indices(per-table ids, S, dims)` dedups every table and groups the ids by
     shard;
  2-4. shard n receives `shard_sizes[n]` consecutive ids (table by table, `sharded_slot_sizes`),
     looks each up in ITS OWN dense table for that table (row = a function of the shard, the
     table, the id and the column, so every row of every shard is different), and answers with the
     rows concatenated in table order; the answers, concatenated in shard order, are the fused
     embedding buffer (spec 3.2: "the layout of the flat embedding buffer that the forward
     all-to-all returns");
  5. `fused_gather_embeddings_by_input(buffer, split(fused_embedding_offsets, slot_sizes), dims)`
     gives every raw input id its own row;
  6. backward: `jax.grad` of a loss through the gather equals
     `fused_gather_embeddings_by_input_gradient(E_tot, grads, offsets, dims)` and the gradient
     summed directly per id; through the lookup, the gradient of each shard's table is the sum of
     the upstream gradients of the raw ids it serves.
Several tables with different dims, duplicates, negative ids, an empty table; S in {1, 4} and
S = 8 with shard 0 kept empty. The whole pipeline runs eagerly and under `jax.jit` (where the
buffer has the static bound sum_m N_m * dims[m] of spec 3.7 and is built with jnp).

Expected values are computed directly from the ids and the tables (numpy, no jax_distops), never
by the ops under test. The values are exactly representable (tables: multiples of 1/16 below
2**13; upstream gradients: multiples of 1/4), so sums are exact and compared bit for bit.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_distops

from testing import assert_array_bits_equal, quarters  # tests/testing.py

ID_LO = -50  # ids lie in [ID_LO, ID_LO + VOCAB); the dense tables are indexed by id - ID_LO
VOCAB = 100

# (name, table lengths, dims)
TABLE_SETS = (
    ("four_tables", (12, 7, 20, 9), (3, 1, 8, 5)),
    ("empty_middle_table", (10, 0, 15), (2, 4, 6)),
)
# (S, rank0_empty_shard)
SHARDINGS = ((1, False), (4, False), (8, True))


def _shard(v: int, num_shards: int, rank0: bool) -> int:
    """DESIGN.md section 2: floormod(v, S - r) + r (Python's % is floor-mod)."""
    r = int(rank0)
    return v % (num_shards - r) + r


def _make_inputs(lengths, dims, num_shards, id_dtype, seed):
    """ids (duplicates and negatives), per-shard per-table dense tables, upstream gradients."""
    rng = np.random.default_rng(seed)
    ids_list = []
    for length in lengths:
        table = rng.integers(ID_LO, ID_LO + VOCAB, size=length)
        if length >= 4:
            table[1] = table[0]  # a duplicate for sure, and a negative id for sure
            table[2] = -7
            table[-1] = -7
        ids_list.append(table.astype(id_dtype))
    # tables[n][m][id - ID_LO, k] = 1000 n + 100 m + (id - ID_LO) / 4 + k / 16: distinct everywhere.
    tables = [
        [
            (
                1000.0 * n
                + 100.0 * m
                + np.arange(VOCAB)[:, None] / 4
                + np.arange(d)[None, :] / 16
            ).astype(np.float32)
            for m, d in enumerate(dims)
        ]
        for n in range(num_shards)
    ]
    upstream = [quarters(rng, (length, d)) for length, d in zip(lengths, dims)]
    return ids_list, tables, upstream


def _serve_shards(res, tables, dims):
    """Steps 2-4 in numpy: each shard looks its ids up in its own tables and answers in table
    order; the answers are concatenated in shard order.

    Returns:
      (buffer, where): the fused buffer and, for every (table m, id v) served, the float offset at
      which its row was placed.
    """
    num_shards, num_tables = len(tables), len(dims)
    ids = np.asarray(res.ids).tolist()
    shard_sizes = np.asarray(res.shard_sizes).tolist()
    slot_sizes = np.asarray(res.sharded_slot_sizes).reshape(num_shards, num_tables).tolist()
    answers, where = [], {}
    next_id, next_float = 0, 0
    for n in range(num_shards):
        assert sum(slot_sizes[n]) == shard_sizes[n]
        for m in range(num_tables):
            for v in ids[next_id : next_id + slot_sizes[n][m]]:
                assert (m, v) not in where, f"id {v} of table {m} sent twice"
                where[(m, v)] = next_float
                answers.append(tables[n][m][v - ID_LO])
                next_float += dims[m]
            next_id += slot_sizes[n][m]
    assert next_id == int(res.num_unique)
    buffer = np.concatenate(answers) if answers else np.zeros(0, np.float32)
    return buffer, where


def _serve_shards_jnp(res, tables, dims, buffer_size):
    """Steps 2-4 with static shapes (usable under jit and differentiable w.r.t. the tables): the
    same buffer as `_serve_shards`, padded with zeros to `buffer_size`."""
    num_shards, num_tables = len(tables), len(dims)
    counts = res.sharded_slot_sizes  # block b = n * M + m
    block_dims = jnp.asarray(np.tile(np.array(dims, np.int32), num_shards))
    id_end = jnp.cumsum(counts)
    id_start = id_end - counts
    float_size = counts * block_dims
    float_start = jnp.cumsum(float_size) - float_size
    position = jnp.arange(res.ids.shape[0], dtype=jnp.int32)
    block = jnp.minimum(
        jnp.searchsorted(id_end, position, side="right"), num_shards * num_tables - 1
    )
    valid = position < res.num_unique
    shard, table = block // num_tables, block % num_tables
    row_start = float_start[block] + (position - id_start[block]) * block_dims[block]
    rows_index = jnp.clip(res.ids.astype(jnp.int32) - ID_LO, 0, VOCAB - 1)
    buffer = jnp.zeros(buffer_size, jnp.float32)
    for m, d in enumerate(dims):
        stacked = jnp.stack([tables[n][m] for n in range(num_shards)])  # [S, VOCAB, d]
        rows = stacked[shard, rows_index]  # [N, d]
        target = row_start[:, None] + jnp.arange(d, dtype=jnp.int32)[None, :]
        target = jnp.where((valid & (table == m))[:, None], target, buffer_size)
        buffer = buffer.at[target].set(rows, mode="drop")
    return buffer


def _split_offsets(res, slot_sizes):
    """Step 5's `tf.split(fused_emb_offset, emb_offset_sz)`."""
    cuts = np.cumsum(np.asarray(slot_sizes))[:-1]
    return jnp.split(res.fused_embedding_offsets, cuts)


def _expected_rows(ids_list, tables, num_shards, rank0):
    """Every raw id's own row: table m of the shard that owns it."""
    out = []
    for m, ids in enumerate(ids_list):
        dim = tables[0][m].shape[1]
        rows = np.zeros((len(ids), dim), np.float32)
        for j, v in enumerate(ids.tolist()):
            rows[j] = tables[_shard(v, num_shards, rank0)][m][v - ID_LO]
        out.append(rows)
    return out


def _expected_buffer_grad(ids_list, upstream, where, size):
    """d loss / d buffer, summed directly per id: the row of (m, v) gets the sum of the upstream
    gradients of every raw occurrence of v in table m."""
    grad = np.zeros(size, np.float32)
    for m, ids in enumerate(ids_list):
        for j, v in enumerate(ids.tolist()):
            start = where[(m, v)]
            grad[start : start + upstream[m].shape[1]] += upstream[m][j]
    return grad


def _expected_table_grads(ids_list, upstream, tables, num_shards, rank0, weight=None):
    """d loss / d tables[n][m]: row v - ID_LO of v's owner shard n gets sum_j weight * upstream."""
    grads = [[np.zeros_like(t) for t in per_shard] for per_shard in tables]
    for m, ids in enumerate(ids_list):
        for j, v in enumerate(ids.tolist()):
            n = _shard(v, num_shards, rank0)
            w = 1.0 if weight is None else weight[m][j]
            grads[n][m][v - ID_LO] += w * upstream[m][j]
    return grads


def _linear_loss(outputs, upstream):
    return sum(jnp.sum(g * out) for g, out in zip(upstream, outputs))


_PARAMS = [
    pytest.param(lengths, dims, s, rank0, id_dtype, id=f"{name}-S{s}{'_rank0' if rank0 else ''}-"
                 f"{np.dtype(id_dtype).name}")
    for name, lengths, dims in TABLE_SETS
    for s, rank0 in SHARDINGS
    for id_dtype in ((np.int64, np.int32) if s == 4 else (np.int64,))
]


@pytest.mark.parametrize("lengths, dims, num_shards, rank0, id_dtype", _PARAMS)
def test_workflow_eager(lengths, dims, num_shards, rank0, id_dtype):
    ids_list, tables, upstream = _make_inputs(lengths, dims, num_shards, id_dtype, seed=3)
    dims = list(dims)

    # 1. Dedup and route.
    res = jax_distops.fused_reorder_by_indices(
        ids_list, num_shards, dims, rank0_empty_shard=rank0
    )
    # 2-4. Per-shard lookups, answers concatenated in shard order.
    buffer, where = _serve_shards(res, tables, dims)
    size = int(res.fused_embedding_size)
    assert buffer.shape == (size,)
    assert size == sum(d * len(set(ids.tolist())) for d, ids in zip(dims, ids_list))

    # 5. Every raw id gets exactly its own row.
    offsets = _split_offsets(res, res.slot_sizes)
    assert [o.shape[0] for o in offsets] == list(lengths)
    outputs = jax_distops.fused_gather_embeddings_by_input(buffer, offsets, dims)
    want_rows = _expected_rows(ids_list, tables, num_shards, rank0)
    for m, (got, want) in enumerate(zip(outputs, want_rows)):
        assert_array_bits_equal(got, want, f"rows of table {m}")

    # 6. Backward into the buffer: jax.grad == the gradient op == per-id sums.
    want_grad = _expected_buffer_grad(ids_list, upstream, where, size)
    got = jax.grad(
        lambda b: _linear_loss(jax_distops.fused_gather_embeddings_by_input(b, offsets, dims),
                               upstream)
    )(buffer)
    assert_array_bits_equal(got, want_grad, "jax.grad w.r.t. the buffer")
    got = jax_distops.fused_gather_embeddings_by_input_gradient(size, upstream, offsets, dims)
    assert_array_bits_equal(got, want_grad, "gradient op")
    loss_scale = 1 / 1024  # a power of two: the scaled sums stay exact
    got = jax_distops.fused_gather_embeddings_by_input_gradient(
        size, upstream, offsets, dims, scale=loss_scale
    )
    assert_array_bits_equal(got, want_grad * np.float32(loss_scale), "scaled gradient op")

    # ... and through the lookups into every shard's tables.
    def loss(tbls):
        buf = _serve_shards_jnp(res, tbls, dims, size)
        return _linear_loss(jax_distops.fused_gather_embeddings_by_input(buf, offsets, dims),
                            upstream)

    assert_array_bits_equal(_serve_shards_jnp(res, tables, dims, size), buffer, "jnp lookup")
    got = jax.grad(loss)(tables)
    want = _expected_table_grads(ids_list, upstream, tables, num_shards, rank0)
    for n in range(num_shards):
        for m in range(len(dims)):
            assert_array_bits_equal(got[n][m], want[n][m], f"table grad shard {n} table {m}")

    # A nonlinear loss: d/d out of sum(upstream * sin(out)) = upstream * cos(out).
    def nonlinear(tbls):
        buf = _serve_shards_jnp(res, tbls, dims, size)
        outs = jax_distops.fused_gather_embeddings_by_input(buf, offsets, dims)
        return sum(jnp.sum(g * jnp.sin(out)) for g, out in zip(upstream, outs))

    got = jax.grad(nonlinear)(tables)
    weight = [np.cos(rows.astype(np.float64)) for rows in want_rows]
    want = _expected_table_grads(
        ids_list, [u.astype(np.float64) for u in upstream],
        [[t.astype(np.float64) for t in per] for per in tables], num_shards, rank0, weight,
    )
    for n in range(num_shards):
        for m in range(len(dims)):
            np.testing.assert_allclose(
                np.asarray(got[n][m], np.float64), want[n][m], rtol=2e-5, atol=1e-4,
                err_msg=f"nonlinear table grad shard {n} table {m}",
            )


@pytest.mark.parametrize("lengths, dims, num_shards, rank0, id_dtype",
                         [p for p in _PARAMS if p.values[-1] == np.int64])
def test_workflow_jit(lengths, dims, num_shards, rank0, id_dtype):
    """The whole step in one jax.jit: buffer padded to its static bound sum_m N_m * dims[m]."""
    ids_list, tables, upstream = _make_inputs(lengths, dims, num_shards, id_dtype, seed=7)
    dims = list(dims)
    bound = sum(n * d for n, d in zip(lengths, dims))  # spec 3.7

    @jax.jit
    def step(ids, tbls, ups):
        res = jax_distops.fused_reorder_by_indices(ids, num_shards, dims,
                                                   rank0_empty_shard=rank0)
        offsets = _split_offsets(res, lengths)  # slot_sizes, known statically under jit

        def gather(buf):
            return jax_distops.fused_gather_embeddings_by_input(buf, offsets, dims)

        def loss(t):
            return _linear_loss(gather(_serve_shards_jnp(res, t, dims, bound)), ups)

        buf = _serve_shards_jnp(res, tbls, dims, bound)
        buffer_grad = jax.grad(lambda b: _linear_loss(gather(b), ups))(buf)
        op_grad = jax_distops.fused_gather_embeddings_by_input_gradient(bound, ups, offsets, dims)
        return dict(
            buffer=buf,
            size=res.fused_embedding_size,
            slot_sizes=res.slot_sizes,
            outputs=gather(buf),
            buffer_grad=buffer_grad,
            op_grad=op_grad,
            table_grads=jax.grad(loss)(tbls),
        )

    got = step(ids_list, tables, upstream)

    # The eager reference buffer (numpy lookups) and the expected values.
    res = jax_distops.fused_reorder_by_indices(ids_list, num_shards, dims,
                                               rank0_empty_shard=rank0)
    buffer, where = _serve_shards(res, tables, dims)
    size = buffer.shape[0]
    assert int(got["size"]) == size
    np.testing.assert_array_equal(np.asarray(got["slot_sizes"]), np.array(lengths, np.int32))
    padded = np.zeros(bound, np.float32)
    padded[:size] = buffer
    assert_array_bits_equal(got["buffer"], padded, "buffer")

    for m, (g, want) in enumerate(
        zip(got["outputs"], _expected_rows(ids_list, tables, num_shards, rank0))
    ):
        assert_array_bits_equal(g, want, f"rows of table {m}")

    want_grad = np.zeros(bound, np.float32)
    want_grad[:size] = _expected_buffer_grad(ids_list, upstream, where, size)
    assert_array_bits_equal(got["buffer_grad"], want_grad, "jax.grad w.r.t. the buffer")
    assert_array_bits_equal(got["op_grad"], want_grad, "gradient op")

    want = _expected_table_grads(ids_list, upstream, tables, num_shards, rank0)
    for n in range(num_shards):
        for m in range(len(dims)):
            assert_array_bits_equal(
                got["table_grads"][n][m], want[n][m], f"table grad shard {n} table {m}"
            )


def test_spec_case7_layout():
    """Spec 3.2 case 7 end to end: the 22-float buffer of spec 10.6 is exactly what the shards
    answer when id v's row of table m holds the spec's floats, and the gather undoes the dedup and
    the shard reordering."""
    ids_list = [np.array([2, 3, 1, 2, 7, 2], np.int64), np.array([5, 8, 4, 4, 5, 11, 6], np.int64)]
    res = jax_distops.fused_reorder_by_indices(ids_list, 3, [3, 2], rank0_empty_shard=False)
    # Spec 10.2 / 3.2 case 7: s0 [3] [6]; s1 [1,7] [4]; s2 [2] [5,8,11] -> rows 1.x .. 9.x in
    # that order, so id v of table m reads the row numbered by its position in that order.
    row_number = {(0, 3): 1, (1, 6): 2, (0, 1): 3, (0, 7): 4, (1, 4): 5, (0, 2): 6, (1, 5): 7,
                  (1, 8): 8, (1, 11): 9}
    dims = [3, 2]
    fused = np.array(
        [1.1, 1.2, 1.3, 2.1, 2.2, 3.1, 3.2, 3.3, 4.1, 4.2, 4.3,
         5.1, 5.2, 6.1, 6.2, 6.3, 7.1, 7.2, 8.1, 8.2, 9.1, 9.2], np.float32
    )  # fmt: skip
    assert int(res.fused_embedding_size) == 22
    offsets = _split_offsets(res, res.slot_sizes)
    outputs = jax.jit(lambda b, o: jax_distops.fused_gather_embeddings_by_input(b, o, dims))(
        fused, offsets
    )
    for m, ids in enumerate(ids_list):
        want = np.array(
            [[float(f"{row_number[m, v]}.{k + 1}") for k in range(dims[m])] for v in ids.tolist()],
            np.float32,
        )
        assert_array_bits_equal(outputs[m], want, f"table {m}")
