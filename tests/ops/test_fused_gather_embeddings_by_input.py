"""Tests for `jax_distops.fused_gather_embeddings_by_input` and
`fused_gather_embeddings_by_input_gradient` (spec section 10 and the "downstream use" of 3.2; the
the op docstrings; DESIGN.md section 2: `scale` applied on every platform, deterministic sums).

Expected values come only from (a) the spec's vectors, transcribed literally below (the 22-float
layout of spec 3.2 case 7, the forward test with offsets repeated 12,345 / 11,777 times, the
gradient test repeated SCALE = 888 times), or (b) the independent numpy oracle in
`tests/oracle.py`, which is itself anchored to the literal vectors by the `test_oracle_*` tests.
Nothing expected is computed by the op under test. The gradient oracle sums in the documented
order (tables ascending, then rows ascending, in float32 -- float64 for float64 -- times scale,
rounded once), so gradients are compared bit for bit.

Battery (STYLE.md rule 10):
  * forward and gradient: every spec vector (forward with the repeats; gradient x888 with the
    spec's rtol and bit-exact vs the oracle), the hand-checked 22-float case, scale != 1;
  * jit and no-jit through `chex.variants` (static arguments are closed over);
  * random inputs vs the oracle for float32 / float64 / bfloat16, int32 / int64 offsets,
    M in {1, 2, 30}, dims 1..64, overlapping offsets (hot rows read many times, tables whose
    gradient regions overlap), empty tables, M = 0, fused_embeddings of rank 0, 2 and 3;
  * a large case (~1e6 floats per direction) for the multi-threaded kernels;
  * vmap vs a Python loop (each argument mapped and unmapped, in_axes != 0, scale mapped, nested);
  * autodiff: `jax.grad` / `jax.vjp` / `jax.jvp` w.r.t. fused_embeddings vs the oracle, the
    gradient w.r.t. scale, a traced scale under jit, `jax.linear_transpose` of both ops (and the
    double transposes), `jax.test_util.check_grads` (fwd + rev, float64, order 2);
  * every documented error: trace-time ValueError / TypeError naming the op and the argument,
    run-time errors for offsets outside the fused buffer (forward and gradient, eager, jit, vmap).

Requires `jax_enable_x64` (enabled globally by tests/conftest.py).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jax_distops

import oracle  # tests/oracle.py, importable through tests/conftest.py
from testing import assert_array_bits_equal, dtype_name, runtime_errors  # tests/testing.py

OP = jax_distops.fused_gather_embeddings_by_input
GRAD_OP = jax_distops.fused_gather_embeddings_by_input_gradient
OP_NAME = "fused_gather_embeddings_by_input"
GRAD_OP_NAME = "fused_gather_embeddings_by_input_gradient"
FLOAT_DTYPES = (np.float32, np.float64, jnp.bfloat16)
OFFSET_DTYPES = (np.int32, np.int64)


# --------------------------------------------------------------------------------------------------
# Literal vectors (spec 3.2 case 7, spec 10.2 and 10.6)
# --------------------------------------------------------------------------------------------------

# The 22-float fused buffer of spec 3.2 case 7 (spec 10.6 `test_fused_gather_embeddings_by_input`).
FUSED_22 = (
    1.1, 1.2, 1.3, 2.1, 2.2, 3.1, 3.2, 3.3, 4.1, 4.2, 4.3,
    5.1, 5.2, 6.1, 6.2, 6.3, 7.1, 7.2, 8.1, 8.2, 9.1, 9.2,
)  # fmt: skip
DIMS_22 = (3, 2)
# Spec 3.2 case 7: table 0 offsets [13,0,5,13,8,13], table 1 [16,18,11,11,16,20,3].
OFFSETS_22 = ((13, 0, 5, 13, 8, 13), (16, 18, 11, 11, 16, 20, 3))
# Spec 10.2 forward hand check: the rows those offsets read.
ROWS_22 = (
    (
        (6.1, 6.2, 6.3), (1.1, 1.2, 1.3), (3.1, 3.2, 3.3),
        (6.1, 6.2, 6.3), (4.1, 4.2, 4.3), (6.1, 6.2, 6.3),
    ),
    ((7.1, 7.2), (8.1, 8.2), (5.1, 5.2), (5.1, 5.2), (7.1, 7.2), (9.1, 9.2), (2.1, 2.2)),
)  # fmt: skip
# Spec 10.6 forward test: table 0's pattern repeated 12,345 times, table 1's 11,777 times
# (387,088 floats of output in total).
FORWARD_REPEATS = (12345, 11777)
# Spec 10.2 gradient hand check. It states g0[1] = [2.1,2.2,2.3], g0[2] = [3.1,3.2,3.3],
# g0[4] = [5.1,5.2,5.3], g1[1] = [2.4,2.5], g1[5] = [6.4,6.5], g1[6] = [7.4,7.5] and the sums
# g0[0]+g0[3]+g0[5] = [11.3,11.6,11.9], g1[2]+g1[3] = [7.8,8.0], g1[0]+g1[4] = [6.8,7.0]; the
# Monolith test's grads follow the pattern g0[j] = j+1 + [.1,.2,.3], g1[j] = j+1 + [.4,.5], which
# fits every stated value and sum (`test_oracle_gradient_matches_literal_vectors` checks that).
GRADS_22 = (
    tuple((j + 1.1, j + 1.2, j + 1.3) for j in range(6)),
    tuple((j + 1.4, j + 1.5) for j in range(7)),
)
# Spec 10.6 `test_fused_gather_embeddings_by_input_gradient`: expected / 888.
GRAD_22 = (
    2.1, 2.2, 2.3, 7.4, 7.5, 3.1, 3.2, 3.3, 5.1, 5.2, 5.3,
    7.8, 8.0, 11.3, 11.6, 11.9, 6.8, 7.0, 2.4, 2.5, 6.4, 6.5,
)  # fmt: skip
SCALE_888 = 888
# Spec 10.2: "The test compares with rtol = 1e-7 * 888 because of float summation order."
RTOL_888 = 1e-7 * SCALE_888


def _fused22(dtype, shape=(22,)) -> np.ndarray:
    return np.array(FUSED_22, dtype=dtype).reshape(shape)


def _offsets22(offset_dtype, repeats=(1, 1)) -> list:
    return [np.tile(np.array(o, offset_dtype), r) for o, r in zip(OFFSETS_22, repeats)]


def _rows22(dtype, repeats=(1, 1)) -> list:
    return [np.tile(np.array(rows, dtype), (r, 1)) for rows, r in zip(ROWS_22, repeats)]


def _grads22(dtype, repeat=1) -> list:
    return [np.tile(np.array(g, dtype), (repeat, 1)) for g in GRADS_22]


def _grad22(dtype, factor=1) -> np.ndarray:
    """The literal expected gradient times `factor`, computed in float64, then cast."""
    return (np.array(GRAD_22, np.float64) * factor).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_outputs_equal(got, want: list, what: str = "out") -> None:
    """The forward returns a list of M arrays; each equal to `want[m]` bit for bit."""
    assert isinstance(got, list), f"{what}: expected a list, got {type(got)}"
    assert len(got) == len(want), f"{what}: {len(got)} outputs, want {len(want)}"
    for m, (g, w) in enumerate(zip(got, want)):
        assert_array_bits_equal(g, w, f"{what}[{m}]")


def _stack_outputs(per_example: list) -> list:
    """Stacks per-example forward outputs (lists of M arrays) along a new leading batch axis."""
    return [np.stack(rows) for rows in zip(*per_example)]


def _random_case(seed: int, num_tables: int, dtype, offset_dtype, shape_kind: str = "flat"):
    """A random fused buffer with M tables of dims in 1..64 (one table empty for every third seed).

    A third of the offsets come from a few hot offsets (the same row read many times, and the
    last valid offset E - dims[m]); the rest are uniform over all valid offsets, so rows overlap
    partially, tables overlap each other and offsets need not be multiples of the dims.

    Returns:
      (fused_embeddings, offsets_list, dims, grads_list) -- grads_list matches the outputs' shapes.
    """
    rng = np.random.default_rng(5000 + seed)
    dims = [int(d) for d in rng.integers(1, 65, size=num_tables)]
    if num_tables:
        dims[0] = 64 if seed % 2 else 1  # both extremes of the dims range occur
    lengths = [int(n) for n in rng.integers(1, 25, size=num_tables)]
    if num_tables > 1 and seed % 3 == 0:
        lengths[int(rng.integers(num_tables))] = 0  # an empty table among non-empty ones
    size = max(dims, default=1) + int(rng.integers(0, 300))
    if shape_kind == "rank2":
        size += size % 2
        shape = (size // 2, 2)
    elif shape_kind == "rank3":
        size = 6 * (size // 6 + 1)
        shape = (2, 3, size // 6)
    else:
        shape = (size,)
    fused = (rng.normal(size=shape) * 4).astype(dtype)
    hot = [0, 1, 7, size]  # size is replaced below by each table's last valid offset
    offsets_list, grads_list = [], []
    for dim, length in zip(dims, lengths):
        last = size - dim
        uniform = rng.integers(0, last + 1, size=length)
        hot_pick = np.array([min(h, last) for h in hot])[rng.integers(0, len(hot), size=length)]
        offsets = np.where(rng.random(length) < 1 / 3, hot_pick, uniform).astype(offset_dtype)
        offsets_list.append(offsets)
        grads_list.append((rng.normal(size=(length, dim)) * 4).astype(dtype))
    return fused, offsets_list, dims, grads_list


def _random_params():
    params = []
    seed = 0
    for num_tables in (1, 2, 30):
        for dtype in FLOAT_DTYPES:
            for offset_dtype in OFFSET_DTYPES:
                params.append(
                    dict(
                        testcase_name=(
                            f"M{num_tables}_{dtype_name(dtype)}_off{dtype_name(offset_dtype)}"
                        ),
                        seed=seed,
                        num_tables=num_tables,
                        dtype=dtype,
                        offset_dtype=offset_dtype,
                    )
                )
                seed += 1
    return params


# Scales used with the random gradient cases (bit-exact vs the oracle): 1, a power of two, a value
# that float32 cannot hold exactly, the spec's 888 and a tiny one.
_SCALES = (1.0, 0.5, 0.1, 888.0, 1e-3)


# Special inputs vs the oracle: (name, fused_embeddings shape, offsets_list, dims). Values are drawn
# per test; offsets are written out.
SPECIAL_CASES = (
    ("no_tables", (5,), [], []),
    ("all_tables_empty", (4,), [np.zeros(0, np.int64), np.zeros(0, np.int64)], [3, 1]),
    ("one_row_many_times", (9,), [np.full(40, 3, np.int32)], [4]),
    # Rows of one table overlap each other partially (0..2, 1..3, 2..4).
    ("overlapping_rows", (6,), [np.array([0, 1, 2, 1, 0, 3], np.int64)], [3]),
    # Two tables with different dims reading the same floats (the A10 race of the original).
    (
        "tables_overlap",
        (10,),
        [np.array([0, 4, 2, 7], np.int32), np.array([1, 0, 5, 1], np.int32)],
        [3, 5],
    ),
    ("whole_buffer_one_row", (7,), [np.array([0, 0], np.int64)], [7]),
    (
        "last_valid_offsets",
        (12,),
        [np.array([11, 0, 11], np.int64), np.array([8], np.int64)],
        [1, 4],
    ),
    ("rank0_buffer", (), [np.array([0, 0, 0], np.int32)], [1]),
    ("rank2_buffer", (11, 2), [np.array(o, np.int32) for o in OFFSETS_22], list(DIMS_22)),
    ("rank3_buffer", (2, 3, 4), [np.array([0, 20, 5], np.int64), np.array([23], np.int64)], [4, 1]),
    ("empty_buffer_no_rows", (0,), [np.zeros(0, np.int32)], [2]),
    (
        "dims_1_to_64",
        (100,),
        [np.array([100 - d, 0, 3], np.int64) for d in range(1, 65)],
        list(range(1, 65)),
    ),
)


def _special_params():
    return [
        dict(testcase_name=name, shape=shape, offsets_list=offs, dims=dims, seed=k)
        for k, (name, shape, offs, dims) in enumerate(SPECIAL_CASES)
    ]


def _special_inputs(shape, offsets_list, dims, seed, dtype=np.float32):
    rng = np.random.default_rng(7000 + seed)
    fused = (rng.normal(size=shape) * 3).astype(dtype)
    grads = [(rng.normal(size=(len(o), d)) * 3).astype(dtype) for o, d in zip(offsets_list, dims)]
    return fused, grads


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


def test_oracle_matches_literal_vectors():
    # Spec 10.2 hand check (one copy of each pattern) and spec 10.6 (the repeats).
    for repeats in ((1, 1), FORWARD_REPEATS):
        got = oracle.fused_gather_embeddings_by_input(
            _fused22(np.float32), _offsets22(np.int32, repeats), DIMS_22
        )
        assert len(got) == 2
        for g, w in zip(got, _rows22(np.float32, repeats)):
            np.testing.assert_array_equal(g, w, strict=True)
    assert sum(g.size for g in got) == 387088  # spec 10.6: "total work 387,088 floats"
    # Hand-worked: a rank-2 buffer is read flattened; rows may overlap; M = 0 gives [].
    got = oracle.fused_gather_embeddings_by_input(
        np.arange(6.0).reshape(2, 3), [np.array([4, 1, 0]), np.array([], np.int64)], [2, 5]
    )
    np.testing.assert_array_equal(got[0], np.array([[4.0, 5], [1, 2], [0, 1]]), strict=True)
    np.testing.assert_array_equal(got[1], np.zeros((0, 5)), strict=True)
    assert oracle.fused_gather_embeddings_by_input(np.arange(3.0), [], []) == []
    with pytest.raises(ValueError):
        oracle.fused_gather_embeddings_by_input(np.arange(6.0), [np.array([5])], [2])
    with pytest.raises(ValueError):
        oracle.fused_gather_embeddings_by_input(np.arange(6.0), [np.array([-1])], [1])


def test_oracle_gradient_matches_literal_vectors():
    # The grads reconstruction matches every row the spec states literally.
    g0, g1 = _grads22(np.float64)
    np.testing.assert_array_equal(
        g0[[1, 2, 4]], [[2.1, 2.2, 2.3], [3.1, 3.2, 3.3], [5.1, 5.2, 5.3]]
    )
    np.testing.assert_array_equal(g1[[1, 5, 6]], [[2.4, 2.5], [6.4, 6.5], [7.4, 7.5]])
    # Spec 10.6, one copy and x888 (spec rtol), in float32 and float64.
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        got = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(dtype), _offsets22(np.int32), DIMS_22
        )
        np.testing.assert_allclose(got, _grad22(np.float64), rtol=rtol, atol=0)
        assert got.dtype == np.dtype(dtype)
        got = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(dtype, SCALE_888), _offsets22(np.int64, (SCALE_888,) * 2), DIMS_22
        )
        np.testing.assert_allclose(got, _grad22(np.float64, SCALE_888), rtol=RTOL_888, atol=0)
        # scale multiplies (DESIGN.md: applied on every platform).
        got = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(dtype), _offsets22(np.int32), DIMS_22, scale=SCALE_888
        )
        np.testing.assert_allclose(got, _grad22(np.float64, SCALE_888), rtol=RTOL_888, atol=0)
    # Hand-worked: the order of accumulation is (table, row) ascending, in float32, rounded once.
    # 1 + 2**-24 + 2**-24 in float32, left to right: each add rounds back to 1 (ties to even).
    tiny = np.float32(2**-24)
    got = oracle.fused_gather_embeddings_by_input_gradient(
        1, [np.array([[1.0]], np.float32), np.array([[tiny], [tiny]], np.float32)],
        [np.array([0]), np.array([0, 0])], [1, 1],
    )
    np.testing.assert_array_equal(got, np.array([1.0], np.float32), strict=True)
    # Same floats with the small ones first: 2**-23 + 1 is exact in float32.
    got = oracle.fused_gather_embeddings_by_input_gradient(
        1, [np.array([[tiny], [tiny]], np.float32), np.array([[1.0]], np.float32)],
        [np.array([0, 0]), np.array([0])], [1, 1],
    )
    np.testing.assert_array_equal(got, np.array([1 + 2**-23], np.float32), strict=True)
    # bfloat16 sums in float32 and rounds once: 1 + 3 * 2**-9 is 1 + 2**-8 + 2**-9 in float32,
    # which rounds up to bfloat16 1 + 2**-7 (ties to even); rounding each add would stay at 1.
    bf = jnp.bfloat16
    got = oracle.fused_gather_embeddings_by_input_gradient(
        1, [np.array([[1.0], [2**-9], [2**-9], [2**-9]], bf)], [np.array([0, 0, 0, 0])], [1]
    )
    np.testing.assert_array_equal(got.astype(np.float64), [1 + 2**-7], strict=True)
    # Untouched entries are 0; M = 0 gives zeros; out of range is refused.
    got = oracle.fused_gather_embeddings_by_input_gradient(
        5, [np.array([[1.0, 2.0]])], [np.array([2])], [2], scale=3.0
    )
    np.testing.assert_array_equal(got, np.array([0.0, 0, 3, 6, 0]), strict=True)
    got = oracle.fused_gather_embeddings_by_input_gradient(3, [], [], [], dtype=np.float32)
    np.testing.assert_array_equal(got, np.zeros(3, np.float32), strict=True)
    with pytest.raises(ValueError):
        oracle.fused_gather_embeddings_by_input_gradient(
            3, [np.zeros((1, 2))], [np.array([2])], [2]
        )


# --------------------------------------------------------------------------------------------------
# Spec vectors on the ops, jit and no-jit
# --------------------------------------------------------------------------------------------------


class FusedGatherVariantsTest(chex.TestCase):
    """Forward and gradient checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_off{dtype_name(o)}", dtype=d, offset_dtype=o)
        for d, o in zip(FLOAT_DTYPES + (np.float32,), OFFSET_DTYPES * 2)
    )
    def test_spec_forward_22_floats(self, dtype, offset_dtype):
        """Spec 10.2 hand check: each offset pattern once (rows are copied bit for bit)."""
        fn = self.variant(lambda x, offs: OP(x, offs, list(DIMS_22)))
        assert_outputs_equal(fn(_fused22(dtype), _offsets22(offset_dtype)), _rows22(dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_off{dtype_name(o)}", dtype=d, offset_dtype=o)
        for d, o in ((np.float32, np.int32), (np.float64, np.int64), (jnp.bfloat16, np.int32))
    )
    def test_spec_forward_repeated(self, dtype, offset_dtype):
        """Spec 10.6 `test_fused_gather_embeddings_by_input`: 12,345 / 11,777 repeats."""
        fn = self.variant(lambda x, offs: OP(x, offs, list(DIMS_22)))
        got = fn(_fused22(dtype), _offsets22(offset_dtype, FORWARD_REPEATS))
        assert_outputs_equal(got, _rows22(dtype, FORWARD_REPEATS))
        assert [g.shape for g in got] == [(6 * 12345, 3), (7 * 11777, 2)]

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_off{dtype_name(o)}", dtype=d, offset_dtype=o)
        for d, o in zip(FLOAT_DTYPES, OFFSET_DTYPES * 2)
    )
    def test_spec_gradient_22_floats(self, dtype, offset_dtype):
        """Spec 10.2 gradient hand check, one copy, default scale: bit-exact vs the oracle and
        close to the literal vector (float32 rounding of 1.1 + 4.1 + 6.1 etc.)."""
        fn = self.variant(lambda g, offs: GRAD_OP(22, g, offs, list(DIMS_22)))
        got = fn(_grads22(dtype), _offsets22(offset_dtype))
        want = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(dtype), _offsets22(offset_dtype), DIMS_22
        )
        assert_array_bits_equal(got, want, "gradient")
        rtol = {np.float32: 1e-6, np.float64: 1e-14, jnp.bfloat16: 1e-2}[dtype]
        np.testing.assert_allclose(
            np.asarray(got, np.float64), _grad22(np.float64), rtol=rtol, atol=0
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_off{dtype_name(o)}", dtype=d, offset_dtype=o)
        for d, o in zip(FLOAT_DTYPES, OFFSET_DTYPES * 2)
    )
    def test_spec_gradient_x888(self, dtype, offset_dtype):
        """Spec 10.6 `test_fused_gather_embeddings_by_input_gradient`: inputs repeated 888 times,
        expected GRAD_22 * 888 within rtol 1e-7 * 888 (float32, as in the spec), static shape 22;
        and bit-exact vs the oracle's fixed summation order."""
        grads = _grads22(dtype, SCALE_888)
        offsets = _offsets22(offset_dtype, (SCALE_888, SCALE_888))
        got = self.variant(lambda g, offs: GRAD_OP(22, g, offs, list(DIMS_22)))(grads, offsets)
        assert got.shape == (22,)
        want = oracle.fused_gather_embeddings_by_input_gradient(22, grads, offsets, DIMS_22)
        assert_array_bits_equal(got, want, "gradient x888")
        rtol = {np.float32: RTOL_888, np.float64: 1e-15 * SCALE_888, jnp.bfloat16: 1e-2}[dtype]
        np.testing.assert_allclose(
            np.asarray(got, np.float64), _grad22(np.float64, SCALE_888), rtol=rtol, atol=0
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_scale{s}", dtype=d, scale=s)
        for d in (np.float32, np.float64)
        for s in (888.0, 3.0, 0.25)
    )
    def test_spec_gradient_scale_applied(self, dtype, scale):
        """DESIGN.md section 2 (spec A9): `scale` multiplies the gradient on every platform."""
        fn = self.variant(lambda g, offs: GRAD_OP(22, g, offs, list(DIMS_22), scale=scale))
        got = fn(_grads22(dtype), _offsets22(np.int64))
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(
            np.asarray(got, np.float64), _grad22(np.float64, scale), rtol=rtol, atol=0
        )
        want = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(dtype), _offsets22(np.int64), DIMS_22, scale=scale
        )
        assert_array_bits_equal(got, want, "scaled gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_forward_vs_oracle(self, seed, num_tables, dtype, offset_dtype):
        fused, offsets, dims, _ = _random_case(seed, num_tables, dtype, offset_dtype)
        got = self.variant(lambda x, o: OP(x, o, dims))(fused, offsets)
        assert_outputs_equal(got, oracle.fused_gather_embeddings_by_input(fused, offsets, dims))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_gradient_vs_oracle(self, seed, num_tables, dtype, offset_dtype):
        fused, offsets, dims, grads = _random_case(seed, num_tables, dtype, offset_dtype)
        size = fused.size
        scale = _SCALES[seed % len(_SCALES)]
        got = self.variant(lambda g, o: GRAD_OP(size, g, o, dims, scale))(grads, offsets)
        want = oracle.fused_gather_embeddings_by_input_gradient(size, grads, offsets, dims, scale)
        assert_array_bits_equal(got, want, "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_special_params())
    def test_special_vs_oracle(self, shape, offsets_list, dims, seed):
        fused, grads = _special_inputs(shape, offsets_list, dims, seed)
        got = self.variant(lambda x, o: OP(x, o, dims))(fused, offsets_list)
        want = oracle.fused_gather_embeddings_by_input(fused, offsets_list, dims)
        assert_outputs_equal(got, want)
        size = fused.size
        got = self.variant(lambda g, o: GRAD_OP(size, g, o, dims, 0.75))(grads, offsets_list)
        want = oracle.fused_gather_embeddings_by_input_gradient(
            size, grads, offsets_list, dims, 0.75, dtype=np.float32
        )
        if offsets_list:
            assert_array_bits_equal(got, want, "gradient")
        else:
            # M == 0: no grads to take a dtype from; the output is [size] zeros.
            np.testing.assert_array_equal(np.asarray(got), np.zeros(size))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_{k}", dtype=d, shape_kind=k)
        for d in FLOAT_DTYPES
        for k in ("flat", "rank2", "rank3")
    )
    def test_grad_vs_oracle(self, dtype, shape_kind):
        """`jax.grad` w.r.t. fused_embeddings = the gradient op (scale 1) on the cotangents,
        reshaped to fused_embeddings' shape."""
        fused, offsets, dims, weights = _random_case(11, 3, dtype, np.int32, shape_kind)

        def loss(x):
            outs = OP(x, offsets, dims)
            return sum(jnp.sum((w * out).astype(jnp.float32)) for w, out in zip(weights, outs))

        got = self.variant(jax.grad(loss))(fused)
        want = oracle.fused_gather_embeddings_by_input_gradient(fused.size, weights, offsets, dims)
        assert_array_bits_equal(got, want.reshape(fused.shape), "grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=name, scale=s, dtype=d)
        for name, s, d in (
            ("python_float_f32", 0.1, np.float32),
            ("python_int_f32", 3, np.float32),
            ("np_float32_f32", np.float32(0.3), np.float32),
            ("np_float64_f32", np.float64(0.3), np.float32),
            ("jnp_float64_f64", jnp.asarray(0.3, jnp.float64), np.float64),
            ("jnp_float32_f64", jnp.asarray(0.3, jnp.float32), np.float64),
            ("python_float_bf16", 0.1, jnp.bfloat16),
        )
    )
    def test_scale_kinds(self, scale, dtype):
        """Python numbers and scalar arrays of any float dtype; the product is taken in the
        accumulation precision (float32 for float32 and bfloat16, float64 for float64)."""
        fused, offsets, dims, grads = _random_case(3, 2, dtype, np.int64)
        got = self.variant(lambda g: GRAD_OP(fused.size, g, offsets, dims, scale))(grads)
        want = oracle.fused_gather_embeddings_by_input_gradient(
            fused.size, grads, offsets, dims, np.asarray(scale)
        )
        assert_array_bits_equal(got, want, "gradient")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("scale", [-2.5, -1.0, 0.0], ids=["minus2.5", "minus1", "zero"])
def test_scale_negative_and_zero(scale, use_jit):
    """Values (not bits: `0 * scale` may be -0.0) equal the oracle; scale 0 zeroes everything."""
    fused, offsets, dims, grads = _random_case(4, 2, np.float32, np.int32)
    fn = lambda g: GRAD_OP(fused.size, g, offsets, dims, scale)  # noqa: E731
    got = np.asarray((jax.jit(fn) if use_jit else fn)(grads))
    want = oracle.fused_gather_embeddings_by_input_gradient(fused.size, grads, offsets, dims, scale)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert (scale == 0) == (not np.any(got))


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_empty_gradient(use_jit):
    """fused_embeddings_size 0 and tables without rows."""
    offsets = [np.zeros(0, np.int64), np.zeros(0, np.int64)]
    grads = [np.zeros((0, 3), np.float64), np.zeros((0, 1), np.float64)]
    for size in (0, 4):
        fn = lambda g, o, size=size: GRAD_OP(size, g, o, [3, 1])  # noqa: E731
        got = (jax.jit(fn) if use_jit else fn)(grads, offsets)
        assert_array_bits_equal(got, np.zeros(size, np.float64), f"size {size}")


def test_no_tables_forward_returns_empty_list():
    """M == 0 -> [] (documented), eager and under jit."""
    x = np.arange(4.0, dtype=np.float32)
    assert OP(x, [], []) == []
    assert jax.jit(lambda v: OP(v, [], []))(x) == []


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_eval_shape(dtype):
    offs = [jax.ShapeDtypeStruct((5,), jnp.int32), jax.ShapeDtypeStruct((0,), jnp.int32)]
    out = jax.eval_shape(
        lambda x, o: OP(x, o, [3, 7]), jax.ShapeDtypeStruct((4, 10), dtype), offs
    )
    dt = np.dtype(dtype)
    assert [(o.shape, o.dtype) for o in out] == [((5, 3), dt), ((0, 7), dt)]
    grads = [jax.ShapeDtypeStruct((5, 3), dtype), jax.ShapeDtypeStruct((0, 7), dtype)]
    out = jax.eval_shape(lambda g, o: GRAD_OP(40, g, o, [3, 7], 0.5), grads, offs)
    assert out.shape == (40,) and out.dtype == np.dtype(dtype)


def test_x64_off_accepts_32_bit_inputs():
    with jax.enable_x64(False):
        got = OP(_fused22(np.float32), _offsets22(np.int32), list(DIMS_22))
        assert_outputs_equal(got, _rows22(np.float32))
        got = GRAD_OP(22, _grads22(np.float32), _offsets22(np.int32), list(DIMS_22), 2.0)
        want = oracle.fused_gather_embeddings_by_input_gradient(
            22, _grads22(np.float32), _offsets22(np.int32), DIMS_22, 2.0
        )
        assert_array_bits_equal(got, want, "gradient")


def test_large_multithreaded_vs_oracle():
    """30 tables, dims 1..64, ~1e6 floats gathered and ~1e6 accumulated into a 2.5e5-float buffer
    (heavily overlapping rows and tables, hot rows): both ops bit-exact vs the oracle, so the
    multi-threaded kernels keep the fixed summation order; a second run gives the same bits."""
    rng = np.random.default_rng(99)
    dims = [int(d) for d in rng.integers(1, 65, size=30)]
    dims[0], dims[1] = 1, 64
    size = 250_000
    offsets, grads = [], []
    for dim in dims:
        length = int(1_000_000 / 30 / dim) + 1
        uniform = rng.integers(0, size - dim + 1, size=length)
        hot = rng.integers(0, 4, size=length) * 16  # offsets 0, 16, 32, 48: shared by all tables
        offsets.append(np.where(rng.random(length) < 0.2, hot, uniform).astype(np.int64))
        grads.append(rng.normal(size=(length, dim)).astype(np.float32))
    fused = rng.normal(size=(size,)).astype(np.float32)
    assert sum(o.shape[0] * d for o, d in zip(offsets, dims)) > 1_000_000

    got = jax.jit(lambda x, o: OP(x, o, dims))(fused, offsets)
    assert_outputs_equal(got, oracle.fused_gather_embeddings_by_input(fused, offsets, dims))

    grad_fn = jax.jit(lambda g, o: GRAD_OP(size, g, o, dims, 0.37))
    got = grad_fn(grads, offsets)
    want = oracle.fused_gather_embeddings_by_input_gradient(size, grads, offsets, dims, 0.37)
    assert_array_bits_equal(got, want, "gradient")
    assert_array_bits_equal(grad_fn(grads, offsets), want, "gradient, second run")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float64], ids=["bfloat16", "float64"])
