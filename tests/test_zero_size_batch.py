"""Every op under ``jax.vmap`` over an axis of size 0: the kernels get a batch of zero elements.

An empty batch is legal in JAX (e.g. the last, empty, chunk of a dataset mapped with vmap), and
the kernels size their tasks by the batch: they must return empty outputs of the right shapes (the
single-element op's shapes behind a leading 0), not divide by zero. Gradients with respect to an
operand shared by the (empty) batch are zero. Runs eagerly and under jit; multi-threaded paths are
asked for where an op has the switch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_distops

JIT = pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])

IDS = np.array([5, -3, 9, 11], np.int64)
TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
FLAT = np.arange(10, dtype=np.float32)


def _cases():
    """(name, per-element function of the batched operands, batched operands with batch 0)."""
    ids0 = np.zeros((0, 6), np.int64)
    idx0 = np.zeros((0, 6), np.int32)
    rows0 = np.zeros((0, 6, 2), np.float32)
    return [
        (
            "fused_reorder_by_indices",
            lambda a, b: tuple(jax_distops.fused_reorder_by_indices([a, b], 4, (2, 3))),
            (ids0, ids0),
        ),
        (
            "split_by_indices",
            lambda i, t: tuple(jax_distops.split_by_indices(i, t, 3)),
            (idx0, rows0),
        ),
        (
            "split_by_indices_gradient",
            lambda i, g: jax_distops.split_by_indices_gradient(i, g, 3),
            (idx0, rows0),
        ),
        (
            "reorder_by_indices",
            lambda x, s: tuple(jax_distops.reorder_by_indices(x, s, 3)),
            (ids0, idx0),
        ),
        (
            "ragged_split_by_indices",
            lambda i, v, rs: tuple(
                jax_distops.ragged_split_by_indices(i, jax_distops.Ragged(v, rs), 3)
            ),
            (idx0, ids0, np.zeros((0, 3), np.int64)),
        ),
        (
            "map_id_to_embedding",
            lambda x: jax_distops.map_id_to_embedding([IDS], [TABLE], x, use_multi_threads=True),
            (ids0,),
        ),
        (
            "map_id_to_embedding_gradient_back_prop",
            lambda x, g: tuple(jax_distops.map_id_to_embedding_gradient_back_prop([IDS], x, g)),
            (ids0, np.zeros((0, 6, 3), np.float32)),
        ),
        (
            "gather_embeddings_by_input",
            lambda x: tuple(
                jax_distops.gather_embeddings_by_input(IDS, TABLE, x, use_multi_threads=True)
            ),
            (ids0,),
        ),
        (
            "gather_embeddings_by_ids_gradient_back_prop",
            lambda g, m: jax_distops.gather_embeddings_by_ids_gradient_back_prop(IDS, g, m),
            (np.zeros((0, 6, 3), np.float32), ids0),
        ),
        (
            "fused_gather_embeddings_by_input",
            lambda o: tuple(jax_distops.fused_gather_embeddings_by_input(FLAT, [o], (2,))),
            (idx0,),
        ),
        (
            "fused_gather_embeddings_by_input_gradient",
            lambda g, o: jax_distops.fused_gather_embeddings_by_input_gradient(
                10, [g], [o], (2,), 0.5
            ),
            (rows0, idx0),
        ),
    ]


@JIT
@pytest.mark.parametrize("name, fn, args", _cases(), ids=[c[0] for c in _cases()])
def test_empty_batch_outputs(name, fn, args, use_jit):
    batched = jax.vmap(fn)
    got = (jax.jit(batched) if use_jit else batched)(*args)
    # The shapes of one element (with valid data of the element's shapes), behind a leading 0.
    one = jax.eval_shape(fn, *[jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in args])
    got_leaves, one_leaves = jax.tree.leaves(got), jax.tree.leaves(one)
    assert len(got_leaves) == len(one_leaves), name
    for g, o in zip(got_leaves, one_leaves):
        assert g.shape == (0, *o.shape) and g.dtype == o.dtype, (name, g.shape, o.shape)


@JIT
def test_empty_batch_gradients_of_shared_operands_are_zero(use_jit):
    ids0 = np.zeros((0, 6), np.int64)
    idx0 = np.zeros((0, 6), np.int32)

    def losses(table, flat):
        emb = jax.vmap(lambda x: jax_distops.map_id_to_embedding([IDS], [table], x))(ids0)
        gat = jax.vmap(lambda x: jax_distops.gather_embeddings_by_input(IDS, table, x).output)(ids0)
        fus = jax.vmap(lambda o: jax_distops.fused_gather_embeddings_by_input(flat, [o], (2,))[0])(
            idx0
        )
        return jnp.sum(emb) + jnp.sum(gat) + jnp.sum(fus)

    grad = jax.grad(losses, argnums=(0, 1))
    d_table, d_flat = (jax.jit(grad) if use_jit else grad)(TABLE, FLAT)
    np.testing.assert_array_equal(np.asarray(d_table), np.zeros_like(TABLE))
    np.testing.assert_array_equal(np.asarray(d_flat), np.zeros_like(FLAT))
