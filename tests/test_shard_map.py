"""The ops inside ``jax.shard_map``, on the four simulated CPU devices that conftest.py asks for.

Each test runs an op per device, with per-device operands (an array split on its leading axis)
next to replicated ones (the same table on every device), and compares every device's result
with the numpy oracle on that device's inputs. Gradients go through ``jax.grad`` of a loss summed
over the devices (``psum``): a replicated operand's gradient is then the sum over the devices,
which the oracle computes over all devices' inputs at once. The last test runs the embedding
lookup of a sync training step across the devices (route, all-to-all, per-shard table lookup,
all-to-all back, fused gather) and checks the gradient of each device's table shard.

Values are small multiples of 1/4, so every sum is exact in any order and results are compared
bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jax_distops
import oracle  # tests/oracle.py
from testing import assert_array_bits_equal, quarters  # tests/testing.py

pytestmark = pytest.mark.multidevice

AXIS = "x"


@pytest.fixture(scope="module")
def mesh():
    devices = jax.devices("cpu")
    if len(devices) < 2:
        pytest.fail(
            "the shard_map tests need several CPU devices: tests/conftest.py asks for 4 through "
            "XLA_FLAGS unless XLA_FLAGS already sets --xla_force_host_platform_device_count"
        )
    return jax.sharding.Mesh(np.array(devices[:4]), (AXIS,))  # Mesh: Auto axis types


def _smap(mesh, f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


def test_fused_reorder_per_device(mesh):
    D = mesh.size
    rng = np.random.default_rng(0)
    dims, S = (2, 4, 1), 5
    ids = [rng.integers(-40, 40, size=(D, n)).astype(np.int64) for n in (13, 0, 29)]

    def per_device(*xs):
        r = jax_distops.fused_reorder_by_indices(
            [x[0] for x in xs], S, dims, rank0_empty_shard=False
        )
        return tuple(out[None] for out in r)

    got = _smap(mesh, per_device, tuple(P(AXIS) for _ in ids), P(AXIS))(*ids)
    for d in range(D):
        want = oracle.fused_reorder_by_indices([x[d] for x in ids], S, dims, rank0_empty=False)
        for name, g, w in zip(want._fields, got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g)[d], w, err_msg=f"device {d}: {name}")


def test_map_id_to_embedding_replicated_tables(mesh):
    D = mesh.size
    rng = np.random.default_rng(1)
    ids_list = [
        np.array([5, -3, 9, 5], np.int64),
        np.array([11, 2, -3], np.int64),
    ]  # dups: first wins
    tables = [quarters(rng, (4, 3)), quarters(rng, (3, 3))]
    inputs = rng.choice(np.concatenate(ids_list), size=D * 6)
    upstream = quarters(rng, (D * 6, 3))

    forward = _smap(mesh, jax_distops.map_id_to_embedding, (P(), P(), P(AXIS)), P(AXIS))
    want = oracle.map_id_to_embedding(ids_list, tables, inputs)
    assert_array_bits_equal(forward(ids_list, tables, inputs), want, "output")

    def loss(tables, x, g):
        def per_device(tables, x, g):  # ids_list: a closed-over constant, the same on every device
            out = jax_distops.map_id_to_embedding(ids_list, tables, x)
            return jax.lax.psum(jnp.sum(out * g), AXIS)

        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P()
        )(tables, x, g)

    want_grads = oracle.map_id_to_embedding_gradient(ids_list, inputs, upstream)
    got_grads = jax.jit(jax.grad(loss))(tables, inputs, upstream)
    for s, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert_array_bits_equal(g, w, f"d loss / d embeddings_list[{s}]")

    # The gradient op itself, per device, summed over the devices.
    def grad_op(x, g):
        return [
            jax.lax.psum(t, AXIS)
            for t in jax_distops.map_id_to_embedding_gradient_back_prop(ids_list, x, g)
        ]

    got_sums = _smap(mesh, grad_op, (P(AXIS), P(AXIS)), P())(inputs, upstream)
    for s, (g, w) in enumerate(zip(got_sums, want_grads, strict=True)):
        assert_array_bits_equal(g, w, f"psum of map_id_to_embedding_gradient_back_prop[{s}]")


def test_gather_embeddings_by_input_replicated_table(mesh):
    D = mesh.size
    rng = np.random.default_rng(2)
    ids = np.array([40, -1, 7, 12, 7, 3], np.int64)
    embeddings = quarters(rng, (6, 2))
    inputs = rng.choice(ids, size=D * 5)
    upstream = quarters(rng, (D * 5, 2))

    forward = _smap(
        mesh,
        lambda i, e, x: tuple(jax_distops.gather_embeddings_by_input(i, e, x)),
        (P(), P(), P(AXIS)),
        P(AXIS),
    )
    output, mapping = forward(ids, embeddings, inputs)
    want = oracle.gather_embeddings_by_input(ids, embeddings, inputs)
    assert_array_bits_equal(output, want.output, "output")
    np.testing.assert_array_equal(np.asarray(mapping), want.index_mapping)

    def loss(e, x, g):
        def per_device(e, x, g):
            return jax.lax.psum(
                jnp.sum(jax_distops.gather_embeddings_by_input(ids, e, x).output * g), AXIS
            )

        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P()
        )(e, x, g)

    want_grad = oracle.gather_embeddings_by_ids_gradient(len(ids), upstream, want.index_mapping)
    assert_array_bits_equal(
        jax.jit(jax.grad(loss))(embeddings, inputs, upstream), want_grad, "d loss / d embeddings"
    )


def test_vmap_inside_shard_map(mesh):
    """vmap's batching rule binds the op again, with the replicated table unbatched next to
    batched per-device ids: the one custom call per batch must still see aligned operands."""
    D = mesh.size
    rng = np.random.default_rng(6)
    ids = np.array([3, 8, -2, 5], np.int64)
    embeddings = quarters(rng, (4, 2))
    inputs = rng.choice(ids, size=(D * 2, 5))  # each device: a batch of 2 rows of 5 ids
    upstream = quarters(rng, (D * 2, 5, 2))

    def loss(e, x, g):
        def per_device(e, x, g):
            gather = jax.vmap(
                lambda row: jax_distops.gather_embeddings_by_input(ids, e, row).output
            )
            return jax.lax.psum(jnp.sum(gather(x) * g), AXIS)

        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P()
        )(e, x, g)

    want = oracle.gather_embeddings_by_input(ids, embeddings, inputs.reshape(-1))
    want_grad = oracle.gather_embeddings_by_ids_gradient(
        len(ids), upstream.reshape(-1, 2), want.index_mapping
    )
    value, grad = jax.jit(jax.value_and_grad(loss))(embeddings, inputs, upstream)
    assert_array_bits_equal(value, np.sum(want.output * upstream.reshape(-1, 2)), "loss")
    assert_array_bits_equal(grad, want_grad, "d loss / d embeddings")


def test_fused_gather_per_device_buffers_and_replicated_scale(mesh):
    D = mesh.size
    rng = np.random.default_rng(3)
    dims, lengths, size = (3, 1, 2), (5, 4, 0), 12
    fused = quarters(rng, (D, size))
    offsets = [
        rng.integers(0, size - d + 1, size=(D, n)).astype(np.int32) for d, n in zip(dims, lengths)
    ]
    upstream = [quarters(rng, (D, n, d)) for d, n in zip(dims, lengths)]

    def forward(f, offs):
        return [
            out[None]
            for out in jax_distops.fused_gather_embeddings_by_input(
                f[0], [o[0] for o in offs], dims
            )
        ]

    got = _smap(mesh, forward, (P(AXIS), P(AXIS)), P(AXIS))(fused, offsets)

    def loss(f, offs, gs):
        def per_device(f, offs, gs):
            outs = jax_distops.fused_gather_embeddings_by_input(f[0], [o[0] for o in offs], dims)
            return jax.lax.psum(sum(jnp.sum(out * g[0]) for out, g in zip(outs, gs)), AXIS)

        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS)), out_specs=P()
        )(f, offs, gs)

    d_fused = jax.jit(jax.grad(loss))(fused, offsets, upstream)

    # The gradient op with a traced scale replicated on every device, and its derivative in scale:
    # the scale's gradient sums over the devices.
    def scaled(scale, gs, offs):
        def per_device(scale, gs, offs):
            out = jax_distops.fused_gather_embeddings_by_input_gradient(
                size, [g[0] for g in gs], [o[0] for o in offs], dims, scale
            )
            return out[None]

        return jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS)
        )(scale, gs, offs)

    weights = quarters(rng, (D, size))
    got_scaled = jax.jit(scaled)(np.float32(0.5), upstream, offsets)
    got_d_scale = jax.jit(jax.grad(lambda s: jnp.sum(scaled(s, upstream, offsets) * weights)))(
        np.float32(0.5)
    )

    want_d_scale = np.float32(0)
    for d in range(D):
        offs_d = [o[d] for o in offsets]
        want = oracle.fused_gather_embeddings_by_input(fused[d], offs_d, dims)
        for m, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_array_bits_equal(np.asarray(g)[d], w, f"device {d}: output {m}")
        unscaled = oracle.fused_gather_embeddings_by_input_gradient(
            size, [g[d] for g in upstream], offs_d, dims
        )
        assert_array_bits_equal(np.asarray(d_fused)[d], unscaled, f"device {d}: d loss / d fused")
        assert_array_bits_equal(
            np.asarray(got_scaled)[d], unscaled * np.float32(0.5), f"device {d}: scaled"
        )
        want_d_scale += np.sum(unscaled * weights[d])
    assert_array_bits_equal(got_d_scale, np.float32(want_d_scale), "d / d scale")


def test_routing_ops_per_device(mesh):
    D = mesh.size
    rng = np.random.default_rng(4)
    S = 3
    indices = rng.integers(0, S, size=(D, 7)).astype(np.int32)
    tensor = quarters(rng, (D, 7, 2))
    keys = rng.integers(-5, 5, size=(D, 9)).astype(np.int64)
    shard_ids = rng.integers(0, S, size=(D, 9)).astype(np.int32)
    values = rng.integers(-9, 9, size=(D, 8)).astype(np.int64)
    value_indices = rng.integers(0, S, size=(D, 8)).astype(np.int32)
    row_splits = np.stack(
        [np.concatenate([[0], np.sort(rng.integers(0, 9, size=4)), [8]]) for _ in range(D)]
    ).astype(np.int64)
    upstream = quarters(rng, (D, 7, 2))

    def per_device(i, t, k, s, v, vi, rs):
        split = jax_distops.split_by_indices(i[0], t[0], S)
        reorder = jax_distops.reorder_by_indices(k[0], s[0], S)
        ragged = jax_distops.ragged_split_by_indices(vi[0], jax_distops.Ragged(v[0], rs[0]), S)
        return [x[None] for x in (*split, *reorder, *ragged)]

    got = _smap(mesh, per_device, (P(AXIS),) * 7, P(AXIS))(
        indices, tensor, keys, shard_ids, values, value_indices, row_splits
    )

    def loss(t, i, g):  # the split's gradient w.r.t. each device's own tensor
        def per_device(t, i, g):
            out = jax_distops.split_by_indices(i[0], t[0], S).values
            return jax.lax.psum(jnp.sum(out * g[0]), AXIS)

        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS),) * 3, out_specs=P())(t, i, g)

    d_tensor = jax.jit(jax.grad(loss))(tensor, indices, upstream)
    for d in range(D):
        split = oracle.split_by_indices(indices[d], tensor[d], S)
        reorder = oracle.reorder_by_indices(keys[d], shard_ids[d], S)
        ragged = oracle.ragged_split_by_indices(value_indices[d], values[d], row_splits[d], S)
        names = (
            *("split " + f for f in split._fields),
            *("reorder " + f for f in reorder._fields),
            *("ragged " + f for f in ragged._fields),
        )
        for name, g, w in zip(names, got, (*split, *reorder, *ragged), strict=True):
            np.testing.assert_array_equal(np.asarray(g)[d], w, err_msg=f"device {d}: {name}")
        assert_array_bits_equal(
            np.asarray(d_tensor)[d],
            oracle.split_by_indices_gradient(indices[d], upstream[d], S),
            f"device {d}: d loss / d tensor",
        )


# Ops whose per-device operands are empty (a worker with no ids this step): (name, per-device op
# on unbatched operands, per-device operands with their device axis, numpy oracle). Replicated
# tables ride along as constants of the per-device function. Operands of size 0 arriving from a
# shard_map argument broke XLA's compile (jax 0.10.2: an error when all were empty; jax 0.11.2: a
# segfault when some were), until the lowering passed them as constants (_primitive._lowering).
_IDS = np.array([5, -3, 9, 11], np.int64)
_TABLE = np.arange(12, dtype=np.float32).reshape(4, 3) / 4
_FLAT = np.arange(10, dtype=np.float32) / 4
_EMPTY_CASES = [
    ("fused_reorder_by_indices",
     lambda a, b: jax_distops.fused_reorder_by_indices([a, b], 4, (2, 3), rank0_empty_shard=False),
     (np.zeros((4, 0), np.int64), np.zeros((4, 0), np.int64)),
     lambda a, b: oracle.fused_reorder_by_indices([a, b], 4, (2, 3), rank0_empty=False)),
    ("split_by_indices", lambda i, t: jax_distops.split_by_indices(i, t, 3),
     (np.zeros((4, 0), np.int32), np.zeros((4, 0, 2), np.float32)),
     lambda i, t: oracle.split_by_indices(i, t, 3)),
    ("split_by_indices_gradient", lambda i, g: (jax_distops.split_by_indices_gradient(i, g, 3),),
     (np.zeros((4, 0), np.int32), np.zeros((4, 0, 2), np.float32)),
     lambda i, g: (oracle.split_by_indices_gradient(i, g, 3),)),
    ("reorder_by_indices", lambda x, s: jax_distops.reorder_by_indices(x, s, 3),
     (np.zeros((4, 0), np.int64), np.zeros((4, 0), np.int32)),
     lambda x, s: oracle.reorder_by_indices(x, s, 3)),
    ("ragged_split_by_indices",
     lambda i, v, rs: jax_distops.ragged_split_by_indices(i, jax_distops.Ragged(v, rs), 3),
     (np.zeros((4, 0), np.int32), np.zeros((4, 0), np.int64), np.zeros((4, 1), np.int64)),
     lambda i, v, rs: oracle.ragged_split_by_indices(i, v, rs, 3)),
    ("map_id_to_embedding", lambda x: (jax_distops.map_id_to_embedding([_IDS], [_TABLE], x),),
     (np.zeros((4, 0), np.int64),),
     lambda x: (oracle.map_id_to_embedding([_IDS], [_TABLE], x),)),
    ("map_id_to_embedding_gradient_back_prop",
     lambda x, g: jax_distops.map_id_to_embedding_gradient_back_prop([_IDS], x, g),
     (np.zeros((4, 0), np.int64), np.zeros((4, 0, 3), np.float32)),
     lambda x, g: oracle.map_id_to_embedding_gradient([_IDS], x, g)),
    ("gather_embeddings_by_input",
     lambda x: jax_distops.gather_embeddings_by_input(_IDS, _TABLE, x),
     (np.zeros((4, 0), np.int64),),
     lambda x: oracle.gather_embeddings_by_input(_IDS, _TABLE, x)),
    ("gather_embeddings_by_ids_gradient_back_prop",
     lambda g, m: (jax_distops.gather_embeddings_by_ids_gradient_back_prop(_IDS, g, m),),
     (np.zeros((4, 0, 3), np.float32), np.zeros((4, 0), np.int64)),
     lambda g, m: (oracle.gather_embeddings_by_ids_gradient(4, g, m),)),
    ("fused_gather_embeddings_by_input",
     lambda o: jax_distops.fused_gather_embeddings_by_input(_FLAT, [o], (2,)),
     (np.zeros((4, 0), np.int32),),
     lambda o: oracle.fused_gather_embeddings_by_input(_FLAT, [o], (2,))),
    ("fused_gather_embeddings_by_input_gradient",
     lambda g, o: (jax_distops.fused_gather_embeddings_by_input_gradient(10, [g], [o], (2,), 0.5),),
     (np.zeros((4, 0, 2), np.float32), np.zeros((4, 0), np.int32)),
     lambda g, o: (oracle.fused_gather_embeddings_by_input_gradient(10, [g], [o], (2,), 0.5),)),
]


@pytest.mark.parametrize("name, op, operands, want_fn", _EMPTY_CASES,
                         ids=[c[0] for c in _EMPTY_CASES])
def test_empty_per_device_operands(mesh, name, op, operands, want_fn):
    def per_device(*xs):
        return [out[None] for out in op(*(x[0] for x in xs))]

    got = _smap(mesh, per_device, (P(AXIS),) * len(operands), P(AXIS))(*operands)
    for d in range(mesh.size):
        want = want_fn(*(x[d] for x in operands))
        assert len(got) == len(want), name
        for k, (g, w) in enumerate(zip(got, want)):
            assert_array_bits_equal(np.asarray(g)[d], np.asarray(w), f"{name} output {k}, device {d}")


def test_some_per_device_operands_empty(mesh):
    """One empty table next to non-empty ones, forward and gradient (jax 0.11.2 segfaulted)."""
    D = mesh.size
    rng = np.random.default_rng(7)
    dims = (2, 3)
    ids = [rng.integers(-9, 9, size=(D, 5)).astype(np.int64), np.zeros((D, 0), np.int64)]
    fused = quarters(rng, (D, 16))
    offsets = [rng.integers(0, 15, size=(D, 5)).astype(np.int32), np.zeros((D, 0), np.int32)]

    def per_device(a, b, f, o0, o1):
        r = jax_distops.fused_reorder_by_indices([a[0], b[0]], 3, dims, rank0_empty_shard=False)
        rows = jax_distops.fused_gather_embeddings_by_input(f[0], [o0[0], o1[0]], dims)
        return [x[None] for x in (*r, *rows)]

    got = _smap(mesh, per_device, (P(AXIS),) * 5, P(AXIS))(*ids, fused, *offsets)

    def loss(f):
        def per_device(f, o0, o1):
            rows = jax_distops.fused_gather_embeddings_by_input(f[0], [o0[0], o1[0]], dims)
            return jax.lax.psum(sum(jnp.sum(r) for r in rows), AXIS)

        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS),) * 3, out_specs=P())(
            f, *offsets
        )

    d_fused = jax.jit(jax.grad(loss))(fused)
    for d in range(D):
        want = (
            *oracle.fused_reorder_by_indices([x[d] for x in ids], 3, dims, rank0_empty=False),
            *oracle.fused_gather_embeddings_by_input(fused[d], [o[d] for o in offsets], dims),
        )
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_array_bits_equal(np.asarray(g)[d], np.asarray(w), f"output {k}, device {d}")
        ones = [np.ones((o.shape[1], k), np.float32) for o, k in zip(offsets, dims)]
        assert_array_bits_equal(
            np.asarray(d_fused)[d],
            oracle.fused_gather_embeddings_by_input_gradient(16, ones, [o[d] for o in offsets],
                                                             dims),
            f"d loss / d fused, device {d}",
        )


# ---------------------------------------------------------------------------------------------
# The embedding lookup of a sync training step, across the devices: every device is a worker
# (its own raw ids) and a parameter-server shard (rows of every table for the ids it owns).
# ---------------------------------------------------------------------------------------------

DIMS = (3, 2)
VOCAB_PER_SHARD = 6


def _lookup_step(tables, ids, num_shards, id_lo):
    """One device's part. tables: M local shards [1, VOCAB_PER_SHARD, dim]; ids: M [1, L_m].

    Shard n owns the ids v with floormod(v, S) = n, i.e. (v - id_lo) mod S = n (id_lo is a
    multiple of S); its table row for v is (v - id_lo) // S.
    """
    S, M = num_shards, len(DIMS)
    ids = [x[0] for x in ids]
    lengths = [int(x.shape[0]) for x in ids]
    N = sum(lengths)
    r = jax_distops.fused_reorder_by_indices(ids, S, DIMS, rank0_empty_shard=False)
    counts = r.sharded_slot_sizes.reshape(S, M)  # ids of table m this device sends to shard n
    dims = jnp.asarray(DIMS, jnp.int32)
    k = jnp.arange(N, dtype=jnp.int32)

    # Route: shard n gets its ids, table by table, in a row of a [S, N] buffer.
    send_start = jnp.cumsum(r.shard_sizes) - r.shard_sizes
    send = jnp.where(
        k[None, :] < r.shard_sizes[:, None],
        r.ids[jnp.minimum(send_start[:, None] + k[None, :], N - 1)],
        id_lo,
    )
    recv = jax.lax.all_to_all(send, AXIS, 0, 0, tiled=True)  # [S, N]: from worker e
    recv_counts = jax.lax.all_to_all(counts, AXIS, 0, 0, tiled=True)  # [S, M]

    # Serve: rows of the local tables, answered per worker in table order, as floats.
    width = N * max(DIMS)
    id_end = jnp.cumsum(recv_counts, axis=1)  # [S, M]
    table = jnp.sum(k[None, :, None] >= id_end[:, None, :], axis=2)  # [S, N]; M when padding
    table_c = jnp.minimum(table, M - 1)
    first = jnp.take_along_axis(id_end - recv_counts, table_c, axis=1)
    float_start = jnp.cumsum(recv_counts * dims, axis=1) - recv_counts * dims
    at = jnp.take_along_axis(float_start, table_c, axis=1) + (k[None, :] - first) * dims[table_c]
    row = (recv - id_lo) // S
    answer = jnp.zeros((S, width), jnp.float32)
    for m, d in enumerate(DIMS):
        cols = at[:, :, None] + jnp.arange(d, dtype=jnp.int32)
        cols = jnp.where((table == m)[:, :, None], cols, width)
        rows = tables[m][0][row]  # [S, N, d]
        answer = answer.at[jnp.arange(S)[:, None, None], cols].set(rows, mode="drop")
    back = jax.lax.all_to_all(answer, AXIS, 0, 0, tiled=True)  # [S, width]: from shard n

    # The fused buffer: shard n's answer at its place in the layout fused_reorder chose.
    shard_floats = jnp.sum(counts * dims, axis=1)
    fused_start = jnp.cumsum(shard_floats) - shard_floats
    t = jnp.arange(width, dtype=jnp.int32)
    where = jnp.where(t[None, :] < shard_floats[:, None], fused_start[:, None] + t[None, :], width)
    fused = jnp.zeros(width, jnp.float32).at[where].set(back, mode="drop")
    offsets = jnp.split(r.fused_embedding_offsets, np.cumsum(lengths)[:-1])
    return jax_distops.fused_gather_embeddings_by_input(fused, offsets, DIMS)


def test_sharded_embedding_lookup_and_its_gradient(mesh):
    S = mesh.size
    rng = np.random.default_rng(5)
    id_lo = -2 * S
    vocab = S * VOCAB_PER_SHARD
    ids = [rng.integers(id_lo, id_lo + vocab, size=(S, n)).astype(np.int64) for n in (9, 6)]
    for x in ids:
        x[:, 1] = x[:, 0]  # a duplicate on every device
    tables = [quarters(rng, (S, VOCAB_PER_SHARD, d)) for d in DIMS]  # [shard, row, dim]
    upstream = [quarters(rng, (S, x.shape[1], d)) for x, d in zip(ids, DIMS)]

    def step(tables, ids):
        return jax.shard_map(
            lambda t, i: [out[None] for out in _lookup_step(t, i, S, id_lo)],
            mesh=mesh,
            in_specs=(P(AXIS), P(AXIS)),
            out_specs=P(AXIS),
        )(tables, ids)

    def loss(tables, ids, gs):
        return sum(jnp.sum(out * g) for out, g in zip(step(tables, ids), gs))

    got = jax.jit(step)(tables, ids)
    got_grads = jax.jit(jax.grad(loss))(tables, ids, upstream)

    want_grads = [np.zeros_like(t) for t in tables]
    for m, x in enumerate(ids):
        owner, row = (x - id_lo) % S, (x - id_lo) // S
        assert_array_bits_equal(got[m], tables[m][owner, row], f"rows of table {m}")
        for e in range(S):
            for j in range(x.shape[1]):
                want_grads[m][owner[e, j], row[e, j]] += upstream[m][e, j]
    for m, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert_array_bits_equal(g, w, f"d loss / d table {m}")