def test_large_gradient_other_dtypes_vs_oracle(dtype):
    """A large gradient for the dtypes test_large_multithreaded_vs_oracle leaves out:
    bfloat16 (summed in float32 scratch, rounded once) and float64; 1.2e5 overlapping rows of
    dims 1 to 48 at random offsets, bit-exact against the oracle."""
    rng = np.random.default_rng(7)
    dims = [48, 5, 16, 1]
    size = 90_001
    offsets = [rng.integers(0, size - d + 1, size=30_000).astype(np.int32) for d in dims]
    grads = [rng.normal(size=(30_000, d)).astype(dtype) for d in dims]
    got = jax.jit(lambda g, o: GRAD_OP(size, g, o, dims, 1.5))(grads, offsets)
    want = oracle.fused_gather_embeddings_by_input_gradient(size, grads, offsets, dims, 1.5)
    assert_array_bits_equal(got, want, "gradient")


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_VMAP_DIMS = [3, 2]
_VMAP_LENGTHS = (4, 5)
_VMAP_E = 20


def _vmap_data(dtype, offset_dtype, seed):
    """Per-example x[b] ([E]), offsets o0[b] ([4]), o1[b] ([5]), grads g0[b] ([4,3]), g1[b]
    ([5,2]) and scales s[b]; offsets of one example repeat and overlap."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(_B, _VMAP_E)) * 3).astype(dtype)
    o = [
        rng.integers(0, _VMAP_E - d + 1, size=(_B, n)).astype(offset_dtype)
        for d, n in zip(_VMAP_DIMS, _VMAP_LENGTHS)
    ]
    o[0][:, 1] = o[0][:, 0]
    g = [
        (rng.normal(size=(_B, n, d)) * 3).astype(dtype) for d, n in zip(_VMAP_DIMS, _VMAP_LENGTHS)
    ]
    s = np.array([0.5, 0.1, 3.0], np.float32)
    return x, o, g, s


_FWD_VMAP_MODES = (
    "all_axis0",
    "axis1_and_neg1",
    "x_only",
    "offsets_only",
    "mixed_x_offsets1",
    "x_rank2_axis2",
    "all_unbatched_axis_size",
)


def _forward_vmap_setup(mode, x, o):
    """Returns (in_axes, args, per-example (x, offsets_list), axis_size)."""
    every = range(_B)
    if mode == "all_axis0":
        return (0, [0, 0]), (x, o), [(x[b], [o[0][b], o[1][b]]) for b in every], None
    if mode == "axis1_and_neg1":
        args = (x.T, [o[0].T, o[1].T])
        return (1, [1, -1]), args, [(x[b], [o[0][b], o[1][b]]) for b in every], None
    if mode == "x_only":
        return (0, None), (x, [o[0][1], o[1][1]]), [(x[b], [o[0][1], o[1][1]]) for b in every], None
    if mode == "offsets_only":
        return (None, 0), (x[2], o), [(x[2], [o[0][b], o[1][b]]) for b in every], None
    if mode == "mixed_x_offsets1":
        args = (x, [o[0][0], np.moveaxis(o[1], 0, 1)])
        return (0, [None, 1]), args, [(x[b], [o[0][0], o[1][b]]) for b in every], None
    if mode == "x_rank2_axis2":
        xr = x.reshape(_B, _VMAP_E // 2, 2)
        args = (np.moveaxis(xr, 0, 2), [o[0], o[1][0]])
        return (2, [0, None]), args, [(xr[b], [o[0][b], o[1][0]]) for b in every], None
    if mode == "all_unbatched_axis_size":
        return (None, None), (x[0], [o[0][0], o[1][0]]), [(x[0], [o[0][0], o[1][0]])] * _B, _B
    raise AssertionError(mode)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, offset_dtype", [(np.float32, np.int64), (jnp.bfloat16, np.int32)],
    ids=["float32_off64", "bfloat16_off32"],
)
@pytest.mark.parametrize("mode", _FWD_VMAP_MODES)
def test_vmap_forward_matches_loop(mode, dtype, offset_dtype, use_jit):
    x, o, _, _ = _vmap_data(dtype, offset_dtype, seed=1)
    in_axes, args, examples, axis_size = _forward_vmap_setup(mode, x, o)
    batched = jax.vmap(
        lambda v, offs: OP(v, offs, _VMAP_DIMS), in_axes=in_axes, axis_size=axis_size
    )
    if use_jit:
        batched = jax.jit(batched)
    want = _stack_outputs(
        [oracle.fused_gather_embeddings_by_input(v, offs, _VMAP_DIMS) for v, offs in examples]
    )
    assert_outputs_equal(batched(*args), want, "batched forward")


_GRAD_VMAP_MODES = (
    "all_axis0",
    "grads_axis1_neg1",
    "offsets_and_scale",
    "mixed",
    "scale_only",
    "all_unbatched_axis_size",
)


def _gradient_vmap_setup(mode, g, o, s):
    """Returns (in_axes, args, per-example (grads_list, offsets_list, scale), axis_size)."""
    every = range(_B)

    def ex(b_g0, b_g1, b_o0, b_o1, scale):
        return ([g[0][b_g0], g[1][b_g1]], [o[0][b_o0], o[1][b_o1]], scale)

    if mode == "all_axis0":
        return (0, 0, 0), (g, o, s), [ex(b, b, b, b, s[b]) for b in every], None
    if mode == "grads_axis1_neg1":
        args = ([np.moveaxis(g[0], 0, 1), np.moveaxis(g[1], 0, -1)], [o[0][2], o[1][2]], 1.5)
        return ([1, -1], None, None), args, [ex(b, b, 2, 2, 1.5) for b in every], None
    if mode == "offsets_and_scale":
        args = ([g[0][1], g[1][1]], o, s)
        return (None, 0, 0), args, [ex(1, 1, b, b, s[b]) for b in every], None
    if mode == "mixed":
        args = ([g[0], g[1][0]], [o[0][0], np.moveaxis(o[1], 0, 1)], 0.1)
        return ([0, None], [None, 1], None), args, [ex(b, 0, 0, b, 0.1) for b in every], None
    if mode == "scale_only":
        args = ([g[0][0], g[1][0]], [o[0][0], o[1][0]], s)
        return (None, None, 0), args, [ex(0, 0, 0, 0, s[b]) for b in every], None
    if mode == "all_unbatched_axis_size":
        args = ([g[0][0], g[1][0]], [o[0][0], o[1][0]], 2.0)
        return (None, None, None), args, [ex(0, 0, 0, 0, 2.0)] * _B, _B
    raise AssertionError(mode)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, offset_dtype", [(np.float32, np.int32), (np.float64, np.int64)],
    ids=["float32_off32", "float64_off64"],
)
@pytest.mark.parametrize("mode", _GRAD_VMAP_MODES)
def test_vmap_gradient_matches_loop(mode, dtype, offset_dtype, use_jit):
    _, o, g, s = _vmap_data(dtype, offset_dtype, seed=2)
    in_axes, args, examples, axis_size = _gradient_vmap_setup(mode, g, o, s)
    batched = jax.vmap(
        lambda gl, ol, sc: GRAD_OP(_VMAP_E, gl, ol, _VMAP_DIMS, sc),
        in_axes=in_axes,
        axis_size=axis_size,
    )
    if use_jit:
        batched = jax.jit(batched)
    want = np.stack(
        [
            oracle.fused_gather_embeddings_by_input_gradient(_VMAP_E, gl, ol, _VMAP_DIMS, sc)
            for gl, ol, sc in examples
        ]
    )
    assert_array_bits_equal(batched(*args), want, "batched gradient")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap over the offsets (axis 0) and x's axis 1; inner over x's axis 0 with the offsets
    unbatched. Also the gradient op: outer over grads, inner over scale."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 2, 15))  # [inner, outer, E]
    o0 = rng.integers(0, 13, size=(2, 6)).astype(np.int32)  # [outer, L0], dim 3
    o1 = rng.integers(0, 15, size=(2, 4)).astype(np.int32)  # [outer, L1], dim 1
    dims = [3, 1]
    inner = jax.vmap(lambda v, offs: OP(v, offs, dims), in_axes=(0, None))
    batched = jax.vmap(inner, in_axes=(1, 0))
    if use_jit:
        batched = jax.jit(batched)
    want = _stack_outputs(
        [
            _stack_outputs(
                [oracle.fused_gather_embeddings_by_input(x[k, i], [o0[i], o1[i]], dims)
                 for k in range(4)]
            )
            for i in range(2)
        ]
    )
    assert_outputs_equal(batched(x, [o0, o1]), want, "nested vmap")

    g0 = rng.normal(size=(2, 6, 3))
    g1 = rng.normal(size=(2, 4, 1))
    scales = np.array([1.0, 0.3, -0.7])
    inner_g = jax.vmap(lambda gl, ol, sc: GRAD_OP(15, gl, ol, dims, sc), in_axes=(None, None, 0))
    batched_g = jax.vmap(inner_g, in_axes=(0, 0, None))
    if use_jit:
        batched_g = jax.jit(batched_g)
    want = np.stack(
        [
            np.stack(
                [oracle.fused_gather_embeddings_by_input_gradient(
                    15, [g0[i], g1[i]], [o0[i], o1[i]], dims, sc) for sc in scales]
            )
            for i in range(2)
        ]
    )
    got = np.asarray(batched_g([g0, g1], [o0, o1], scales))
    np.testing.assert_array_equal(got, want)  # values: scale -0.7 may turn 0 into -0.0
    assert got.dtype == np.float64


def test_vmap_of_grad_matches_loop():
    """Per-example gradients w.r.t. fused_embeddings with per-example offsets and weights."""
    x, o, g, _ = _vmap_data(np.float64, np.int32, seed=3)

    def loss(v, offs, weights):
        return sum(jnp.sum(w * out) for w, out in zip(weights, OP(v, offs, _VMAP_DIMS)))

    got = jax.jit(jax.vmap(jax.grad(loss)))(x, o, g)
    want = np.stack(
        [
            oracle.fused_gather_embeddings_by_input_gradient(
                _VMAP_E, [g[0][b], g[1][b]], [o[0][b], o[1][b]], _VMAP_DIMS
            )
            for b in range(_B)
        ]
    )
    assert_array_bits_equal(got, want, "per-example grad")


# --------------------------------------------------------------------------------------------------
# Autodiff: vjp, jvp, linear_transpose, check_grads, scale
# --------------------------------------------------------------------------------------------------

# (name, fused_embeddings shape, offsets_list, dims) for the float64 autodiff checks.
_AD_CASES = (
    ("spec22", (22,), [np.array(o, np.int32) for o in OFFSETS_22], list(DIMS_22)),
    (
        "rank2_overlapping_tables",
        (4, 5),
        [np.array([0, 1, 1, 17], np.int64), np.array([2, 3, 0, 16], np.int64)],
        [3, 4],
    ),
    ("empty_table", (6,), [np.zeros(0, np.int32), np.array([0, 5, 2, 2], np.int32)], [2, 1]),
    ("rank0", (), [np.array([0, 0, 0], np.int64)], [1]),
)
_AD_PARAMS = [pytest.param(s, o, d, id=name) for name, s, o, d in _AD_CASES]


def _ad_inputs(shape, offsets_list, dims, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    cts = [rng.normal(size=(len(o), d)) for o, d in zip(offsets_list, dims)]
    return x, cts


@pytest.mark.parametrize("shape, offsets, dims", _AD_PARAMS)
def test_vjp_and_jvp_vs_oracle(shape, offsets, dims):
    x, cts = _ad_inputs(shape, offsets, dims)
    tangent, _ = _ad_inputs(shape, offsets, dims, seed=1)
    f = lambda v: OP(v, offsets, dims)  # noqa: E731

    primal, vjp_fn = jax.vjp(f, x)
    assert_outputs_equal(primal, oracle.fused_gather_embeddings_by_input(x, offsets, dims))
    (ct_x,) = vjp_fn(cts)
    want = oracle.fused_gather_embeddings_by_input_gradient(x.size, cts, offsets, dims)
    assert_array_bits_equal(ct_x, want.reshape(shape), "vjp")

    primal_out, tangent_out = jax.jvp(f, (x,), (tangent,))
    assert_outputs_equal(primal_out, oracle.fused_gather_embeddings_by_input(x, offsets, dims))
    want_t = oracle.fused_gather_embeddings_by_input(tangent, offsets, dims)
    assert_outputs_equal(tangent_out, want_t, "jvp")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("shape, offsets, dims", _AD_PARAMS)
def test_linear_transpose_and_double_transpose(shape, offsets, dims, use_jit):
    x, cts = _ad_inputs(shape, offsets, dims, seed=2)
    size = x.size
    f = lambda v: OP(v, offsets, dims)  # noqa: E731
    f_t = jax.linear_transpose(f, x)
    f_tt = jax.linear_transpose(lambda c: f_t(c)[0], cts)
    # The gradient op is linear in grads for a fixed scale; its transpose is scale * gather.
    g = lambda gl: GRAD_OP(size, gl, offsets, dims, 1.5)  # noqa: E731
    g_t = jax.linear_transpose(g, cts)
    g_tt = jax.linear_transpose(lambda c: g_t(c)[0], np.zeros(size))
    g1 = lambda gl: GRAD_OP(size, gl, offsets, dims)  # noqa: E731
    g1_tt = jax.linear_transpose(lambda c: jax.linear_transpose(g1, cts)(c)[0], np.zeros(size))
    if use_jit:
        f_t, f_tt, g_t, g_tt = jax.jit(f_t), jax.jit(f_tt), jax.jit(g_t), jax.jit(g_tt)
        g1_tt = jax.jit(g1_tt)

    want_grad = oracle.fused_gather_embeddings_by_input_gradient(size, cts, offsets, dims)
    assert_array_bits_equal(f_t(cts)[0], want_grad.reshape(shape), "transpose")
    want_fwd = oracle.fused_gather_embeddings_by_input(x, offsets, dims)
    assert_outputs_equal(f_tt(x)[0], want_fwd, "double transpose")

    flat = x.reshape(-1)
    want_gt = [rows * 1.5 for rows in oracle.fused_gather_embeddings_by_input(flat, offsets, dims)]
    assert_outputs_equal(g_t(flat)[0], want_gt, "transpose of the gradient op")
    # The double transpose of `scale * gather` may apply the scale before the sum (JAX transposes
    # the multiplication first), so with scale != 1 it equals the op up to rounding only...
    want_gtt = oracle.fused_gather_embeddings_by_input_gradient(size, cts, offsets, dims, 1.5)
    got_gtt = g_tt(cts)[0]
    assert got_gtt.shape == want_gtt.shape and got_gtt.dtype == want_gtt.dtype
    np.testing.assert_allclose(got_gtt, want_gtt, rtol=1e-14, atol=1e-300)
    # ... and with scale 1 it is the gradient op again, bit for bit.
    want_g1tt = oracle.fused_gather_embeddings_by_input_gradient(size, cts, offsets, dims)
    assert_array_bits_equal(g1_tt(cts)[0], want_g1tt, "double transpose of the gradient op")


@pytest.mark.parametrize("shape, offsets, dims", _AD_PARAMS)
def test_check_grads(shape, offsets, dims):
    x, cts = _ad_inputs(shape, offsets, dims, seed=3)
    size = x.size
    modes = ("fwd", "rev")
    jax.test_util.check_grads(lambda v: OP(v, offsets, dims), (x,), order=2, modes=modes)
    # A nonlinear function around the op, so second derivatives are not all zero.
    jax.test_util.check_grads(
        lambda v: [jnp.sin(out) * out for out in OP(v * v, offsets, dims)],
        (x,), order=2, modes=modes,
    )
    # The gradient op w.r.t. grads and scale (bilinear: the mixed second derivative is nonzero).
    jax.test_util.check_grads(
        lambda gl, sc: GRAD_OP(size, gl, offsets, dims, sc),
        (cts, np.float64(0.7)),
        order=2,
        modes=modes,
    )


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_grad_wrt_scale(use_jit):
    """d/d scale sum(w * GRAD_OP(..., scale)) = sum(w * GRAD_OP(..., 1)); also jvp in scale."""
    _, offsets, dims, grads = _random_case(21, 3, np.float64, np.int64)
    size = 300
    offsets = [np.minimum(o, size - d) for o, d in zip(offsets, dims)]
    w = np.random.default_rng(0).normal(size=size)

    def f(sc):
        return jnp.sum(w * GRAD_OP(size, grads, offsets, dims, sc))

    grad_f = jax.jit(jax.grad(f)) if use_jit else jax.grad(f)
    unscaled = oracle.fused_gather_embeddings_by_input_gradient(size, grads, offsets, dims)
    np.testing.assert_allclose(float(grad_f(0.7)), np.sum(w * unscaled), rtol=1e-12)
    _, tangent = jax.jvp(lambda sc: GRAD_OP(size, grads, offsets, dims, sc), (0.7,), (2.0,))
    np.testing.assert_allclose(np.asarray(tangent), 2.0 * unscaled, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=dtype_name)
def test_traced_scale_under_jit(dtype):
    """A loss scale computed inside the step (a traced value), one compile for every scale."""
    fused, offsets, dims, grads = _random_case(22, 2, dtype, np.int32)
    traces = []

    @jax.jit
    def step(gl, loss_scale):
        traces.append(1)
        return GRAD_OP(fused.size, gl, offsets, dims, loss_scale * 2)

    for scale in (0.5, 0.05, 444.0):
        got = step(grads, jnp.asarray(scale, dtype))
        want = oracle.fused_gather_embeddings_by_input_gradient(
            fused.size, grads, offsets, dims, dtype(dtype(scale) * 2)
        )
        assert_array_bits_equal(got, want, f"scale {scale}")
    assert len(traces) == 1


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_grad_of_gradient_op(use_jit):
    """d/d grads sum(w * GRAD_OP(grads, scale)) = scale * gather(w) (its transpose)."""
    _, offsets, dims, grads = _random_case(23, 2, np.float64, np.int64)
    size = 300
    offsets = [np.minimum(o, size - d) for o, d in zip(offsets, dims)]
    w = np.random.default_rng(1).normal(size=size)
    fn = jax.grad(lambda gl: jnp.sum(w * GRAD_OP(size, gl, offsets, dims, 0.25)))
    got = (jax.jit(fn) if use_jit else fn)(grads)
    want = [rows * 0.25 for rows in oracle.fused_gather_embeddings_by_input(w, offsets, dims)]
    assert_outputs_equal(got, want, "grad of the gradient op")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _names(op_name: str, *args: str) -> str:
    """Regex: the message starts with the op's name and names (any of) the argument(s)."""
    arg = "|".join(args)
    return rf"(?s)^{op_name}(?!_gradient)\b.*\b({arg})\b"


