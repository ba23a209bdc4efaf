"""``jax.grad`` through ``jax.vmap`` with a differentiable operand shared by the batch.

The pattern of a per-example model: ``jax.grad(lambda params: loss(jax.vmap(f, in_axes=(None,
0))(params, batch)))``. The batching rule passes the shared operand to the kernel unbatched, so
its cotangent must be the sum of every batch element's; the expected gradients here are exactly
that sum, of per-element gradients computed by the numpy oracle. Values are small multiples of
1/4, so the sums are exact in any order and compared bit for bit, eagerly and under ``jax.jit``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_distops
import oracle  # tests/oracle.py
from testing import assert_array_bits_equal, quarters  # tests/testing.py

B = 3  # batch size


def _check_grad(loss, args, argnums, want, use_jit):
    grad = jax.grad(loss, argnums=argnums)
    got = (jax.jit(grad) if use_jit else grad)(*args)
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_array_bits_equal(g, np.asarray(w), f"gradient leaf {k}")


JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])


@JIT
def test_map_id_to_embedding_shared_tables(use_jit):
    rng = np.random.default_rng(0)
    ids_list = [np.array([4, -1, 9, 4], np.int64), np.array([7, 2], np.int64)]
    tables = [quarters(rng, (4, 3)), quarters(rng, (2, 3))]
    inputs = rng.choice(np.concatenate(ids_list), size=(B, 5))
    w = quarters(rng, (B, 5, 3))

    def loss(tables):
        out = jax.vmap(lambda x: jax_distops.map_id_to_embedding(ids_list, tables, x))(inputs)
        return jnp.sum(out * w)

    want = oracle.map_id_to_embedding_gradient(ids_list, inputs.reshape(-1), w.reshape(-1, 3))
    _check_grad(loss, (tables,), 0, want, use_jit)


@JIT
def test_map_id_to_embedding_gradient_shared_grads(use_jit):
    rng = np.random.default_rng(1)
    ids_list = [np.array([4, -1, 9], np.int64), np.array([7, 2], np.int64)]
    inputs = rng.choice(np.concatenate(ids_list), size=(B, 5))
    grads = quarters(rng, (5, 2))
    w = [quarters(rng, (B, 3, 2)), quarters(rng, (B, 2, 2))]  # upstream of the table gradients

    def loss(grads):
        outs = jax.vmap(
            lambda x: jax_distops.map_id_to_embedding_gradient_back_prop(ids_list, x, grads)
        )(inputs)
        return sum(jnp.sum(o * u) for o, u in zip(outs, w))

    # The gradient op is linear in grads: its transpose looks the upstream rows up by id.
    want = sum(oracle.map_id_to_embedding(ids_list, [u[b] for u in w], inputs[b]) for b in range(B))
    _check_grad(loss, (grads,), 0, want, use_jit)


@JIT
@pytest.mark.parametrize(
    "dtype", [np.float32, jnp.bfloat16, np.float64], ids=lambda d: np.dtype(d).name
)
def test_gather_embeddings_by_input_shared_embeddings(use_jit, dtype):
    rng = np.random.default_rng(2)
    ids = np.array([30, -4, 8, 30, 1], np.int64)
    embeddings = quarters(rng, (5, 2)).astype(dtype)
    inputs = rng.choice(ids, size=(B, 6))
    w = quarters(rng, (B, 6, 2)).astype(dtype)

    def loss(e):
        out = jax.vmap(lambda x: jax_distops.gather_embeddings_by_input(ids, e, x).output)(inputs)
        return jnp.sum(out * w)

    mapping = oracle.gather_embeddings_by_input(ids, embeddings, inputs.reshape(-1)).index_mapping
    want = oracle.gather_embeddings_by_ids_gradient(len(ids), w.reshape(-1, 2), mapping)
    _check_grad(loss, (embeddings,), 0, want, use_jit)


@JIT
def test_gather_embeddings_by_ids_gradient_shared_grads(use_jit):
    rng = np.random.default_rng(3)
    ids = np.array([30, -4, 8, 1], np.int64)
    mappings = rng.integers(0, len(ids), size=(B, 6))
    grads = quarters(rng, (6, 2))
    w = quarters(rng, (B, len(ids), 2))

    def loss(g):
        per = lambda m: jax_distops.gather_embeddings_by_ids_gradient_back_prop(ids, g, m)
        return jnp.sum(jax.vmap(per)(mappings) * w)

    want = sum(w[b][mappings[b]] for b in range(B))  # its transpose gathers rows by mapping
    _check_grad(loss, (grads,), 0, want, use_jit)


@JIT
def test_fused_gather_shared_buffer(use_jit):
    rng = np.random.default_rng(4)
    dims, size = (3, 1), 10
    fused = quarters(rng, (size,))
    offsets = [
        rng.integers(0, size - d + 1, size=(B, n)).astype(np.int32) for d, n in zip(dims, (4, 5))
    ]
    w = [quarters(rng, (B, o.shape[1], d)) for o, d in zip(offsets, dims)]

    def loss(f):
        outs = jax.vmap(lambda *o: jax_distops.fused_gather_embeddings_by_input(f, list(o), dims))(
            *offsets
        )
        return sum(jnp.sum(out * u) for out, u in zip(outs, w))

    want = sum(
        oracle.fused_gather_embeddings_by_input_gradient(
            size, [u[b] for u in w], [o[b] for o in offsets], dims
        )
        for b in range(B)
    )
    _check_grad(loss, (fused,), 0, want, use_jit)


@JIT
@pytest.mark.parametrize("scale_batched", [False, True], ids=["shared_scale", "batched_scale"])
def test_fused_gather_gradient_shared_grads_and_scale(use_jit, scale_batched):
    rng = np.random.default_rng(5)
    dims, size = (2, 3), 11
    offsets = [
        rng.integers(0, size - d + 1, size=(B, n)).astype(np.int32) for d, n in zip(dims, (3, 4))
    ]
    grads = [quarters(rng, (o.shape[1], d)) for o, d in zip(offsets, dims)]
    w = quarters(rng, (B, size))
    scale = np.array([0.5, 2.0, -1.0], np.float32) if scale_batched else np.float32(0.5)

    def loss(grads, scale):
        def per(s, *o):
            return jax_distops.fused_gather_embeddings_by_input_gradient(
                size, grads, list(o), dims, s
            )

        return jnp.sum(
            jax.vmap(per, in_axes=(0 if scale_batched else None,) + (0,) * 2)(scale, *offsets) * w
        )

    scales = scale if scale_batched else np.full(B, scale, np.float32)
    want_grads = [np.zeros_like(g) for g in grads]
    want_scale = np.zeros(B, np.float32)
    for b in range(B):
        offs_b = [o[b] for o in offsets]
        rows = oracle.fused_gather_embeddings_by_input(w[b], offs_b, dims)  # the transpose in grads
        for m in range(len(dims)):
            want_grads[m] += rows[m] * scales[b]
        unscaled = oracle.fused_gather_embeddings_by_input_gradient(size, grads, offs_b, dims)
        want_scale[b] = np.sum(unscaled * w[b])
    want = (want_grads, want_scale if scale_batched else np.float32(np.sum(want_scale)))
    _check_grad(loss, (grads, scale), (0, 1), want, use_jit)


@JIT
def test_split_by_indices_shared_tensor_and_gradient_grads(use_jit):
    rng = np.random.default_rng(6)
    S = 3
    indices = rng.integers(0, S, size=(B, 6)).astype(np.int32)
    tensor = quarters(rng, (6, 2))
    w = quarters(rng, (B, 6, 2))

    def split_loss(t):
        return jnp.sum(
            jax.vmap(lambda i: jax_distops.split_by_indices(i, t, S).values)(indices) * w
        )

    def gradient_loss(g):
        return jnp.sum(
            jax.vmap(lambda i: jax_distops.split_by_indices_gradient(i, g, S))(indices) * w
        )

    want_split = sum(oracle.split_by_indices_gradient(indices[b], w[b], S) for b in range(B))
    want_gradient = sum(oracle.split_by_indices(indices[b], w[b], S).values for b in range(B))
    _check_grad(split_loss, (tensor,), 0, want_split, use_jit)
    _check_grad(gradient_loss, (tensor,), 0, want_gradient, use_jit)
