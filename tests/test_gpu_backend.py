"""jax_distops in a JAX whose default backend is a CUDA GPU, while the ops have CPU kernels only.

Every test here is ``@pytest.mark.gpu``: skipped without a GPU, a failure under
``JAX_DISTOPS_REQUIRE_GPU=1`` (``.ci/gpu``). What a user of a GPU machine must get today:

* an op lowered for the GPU (its operands on the GPU) fails at compile time with a
  ``NotImplementedError`` that names the op and says to run it on CPU -- never an opaque XLA error
  about an unknown custom-call target, and never a crash;
* the same ops placed on the host CPU device (``jax.default_device`` or CPU-committed operands)
  run in the GPU process, forwards and gradients, with the results of the numpy oracle.

When an op gets its CUDA kernel, it leaves ``GPU_LESS_CASES`` for its own GPU tests and joins
``GPU_KERNEL_OPS`` (tests/test_op_coverage.py checks that the two together name every public op).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_distops
import oracle
from testing import assert_array_bits_equal

pytestmark = pytest.mark.gpu

IDS = np.array([5, -3, 9, 11], np.int64)
TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
FLAT = np.arange(10, dtype=np.float32)
INPUT = np.array([9, 5, 9, -3, 11, 5], np.int64)
SPLIT = np.array([2, 0, 1, 2, 0, 1], np.int32)
ROWS = np.arange(12, dtype=np.float32).reshape(6, 2)
OFFSETS = np.array([0, 8, 4, 4, 2, 6], np.int32)

# Ops with a CUDA kernel of their own (none yet).
GPU_KERNEL_OPS = ()

# (op, function of the operands, operands): every other public op, small valid data.
GPU_LESS_CASES = [
    ("fused_reorder_by_indices",
     lambda a, b: tuple(jax_distops.fused_reorder_by_indices([a, b], 4, (2, 3))), (INPUT, IDS)),
    ("split_by_indices", lambda i, t: tuple(jax_distops.split_by_indices(i, t, 3)), (SPLIT, ROWS)),
    ("split_by_indices_gradient",
     lambda i, g: jax_distops.split_by_indices_gradient(i, g, 3), (SPLIT, ROWS)),
    ("reorder_by_indices",
     lambda x, s: tuple(jax_distops.reorder_by_indices(x, s, 3)), (INPUT, SPLIT)),
    ("ragged_split_by_indices",
     lambda i, v, rs: tuple(jax_distops.ragged_split_by_indices(i, jax_distops.Ragged(v, rs), 3)),
     (SPLIT, INPUT, np.array([0, 2, 6], np.int64))),
    ("map_id_to_embedding",
     lambda x, t: jax_distops.map_id_to_embedding([IDS], [t], x), (INPUT, TABLE)),
    ("map_id_to_embedding_gradient_back_prop",
     lambda x, g: tuple(jax_distops.map_id_to_embedding_gradient_back_prop([IDS], x, g)),
     (INPUT, np.ones((6, 3), np.float32))),
    ("gather_embeddings_by_input",
     lambda x, t: tuple(jax_distops.gather_embeddings_by_input(IDS, t, x)), (INPUT, TABLE)),
    ("gather_embeddings_by_ids_gradient_back_prop",
     lambda g, m: jax_distops.gather_embeddings_by_ids_gradient_back_prop(IDS, g, m),
     (np.ones((6, 3), np.float32), np.array([2, 0, 2, 1, 3, 0], np.int32))),
    ("fused_gather_embeddings_by_input",
     lambda f, o: tuple(jax_distops.fused_gather_embeddings_by_input(f, [o], (2,))), (FLAT, OFFSETS)),
    ("fused_gather_embeddings_by_input_gradient",
     lambda g, o: jax_distops.fused_gather_embeddings_by_input_gradient(10, [g], [o], (2,), 0.5),
     (ROWS, OFFSETS)),
]


@pytest.fixture(scope="module")
def devices():
    gpus, cpus = jax.devices("gpu"), jax.devices("cpu")
    assert jax.default_backend() == "gpu", "these tests are about a process whose default is a GPU"
    return gpus[0], cpus[0]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("op, fn, args", GPU_LESS_CASES, ids=[c[0] for c in GPU_LESS_CASES])
def test_op_on_gpu_operands_raises_a_clear_error(devices, op, fn, args, use_jit):
    gpu, _ = devices
    on_gpu = jax.device_put(args, gpu)
    with pytest.raises(NotImplementedError, match=r"jax_distops: \w+ .*(CUDA|cuda).*CPU"):
        jax.block_until_ready((jax.jit(fn) if use_jit else fn)(*on_gpu))


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_ops_placed_on_cpu_run_in_a_gpu_process(devices, use_jit):
    _, cpu = devices
    wrap = jax.jit if use_jit else (lambda f: f)
    with jax.default_device(cpu):
        got = wrap(lambda a, b: jax_distops.fused_reorder_by_indices([a, b], 4, (2, 3)))(INPUT, IDS)
        want = oracle.fused_reorder_by_indices([INPUT, IDS], 4, (2, 3), rank0_empty=False)
        for field, g, w in zip(want._fields, got, want):
            assert g.devices() == {cpu}, field
            assert_array_bits_equal(g, w, f"fused_reorder_by_indices.{field}")
        emb = wrap(lambda x, t: jax_distops.map_id_to_embedding([IDS], [t], x))(INPUT, TABLE)
        assert emb.devices() == {cpu}
        assert_array_bits_equal(emb, oracle.map_id_to_embedding([IDS], [TABLE], INPUT), "map")


def test_gradient_with_cpu_committed_operands_in_a_gpu_process(devices):
    _, cpu = devices
    table, flat = jax.device_put((TABLE, FLAT), cpu)
    x, offsets = jax.device_put((INPUT, OFFSETS), cpu)
    cot = np.linspace(-1.0, 1.0, 6 * 3, dtype=np.float32).reshape(6, 3)

    def loss(table, flat):
        emb = jax_distops.gather_embeddings_by_input(IDS, table, x).output
        (rows,) = jax_distops.fused_gather_embeddings_by_input(flat, [offsets], (2,))
        return jnp.sum(emb * cot) + jnp.sum(rows)

    d_table, d_flat = jax.jit(jax.grad(loss, argnums=(0, 1)))(table, flat)
    assert d_table.devices() == {cpu} and d_flat.devices() == {cpu}
    mapping = oracle.gather_embeddings_by_input(IDS, TABLE, INPUT).index_mapping
    np.testing.assert_array_equal(
        np.asarray(d_table), oracle.gather_embeddings_by_ids_gradient(4, cot, mapping)
    )
    np.testing.assert_array_equal(
        np.asarray(d_flat),
        oracle.fused_gather_embeddings_by_input_gradient(10, [np.ones((6, 2), np.float32)],
                                                         [OFFSETS], (2,)),
    )