_X22 = _fused22(np.float32)
_O22 = _offsets22(np.int32)
_G22 = _grads22(np.float32)


def _fwd(use_jit, x, offsets, dims):
    if use_jit:
        return jax.jit(lambda v, o: OP(v, o, dims))(x, offsets)
    return OP(x, offsets, dims)


def _grad(use_jit, size, grads, offsets, dims, scale=1.0):
    if use_jit:
        return jax.jit(lambda g, o, s: GRAD_OP(size, g, o, dims, s))(grads, offsets, scale)
    return GRAD_OP(size, grads, offsets, dims, scale)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "x, offsets, dims, arg",
    [
        (_X22, _O22, [3], ("embedding_dims",)),
        (_X22, _O22, [3, 2, 1], ("embedding_dims",)),
        (_X22, _O22, [3, 0], ("embedding_dims",)),
        (_X22, _O22, [-1, 2], ("embedding_dims",)),
        (_X22, [_O22[0].reshape(2, 3), _O22[1]], [3, 2], ("fused_embedding_offsets",)),
        (_X22, [_O22[0], np.int32(3)], [3, 2], ("fused_embedding_offsets",)),
    ],
    ids=["dims_too_short", "dims_too_long", "dim_zero", "dim_negative", "offsets_2d", "offsets_0d"],
)
def test_forward_error_value(x, offsets, dims, arg, use_jit):
    with pytest.raises(ValueError, match=_names(OP_NAME, *arg)):
        _fwd(use_jit, x, offsets, dims)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "x, offsets, arg",
    [
        (_X22, [_O22[0], _O22[1].astype(np.int64)], "fused_embedding_offsets"),
        (_X22, [_O22[0].astype(np.float32), _O22[1]], "fused_embedding_offsets"),
        (_X22, [o.astype(np.uint32) for o in _O22], "fused_embedding_offsets"),
        (_X22.astype(np.int32), _O22, "fused_embeddings"),
        (_X22.astype(np.float16), _O22, "fused_embeddings"),
        (_X22.astype(np.complex64), _O22, "fused_embeddings"),
    ],
    ids=[
        "mixed_offset_dtypes",
        "offsets_float32",
        "offsets_uint32",
        "embeddings_int32",
        "embeddings_float16",
        "embeddings_complex64",
    ],
)
def test_forward_error_type(x, offsets, arg, use_jit):
    with pytest.raises(TypeError, match=_names(OP_NAME, arg)):
        _fwd(use_jit, x, offsets, [3, 2])


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "size, grads, offsets, dims, scale, arg",
    [
        (22, _G22, _O22, [3], 1.0, ("embedding_dims",)),
        (22, _G22, _O22, [3, 0], 1.0, ("embedding_dims",)),
        (22, _G22, _O22, [3, -2], 1.0, ("embedding_dims",)),
        (22, _G22[:1], _O22, [3, 2], 1.0, ("grads", "embedding_offsets")),
        (22, _G22, [_O22[0].reshape(3, 2), _O22[1]], [3, 2], 1.0, ("embedding_offsets",)),
        (22, [_G22[0][:5], _G22[1]], _O22, [3, 2], 1.0, ("grads",)),
        (22, [_G22[0], _G22[1][:, :1]], _O22, [3, 2], 1.0, ("grads",)),
        (22, [_G22[0].reshape(-1), _G22[1]], _O22, [3, 2], 1.0, ("grads",)),
        (-1, _G22, _O22, [3, 2], 1.0, ("fused_embeddings_size",)),
        (22, _G22, _O22, [3, 2], np.ones(2, np.float32), ("scale",)),
    ],
    ids=[
        "dims_too_short",
        "dim_zero",
        "dim_negative",
        "fewer_grads_than_offsets",
        "offsets_2d",
        "grads_rows_not_L",
        "grads_width_not_dim",
        "grads_1d",
        "size_negative",
        "scale_not_scalar",
    ],
)
def test_gradient_error_value(size, grads, offsets, dims, scale, arg, use_jit):
    with pytest.raises(ValueError, match=_names(GRAD_OP_NAME, *arg)):
        if use_jit:
            jax.jit(lambda g, o: GRAD_OP(size, g, o, dims, scale))(grads, offsets)
        else:
            GRAD_OP(size, grads, offsets, dims, scale)


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: GRAD_OP(22.0, _G22, _O22, [3, 2]), "fused_embeddings_size"),
        (lambda: GRAD_OP("22", _G22, _O22, [3, 2]), "fused_embeddings_size"),
        (lambda: jax.jit(lambda n: GRAD_OP(n, _G22, _O22, [3, 2]))(22), "fused_embeddings_size"),
        (
            lambda: jax.jit(lambda o: GRAD_OP(o[0][0] + 9, _G22, o, [3, 2]))(_O22),
            "fused_embeddings_size",
        ),
        (lambda: GRAD_OP(22, _G22, [_O22[0], _O22[1].astype(np.int64)], [3, 2]),
         "embedding_offsets"),
        (lambda: GRAD_OP(22, _G22, [o.astype(np.float32) for o in _O22], [3, 2]),
         "embedding_offsets"),
        (lambda: GRAD_OP(22, [_G22[0], _G22[1].astype(np.float64)], _O22, [3, 2]), "grads"),
        (lambda: GRAD_OP(22, [g.astype(np.int32) for g in _G22], _O22, [3, 2]), "grads"),
        (lambda: GRAD_OP(22, [g.astype(np.float16) for g in _G22], _O22, [3, 2]), "grads"),
    ],
    ids=[
        "size_float",
        "size_str",
        "size_traced",
        "size_traced_from_data",
        "mixed_offset_dtypes",
        "offsets_float32",
        "mixed_grads_dtypes",
        "grads_int32",
        "grads_float16",
    ],
)
def test_gradient_error_type(call, arg):
    with pytest.raises(TypeError, match=_names(GRAD_OP_NAME, arg)):
        call()


def _assert_runtime_error_names(excinfo, op_name: str, table: int, value: int) -> None:
    """Names the op, its offsets argument with the table (the forward's
    `fused_embedding_offsets[m]`, the gradient's `embedding_offsets[m]`) and the bad value."""
    message = str(excinfo.value)
    assert re.search(rf"\b{op_name}\b", message), message
    arg = "fused_embedding_offsets" if op_name == OP_NAME else "embedding_offsets"
    assert re.search(rf"(?<!_)\b{arg}\[{table}\]", message), f"{arg}[{table}]: {message}"
    assert re.search(rf"(?<![\d-]){re.escape(str(value))}(?![\d.])", message), message


# (name, offsets of table 0, offsets of table 1, bad table, bad value) on the 22-float buffer with
# dims [3, 2]: valid offsets are 0..19 for table 0 and 0..20 for table 1.
_BAD_OFFSETS = (
    ("negative_t1", [13, 0, 5], [16, -1, 11], 1, -1),
    ("past_end_t0", [13, 20, 5], [16, 18, 11], 0, 20),
    ("past_end_t1", [13, 0, 5], [16, 18, 21], 1, 21),
    ("far_past_end_t1", [13, 0, 5], [16, 18, 2**40], 1, 2**40),
    ("int64_min_t0", [-(2**63), 0, 5], [16, 18, 11], 0, -(2**63)),
)
_BAD_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in _BAD_OFFSETS]


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("off0, off1, table, bad", _BAD_PARAMS)
def test_forward_error_offset_out_of_range(off0, off1, table, bad, use_jit):
    offsets = [np.array(off0, np.int64), np.array(off1, np.int64)]
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        jax.block_until_ready(_fwd(use_jit, _X22, offsets, [3, 2]))
    _assert_runtime_error_names(excinfo, OP_NAME, table, bad)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("off0, off1, table, bad", _BAD_PARAMS)
def test_gradient_error_offset_out_of_range(off0, off1, table, bad, use_jit):
    offsets = [np.array(off0, np.int64), np.array(off1, np.int64)]
    grads = [np.ones((3, 3), np.float32), np.ones((3, 2), np.float32)]
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        jax.block_until_ready(_grad(use_jit, 22, grads, offsets, [3, 2]))
    _assert_runtime_error_names(excinfo, GRAD_OP_NAME, table, bad)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_error_offset_out_of_range_rank2_buffer(use_jit):
    """E counts every float of a rank-2 buffer: [4, 5] has 20, so offset 18 with dim 3 is bad and
    offset 17 is the last valid one."""
    x = np.zeros((4, 5), np.float32)
    good = _fwd(use_jit, x, [np.array([17], np.int32)], [3])
    assert_outputs_equal(good, [np.zeros((1, 3), np.float32)])
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        jax.block_until_ready(_fwd(use_jit, x, [np.array([0, 18], np.int32)], [3]))
    _assert_runtime_error_names(excinfo, OP_NAME, 0, 18)


def test_error_offset_out_of_range_under_vmap():
    """A bad offset in one example of a batch fails the batched call (forward and gradient)."""
    offsets = np.array([[0, 5, 19], [0, 20, 1]], np.int32)  # example 1: 20 + 3 > 22
    x = np.zeros((2, 22), np.float32)
    with pytest.raises(runtime_errors(True)) as excinfo:
        fn = jax.jit(jax.vmap(lambda v, o: OP(v, [o], [3])))
        jax.block_until_ready(fn(x, offsets))
    _assert_runtime_error_names(excinfo, OP_NAME, 0, 20)

    grads = np.ones((2, 3, 3), np.float32)
    with pytest.raises(runtime_errors(True)) as excinfo:
        fn = jax.jit(jax.vmap(lambda g, o: GRAD_OP(22, [g], [o], [3])))
        jax.block_until_ready(fn(grads, offsets))
    _assert_runtime_error_names(excinfo, GRAD_OP_NAME, 0, 20)

    # Unbatched offsets, batched grads: the bad offset is seen for every example.
    with pytest.raises(runtime_errors(True)) as excinfo:
        fn = jax.jit(jax.vmap(lambda g: GRAD_OP(22, [g], [offsets[1]], [3])))
        jax.block_until_ready(fn(grads))
    _assert_runtime_error_names(excinfo, GRAD_OP_NAME, 0, 20)


def test_error_gradient_offset_past_size():
    """The gradient checks offsets against fused_embeddings_size (not the forward's buffer)."""
    offsets = [np.array([0, 7], np.int64)]
    grads = [np.ones((2, 3), np.float64)]
    got = GRAD_OP(10, grads, offsets, [3])  # 7 + 3 == 10: the last valid offset
    assert_array_bits_equal(
        got, np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1], np.float64), "gradient at the end"
    )
    with pytest.raises(runtime_errors(True)) as excinfo:
        jax.block_until_ready(jax.jit(lambda g: GRAD_OP(9, g, offsets, [3]))(grads))
    _assert_runtime_error_names(excinfo, GRAD_OP_NAME, 0, 7)
