"""Tests for `jax_distops.split_by_indices` and `split_by_indices_gradient` (spec section 1;
DESIGN.md sections 1-3).

Expected values come only from (a) the spec's hand-worked vectors (section 1.6), transcribed
literally below, plus a few hand-worked vectors of our own, or (b) the independent numpy oracle in
`tests/oracle.py`, which is itself anchored to the literal vectors by
`test_oracle_matches_literal_vectors`. Nothing expected is computed by the op under test.

Battery (STYLE.md rule 10):
  * forward: literal spec vectors and hand-worked cases, every value dtype (float32, float64,
    bfloat16, int32, int64) and both index dtypes, tensors of rank 1-3 and zero-width rows;
  * jit and no-jit through `chex.variants` (static arguments are closed over);
  * random inputs vs the oracle (S in {1, 2, 5, 64}, empty inputs, NaN / -0.0 / inf / extreme
    integers, compared bit for bit: the op only moves rows), plus one large input;
  * `SplitResult.to_list()` (Monolith's list output) and its error under jit;
  * vmap vs a Python loop (every argument mapped and unmapped, in_axes 1 and -1, nested);
  * gradients: `split_by_indices_gradient` directly (spec 1.6 gradient vectors), `jax.grad`,
    `jax.vjp`, `jax.jvp`, grad-of-grad, `jax.linear_transpose` (and its double transpose),
    `jax.test_util.check_grads` in float64 up to order 2, vmap of the gradient;
  * every documented error (trace-time ValueError/TypeError, run-time JaxRuntimeError).

Requires `jax_enable_x64` (enabled globally by tests/conftest.py).
"""

import dataclasses
import functools
import re
from typing import Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jax_distops

import oracle  # tests/oracle.py, importable through tests/conftest.py
from testing import assert_array_bits_equal, dtype_name, runtime_errors  # tests/testing.py

OP = jax_distops.split_by_indices
GRAD_OP = jax_distops.split_by_indices_gradient
FIELDS = ("values", "split_sizes")
INDEX_DTYPES = (np.int32, np.int64)
VALUE_DTYPES = (np.float32, np.float64, jnp.bfloat16, np.int32, np.int64)
FLOAT_DTYPES = (np.float32, np.float64, jnp.bfloat16)


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: inputs, the static-layout outputs and Monolith's list output."""

    name: str
    indices: Tuple[int, ...]
    tensor: tuple  # nested tuples, [N, *E]
    row_shape: Tuple[int, ...]  # E (needed when N == 0 or E contains 0)
    num_splits: int
    values: tuple  # expected `values`, [N, *E]
    split_sizes: Tuple[int, ...]
    pieces: Tuple[tuple, ...]  # Monolith's S outputs, each [c_s, *E]


SPEC_CASES = (
    # Spec 1.2 / 1.6 `test_split_by_indices`: indices = ids mod 3.
    LiteralCase(
        name="spec_test_split_by_indices",
        indices=(0, 1, 2, 2, 0),
        tensor=(0, 1, 2, 2, 3),
        row_shape=(),
        num_splits=3,
        values=(0, 3, 1, 2, 2),
        split_sizes=(2, 1, 2),
        pieces=((0, 3), (1,), (2, 2)),
    ),
    # Spec 1.6 `test_split_by_indices_gradient`, forward part: split 2 is empty, shape [0, 2].
    LiteralCase(
        name="spec_gradient_forward",
        indices=(0, 1, 0),
        tensor=((0, 0), (1, 1), (2, 2)),
        row_shape=(2,),
        num_splits=3,
        values=((0, 0), (2, 2), (1, 1)),
        split_sizes=(2, 1, 0),
        pieces=(((0, 0), (2, 2)), ((1, 1),), ()),
    ),
    # Spec 1.6 `test_split_by_indices_empty_gradient`, forward part: tensor of shape [0].
    LiteralCase(
        name="spec_empty",
        indices=(),
        tensor=(),
        row_shape=(),
        num_splits=3,
        values=(),
        split_sizes=(0, 0, 0),
        pieces=((), (), ()),
    ),
)

EXTRA_CASES = (
    # Splits 0: rows 1, 3; split 1: row 2; split 2: row 0.
    LiteralCase(
        name="reversed_S3",
        indices=(2, 0, 1, 0),
        tensor=(10, 20, 30, 40),
        row_shape=(),
        num_splits=3,
        values=(20, 40, 30, 10),
        split_sizes=(2, 1, 1),
        pieces=((20, 40), (30,), (10,)),
    ),
    LiteralCase(
        name="one_split",
        indices=(0, 0, 0),
        tensor=((3,), (1,), (2,)),
        row_shape=(1,),
        num_splits=1,
        values=((3,), (1,), (2,)),
        split_sizes=(3,),
        pieces=(((3,), (1,), (2,)),),
    ),
    # S=5 with empty splits 1 and 3 and the last split used: split 0 [row 1], 2 [row 3], 4 [0, 2].
    LiteralCase(
        name="empty_middle_splits_S5",
        indices=(4, 0, 4, 2),
        tensor=(1, 2, 3, 4),
        row_shape=(),
        num_splits=5,
        values=(2, 4, 1, 3),
        split_sizes=(1, 0, 1, 0, 2),
        pieces=((2,), (), (4,), (), (1, 3)),
    ),
    LiteralCase(
        name="rank3_tensor",
        indices=(1, 0, 1),
        tensor=(((1, 2), (3, 4)), ((5, 6), (7, 8)), ((9, 10), (11, 12))),
        row_shape=(2, 2),
        num_splits=2,
        values=(((5, 6), (7, 8)), ((1, 2), (3, 4)), ((9, 10), (11, 12))),
        split_sizes=(1, 2),
        pieces=((((5, 6), (7, 8)),), (((1, 2), (3, 4)), ((9, 10), (11, 12)))),
    ),
    LiteralCase(
        name="zero_width_rows",
        indices=(1, 0, 1),
        tensor=((), (), ()),
        row_shape=(0,),
        num_splits=2,
        values=((), (), ()),
        split_sizes=(1, 2),
        pieces=(((),), ((), ())),
    ),
    LiteralCase(
        name="all_in_last_split_S64",
        indices=(63, 63),
        tensor=(5, 6),
        row_shape=(),
        num_splits=64,
        values=(5, 6),
        split_sizes=(0,) * 63 + (2,),
        pieces=((),) * 63 + ((5, 6),),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _arr(data, row_shape, dtype) -> np.ndarray:
    return np.array(data, dtype=dtype).reshape((len(data),) + tuple(row_shape))


def _literal_inputs(case: LiteralCase, index_dtype, dtype):
    return (
        np.array(case.indices, dtype=index_dtype),
        _arr(case.tensor, case.row_shape, dtype),
    )


def _literal_expected(case: LiteralCase, dtype) -> oracle.SplitExpected:
    assert sum(case.split_sizes) == len(case.indices), "transcription error"
    return oracle.SplitExpected(
        values=_arr(case.values, case.row_shape, dtype),
        split_sizes=np.array(case.split_sizes, dtype=np.int32),
    )


def _literal_pieces(case: LiteralCase, dtype) -> list:
    return [_arr(piece, case.row_shape, dtype) for piece in case.pieces]


def _literal_params(cases=LITERAL_CASES):
    """Every case with every value dtype; the index dtype alternates so both are covered."""
    params = []
    for case in cases:
        for k, dtype in enumerate(VALUE_DTYPES):
            index_dtype = INDEX_DTYPES[k % 2]
            params.append(
                dict(
                    testcase_name=f"{case.name}_{dtype_name(dtype)}_idx{dtype_name(index_dtype)}",
                    case=case,
                    index_dtype=index_dtype,
                    dtype=dtype,
                )
            )
    return params


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_result_equal(got, want: oracle.SplitExpected) -> None:
    """Exact equality of both fields with shapes and dtypes (`split_sizes` int32)."""
    assert isinstance(got, jax_distops.SplitResult), type(got)
    assert got._fields == FIELDS
    assert want.split_sizes.dtype == np.int32, "test bug"
    for name in FIELDS:
        assert_array_bits_equal(getattr(got, name), getattr(want, name), name)


def _stack(expected) -> oracle.SplitExpected:
    """Stacks per-example expected results along a new leading batch axis."""
    return oracle.SplitExpected(*[np.stack(fields) for fields in zip(*expected)])


def _random_rows(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    """Random values with the awkward ones mixed in: NaN, +-0.0, +-inf, or the integer extremes."""
    if jnp.issubdtype(dtype, jnp.floating):
        base = rng.normal(size=shape) * 100
        special = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0])
    else:
        info = np.iinfo(dtype)
        base = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        special = np.array([info.min, info.max, 0, -1], dtype=dtype)
    pick = rng.random(size=shape) < 0.15
    values = np.where(pick, special[rng.integers(0, len(special), size=shape)], base)
    return values.astype(dtype)


_ROW_SHAPES = ((), (3,), (2, 3))


def _random_params():
    params = []
    cases = [(s, d) for s in (1, 2, 5, 64) for d in VALUE_DTYPES]
    for seed, (num_splits, dtype) in enumerate(cases):
        index_dtype = INDEX_DTYPES[seed % 2]
        row_shape = _ROW_SHAPES[seed % 3]
        rows = "x".join(map(str, row_shape)) or "scalar"
        name = f"S{num_splits}_{dtype_name(dtype)}_idx{dtype_name(index_dtype)}_E{rows}"
        params.append(
            dict(
                testcase_name=name,
                seed=seed,
                num_splits=num_splits,
                dtype=dtype,
                index_dtype=index_dtype,
                row_shape=row_shape,
            )
        )
    return params


def _random_inputs(seed, num_splits, dtype, index_dtype, row_shape):
    """N in [0, 60] (N = 0 every fifth seed); indices drawn from a random subset of the splits."""
    rng = np.random.default_rng(2000 + seed)
    n = 0 if seed % 5 == 0 else int(rng.integers(1, 61))
    used = rng.choice(num_splits, size=int(rng.integers(1, num_splits + 1)), replace=False)
    indices = used[rng.integers(0, len(used), size=n)].astype(index_dtype)
    tensor = _random_rows(rng, dtype, (n,) + tuple(row_shape))
    return indices, tensor


# Special inputs vs the oracle: (name, indices, tensor, S).
SPECIAL_CASES = (
    ("empty_S64_rows3", np.zeros(0, np.int64), np.zeros((0, 3), np.float32), 64),
    ("empty_S1", np.zeros(0, np.int32), np.zeros((0,), np.int64), 1),
    ("single_row_S64", np.array([37], np.int64), np.array([[1.5, -2.5]], np.float64), 64),
    ("all_split0_S5", np.zeros(20, np.int32), np.arange(20, dtype=np.int32), 5),
    ("descending_S7", np.arange(6, -1, -1, dtype=np.int64), np.arange(7.0, dtype=np.float32), 7),
)


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LITERAL_CASES, ids=lambda c: c.name)
def test_oracle_matches_literal_vectors(case):
    indices, tensor = _literal_inputs(case, np.int64, np.float32)
    got = oracle.split_by_indices(indices, tensor, case.num_splits)
    want = _literal_expected(case, np.float32)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), strict=True)
    pieces = oracle.split_by_indices_list(indices, tensor, case.num_splits)
    assert len(pieces) == case.num_splits
    for got_piece, want_piece in zip(pieces, _literal_pieces(case, np.float32)):
        np.testing.assert_array_equal(got_piece, want_piece, strict=True)


def test_oracle_gradient_matches_literal_vectors():
    # Spec 1.6 `test_split_by_indices_gradient`: upstream ones -> ones.
    got = oracle.split_by_indices_gradient([0, 1, 0], np.ones((3, 2), np.float32), 3)
    np.testing.assert_array_equal(got, np.ones((3, 2), np.float32), strict=True)
    # Spec 1.6 `test_split_by_indices_empty_gradient`.
    got = oracle.split_by_indices_gradient(np.zeros(0, np.int64), np.zeros(0, np.float32), 3)
    np.testing.assert_array_equal(got, np.zeros(0, np.float32), strict=True)
    # Hand-worked (case reversed_S3): rows go 0->3, 1->0, 2->2, 3->1, so g_in = grads[[3,0,2,1]].
    got = oracle.split_by_indices_gradient([2, 0, 1, 0], np.array([10.0, 20, 30, 40]), 3)
    np.testing.assert_array_equal(got, np.array([40.0, 10, 30, 20]), strict=True)


# --------------------------------------------------------------------------------------------------
# Forward, jit and no-jit
# --------------------------------------------------------------------------------------------------


class SplitByIndicesVariantsTest(chex.TestCase):
    """Forward and gradient checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_literal_params())
    def test_literal_vectors(self, case, index_dtype, dtype):
        indices, tensor = _literal_inputs(case, index_dtype, dtype)
        res = self.variant(lambda i, t: OP(i, t, case.num_splits))(indices, tensor)
        assert_result_equal(res, _literal_expected(case, dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, seed, num_splits, dtype, index_dtype, row_shape):
        indices, tensor = _random_inputs(seed, num_splits, dtype, index_dtype, row_shape)
        res = self.variant(functools.partial(OP, num_splits=num_splits))(indices, tensor)
        assert_result_equal(res, oracle.split_by_indices(indices, tensor, num_splits))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=name, indices=i, tensor=t, num_splits=s)
        for name, i, t, s in SPECIAL_CASES
    )
    def test_special_vs_oracle(self, indices, tensor, num_splits):
        res = self.variant(lambda i, t: OP(i, t, num_splits))(indices, tensor)
        assert_result_equal(res, oracle.split_by_indices(indices, tensor, num_splits))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=dtype_name(d), index_dtype=i, dtype=d)
        for i, d in zip((np.int64, np.int32, np.int64), FLOAT_DTYPES)
    )
    def test_gradient_op_spec_vectors(self, index_dtype, dtype):
        """Spec 1.6: the two gradient vectors, on the public gradient op (Monolith's op)."""
        fn = self.variant(lambda i, g: GRAD_OP(i, g, 3))
        got = fn(np.array([0, 1, 0], index_dtype), np.ones((3, 2), dtype))
        assert_array_bits_equal(got, np.ones((3, 2), dtype), "gradient")
        got = fn(np.zeros(0, index_dtype), np.zeros((0,), dtype))
        assert_array_bits_equal(got, np.zeros((0,), dtype), "empty gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        p for p in _literal_params() if jnp.issubdtype(p["dtype"], jnp.floating)
    )
    def test_gradient_op_literal(self, case, index_dtype, dtype):
        """The gradient op inverts the forward permutation: applied to `values`, gives `tensor`."""
        indices, tensor = _literal_inputs(case, index_dtype, dtype)
        got = self.variant(lambda i, g: GRAD_OP(i, g, case.num_splits))(
            indices, _literal_expected(case, dtype).values
        )
        assert_array_bits_equal(got, tensor, "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        p for p in _random_params() if jnp.issubdtype(p["dtype"], jnp.floating)
    )
    def test_gradient_op_random_vs_oracle(self, seed, num_splits, dtype, index_dtype, row_shape):
        indices, grads = _random_inputs(seed, num_splits, dtype, index_dtype, row_shape)
        got = self.variant(lambda i, g: GRAD_OP(i, g, num_splits))(indices, grads)
        want = oracle.split_by_indices_gradient(indices, grads, num_splits)
        assert_array_bits_equal(got, want, "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=dtype_name(d), dtype=d) for d in FLOAT_DTYPES
    )
    def test_grad_spec_vectors(self, dtype):
        """Spec 1.6 through jax.grad: d sum(values) / d tensor = ones (also for N = 0)."""
        def loss(indices, tensor):
            return jnp.sum(OP(indices, tensor, 3).values.astype(jnp.float32))

        grad = self.variant(jax.grad(loss, argnums=1))
        got = grad(np.array([0, 1, 0], np.int64), np.array([[0, 0], [1, 1], [2, 2]], dtype))
        assert_array_bits_equal(got, np.ones((3, 2), dtype), "grad")
        got = grad(np.zeros(0, np.int64), np.zeros((0,), dtype))
        assert_array_bits_equal(got, np.zeros((0,), dtype), "empty grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"S{s}_{dtype_name(d)}", num_splits=s, dtype=d, seed=k)
        for k, (s, d) in enumerate(
            [(1, np.float32), (2, np.float64), (5, jnp.bfloat16), (64, np.float32), (5, np.float64)]
        )
    )
    def test_grad_weighted_vs_oracle(self, num_splits, dtype, seed):
        """d sum(w * values) / d tensor = the inverse permutation of w."""
        indices, tensor = _random_inputs(seed + 1, num_splits, dtype, np.int32, (2,))
        weights = _random_rows(np.random.default_rng(seed), dtype, tensor.shape)
        weights = np.where(np.isfinite(weights.astype(np.float64)), weights, 3).astype(dtype)

        def loss(t):
            return jnp.sum((weights * OP(indices, t, num_splits).values).astype(jnp.float64))

        got = self.variant(jax.grad(loss))(tensor)
        want = oracle.split_by_indices_gradient(indices, weights, num_splits)
        assert_array_bits_equal(got, want, "grad")


# --------------------------------------------------------------------------------------------------
# Result object
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LITERAL_CASES, ids=lambda c: c.name)
def test_to_list_literal(case):
    """`to_list()` gives Monolith's S outputs (spec 1.6: `[[0,3],[1],[2,2]]`; empty split [0,2])."""
    indices, tensor = _literal_inputs(case, np.int64, np.float32)
    pieces = OP(indices, tensor, case.num_splits).to_list()
    assert isinstance(pieces, list), type(pieces)
    want = _literal_pieces(case, np.float32)
    assert len(pieces) == len(want) == case.num_splits
    for s, (got_piece, want_piece) in enumerate(zip(pieces, want)):
        assert_array_bits_equal(got_piece, want_piece, f"split {s}")


@pytest.mark.parametrize(
    "num_splits, dtype, seed",
    [(2, jnp.bfloat16, 1), (5, np.int64, 2), (64, np.float64, 3)],
    ids=["S2_bfloat16", "S5_int64", "S64_float64"],
)
def test_to_list_random_vs_oracle(num_splits, dtype, seed):
    indices, tensor = _random_inputs(seed, num_splits, dtype, np.int64, (3,))
    pieces = jax.jit(lambda i, t: OP(i, t, num_splits))(indices, tensor).to_list()
    want = oracle.split_by_indices_list(indices, tensor, num_splits)
    assert len(pieces) == num_splits
    for s, (got_piece, want_piece) in enumerate(zip(pieces, want)):
        assert_array_bits_equal(got_piece, want_piece, f"split {s}")


def test_to_list_under_jit_raises():
    indices, tensor = np.array([0, 1, 0], np.int32), np.arange(3.0, dtype=np.float32)
    with pytest.raises(ValueError, match="to_list"):
        jax.jit(lambda i, t: OP(i, t, 2).to_list())(indices, tensor)


def test_spec_multithread_workload():
    """Spec 1.6 (`test_map_id_to_embedding_multi_threads`): ids 0..999, indices = ids mod 10, S=10;
    split s holds the ids = s (mod 10) in ascending order, and so do float rows built from them."""
    ids = np.arange(1000, dtype=np.int64)
    rows = (ids[:, None] * 16 + np.arange(16)).astype(np.float32)
    indices = ids % 10
    res = OP(indices, ids, 10)
    want_ids = np.concatenate([np.arange(s, 1000, 10) for s in range(10)])
    assert_result_equal(res, oracle.SplitExpected(want_ids, np.full(10, 100, np.int32)))
    res_rows = jax.jit(lambda i, t: OP(i, t, 10))(indices, rows)
    assert_array_bits_equal(res_rows.values, rows[want_ids], "rows")
    for s, piece in enumerate(res.to_list()):
        assert_array_bits_equal(piece, np.arange(s, 1000, 10, dtype=np.int64), f"split {s}")


@pytest.mark.parametrize("dtype", VALUE_DTYPES, ids=dtype_name)
def test_eval_shape(dtype):
    out = jax.eval_shape(
        lambda i, t: OP(i, t, 7),
        jax.ShapeDtypeStruct((11,), jnp.int32),
        jax.ShapeDtypeStruct((11, 2, 5), dtype),
    )
    assert isinstance(out, jax_distops.SplitResult)
    assert out.values.shape == (11, 2, 5) and out.values.dtype == np.dtype(dtype)
    assert out.split_sizes.shape == (7,) and out.split_sizes.dtype == np.int32


def test_large_vs_oracle():
    """N = 100_000 rows of width 4, S = 64, in one jitted call."""
    rng = np.random.default_rng(77)
    n = 100_000
    indices = rng.integers(0, 64, size=n).astype(np.int64)
    indices[rng.random(n) < 0.3] = 5  # one heavy split
    tensor = _random_rows(rng, np.float32, (n, 4))
    res = jax.jit(lambda i, t: OP(i, t, 64))(indices, tensor)
    assert_result_equal(res, oracle.split_by_indices(indices, tensor, 64))


def test_x64_off_accepts_32_bit_inputs():
    case = SPEC_CASES[0]
    with jax.enable_x64(False):
        indices, tensor = _literal_inputs(case, np.int32, np.float32)
        assert_result_equal(OP(indices, tensor, 3), _literal_expected(case, np.float32))


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_VMAP_MODES = (
    "in_axes_0",
    "in_axes_1",
    "in_axes_1_neg1",
    "batched_unbatched",
    "unbatched_batched",
    "all_unbatched_axis_size",
)


def _vmap_setup(mode, dtype, index_dtype, num_splits, seed=0):
    """Per-example indices i[b] (length 8) and tensors t[b] ([8, 2]); returns (in_axes, args,
    examples, axis_size)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, num_splits, size=(_B, 8)).astype(index_dtype)
    t = _random_rows(rng, dtype, (_B, 8, 2))
    every = range(_B)
    if mode == "in_axes_0":
        return (0, 0), (i, t), [(i[b], t[b]) for b in every], None
    if mode == "in_axes_1":
        return (1, 1), (i.T, np.moveaxis(t, 0, 1)), [(i[b], t[b]) for b in every], None
    if mode == "in_axes_1_neg1":
        return (1, -1), (i.T, np.moveaxis(t, 0, -1)), [(i[b], t[b]) for b in every], None
    if mode == "batched_unbatched":
        return (0, None), (i, t[1]), [(i[b], t[1]) for b in every], None
    if mode == "unbatched_batched":
        return (None, 0), (i[2], t), [(i[2], t[b]) for b in every], None
    if mode == "all_unbatched_axis_size":
        return (None, None), (i[0], t[0]), [(i[0], t[0])] * _B, _B
    raise AssertionError(mode)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, index_dtype, num_splits",
    [(np.float32, np.int64, 3), (np.int64, np.int32, 5)],
    ids=["float32_idx64_S3", "int64_idx32_S5"],
)
@pytest.mark.parametrize("mode", _VMAP_MODES)
def test_vmap_matches_loop(mode, dtype, index_dtype, num_splits, use_jit):
    in_axes, args, examples, axis_size = _vmap_setup(mode, dtype, index_dtype, num_splits)
    batched = jax.vmap(lambda i, t: OP(i, t, num_splits), in_axes=in_axes, axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    res = batched(*args)
    assert_result_equal(res, _stack([oracle.split_by_indices(*ex, num_splits) for ex in examples]))


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("mode", _VMAP_MODES)
def test_vmap_gradient_op_matches_loop(mode, use_jit):
    in_axes, args, examples, axis_size = _vmap_setup(mode, np.float64, np.int32, 4, seed=1)
    batched = jax.vmap(lambda i, g: GRAD_OP(i, g, 4), in_axes=in_axes, axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    want = np.stack([oracle.split_by_indices_gradient(*ex, 4) for ex in examples])
    assert_array_bits_equal(batched(*args), want, "batched gradient")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap over axis 1 of the tensor with indices per outer example; inner vmap over the
    tensor's axis 0 with the indices unbatched."""
    rng = np.random.default_rng(9)
    indices = rng.integers(0, 6, size=(2, 5)).astype(np.int64)  # [outer, n]
    tensor = rng.normal(size=(4, 2, 5, 3)).astype(np.float32)  # [inner, outer, n, e]

    inner = jax.vmap(lambda i, t: OP(i, t, 6), in_axes=(None, 0))
    batched = jax.vmap(inner, in_axes=(0, 1))
    if use_jit:
        batched = jax.jit(batched)
    want = _stack(
        [
            _stack([oracle.split_by_indices(indices[o], tensor[k, o], 6) for k in range(4)])
            for o in range(2)
        ]
    )
    assert_result_equal(batched(indices, tensor), want)


def test_vmap_of_grad_matches_loop():
    """Per-example gradients with per-example indices (integer batched operand under grad)."""
    rng = np.random.default_rng(12)
    indices = rng.integers(0, 5, size=(_B, 9)).astype(np.int32)
    tensor = rng.normal(size=(_B, 9, 2))
    weights = rng.normal(size=(_B, 9, 2))

    def loss(i, t, w):
        return jnp.sum(w * OP(i, t, 5).values)

    got = jax.jit(jax.vmap(jax.grad(loss, argnums=1)))(indices, tensor, weights)
    want = np.stack(
        [oracle.split_by_indices_gradient(indices[b], weights[b], 5) for b in range(_B)]
    )
    assert_array_bits_equal(got, want, "per-example grad")


# --------------------------------------------------------------------------------------------------
# Autodiff: vjp, jvp, grad-of-grad, linear_transpose, check_grads
# --------------------------------------------------------------------------------------------------

# (name, indices, row shape, S) for the float64 autodiff checks.
_AD_CASES = (
    ("S3_rows2", np.array([2, 0, 1, 0, 2, 2], np.int64), (2,), 3),
    ("S1_scalar_rows", np.array([0, 0, 0, 0], np.int32), (), 1),
    ("S5_rows2x3_empty_splits", np.array([4, 4, 0, 2], np.int32), (2, 3), 5),
    ("S64_scalar_rows", np.array([63, 0, 17, 17, 5], np.int64), (), 64),
)
_AD_PARAMS = [pytest.param(i, r, s, id=name) for name, i, r, s in _AD_CASES]


def _ad_inputs(indices, row_shape, seed=0):
    rng = np.random.default_rng(seed)
    shape = (len(indices),) + tuple(row_shape)
    return rng.normal(size=shape), rng.normal(size=shape)


@pytest.mark.parametrize("indices, row_shape, num_splits", _AD_PARAMS)
def test_vjp_and_jvp_vs_oracle(indices, row_shape, num_splits):
    tensor, direction = _ad_inputs(indices, row_shape)
    f = lambda t: OP(indices, t, num_splits).values  # noqa: E731

    primal, vjp_fn = jax.vjp(f, tensor)
    want_primal = oracle.split_by_indices(indices, tensor, num_splits).values
    assert_array_bits_equal(primal, want_primal, "primal")
    (cotangent_in,) = vjp_fn(direction)
    want = oracle.split_by_indices_gradient(indices, direction, num_splits)
    assert_array_bits_equal(cotangent_in, want, "vjp")

    # JVP = the op applied to the tangent; the integer output's tangent is float0.
    primal_out, tangent_out = jax.jvp(lambda t: OP(indices, t, num_splits), (tensor,), (direction,))
    want_tangent = oracle.split_by_indices(indices, direction, num_splits)
    assert_array_bits_equal(tangent_out.values, want_tangent.values, "jvp")
    assert tangent_out.split_sizes.dtype == jax.dtypes.float0
    assert_result_equal(primal_out, oracle.split_by_indices(indices, tensor, num_splits))


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("indices, row_shape, num_splits", _AD_PARAMS)
def test_linear_transpose_and_double_transpose(indices, row_shape, num_splits, use_jit):
    tensor, cotangent = _ad_inputs(indices, row_shape, seed=1)
    f = lambda t: OP(indices, t, num_splits).values  # noqa: E731
    f_t = jax.linear_transpose(f, tensor)
    f_tt = jax.linear_transpose(lambda c: f_t(c)[0], cotangent)
    g = lambda c: GRAD_OP(indices, c, num_splits)  # noqa: E731
    g_t = jax.linear_transpose(g, cotangent)
    if use_jit:
        f_t, f_tt, g_t = jax.jit(f_t), jax.jit(f_tt), jax.jit(g_t)

    want_transpose = oracle.split_by_indices_gradient(indices, cotangent, num_splits)
    assert_array_bits_equal(f_t(cotangent)[0], want_transpose, "transpose")
    want_forward = oracle.split_by_indices(indices, tensor, num_splits).values
    assert_array_bits_equal(f_tt(tensor)[0], want_forward, "double transpose")
    # The gradient op's transpose is the forward op.
    assert_array_bits_equal(g_t(tensor)[0], want_forward, "transpose of the gradient op")


@pytest.mark.parametrize("indices, row_shape, num_splits", _AD_PARAMS)
def test_check_grads(indices, row_shape, num_splits):
    tensor, _ = _ad_inputs(indices, row_shape, seed=2)
    jax.test_util.check_grads(
        lambda t: OP(indices, t, num_splits).values, (tensor,), order=2, modes=("fwd", "rev")
    )
    jax.test_util.check_grads(
        lambda g: GRAD_OP(indices, g, num_splits), (tensor,), order=2, modes=("fwd", "rev")
    )
    # A nonlinear function around the op, so second derivatives are not all zero.
    jax.test_util.check_grads(
        lambda t: jnp.sin(OP(indices, t, num_splits).values) * t[::-1],
        (tensor,),
        order=2,
        modes=("fwd", "rev"),
    )


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("indices, row_shape, num_splits", _AD_PARAMS)
def test_grad_of_grad(indices, row_shape, num_splits, use_jit):
    """f(t) = sum(w * values**2): grad f = 2 * P^T w * t; the Hessian-vector product with v is
    2 * (P^T w) * v, where P^T w = split_by_indices_gradient(indices, w)."""
    tensor, v = _ad_inputs(indices, row_shape, seed=3)
    w, _ = _ad_inputs(indices, row_shape, seed=4)

    def f(t):
        return jnp.sum(w * OP(indices, t, num_splits).values ** 2)

    def hvp(t):
        return jax.grad(lambda x: jnp.sum(v * jax.grad(f)(x)))(t)

    grad_f, hvp_fn = jax.grad(f), hvp
    if use_jit:
        grad_f, hvp_fn = jax.jit(grad_f), jax.jit(hvp_fn)
    pw = oracle.split_by_indices_gradient(indices, w, num_splits)
    np.testing.assert_allclose(np.asarray(grad_f(tensor)), 2 * pw * tensor, rtol=1e-14, atol=0)
    np.testing.assert_allclose(np.asarray(hvp_fn(tensor)), 2 * pw * v, rtol=1e-14, atol=0)
    # Also through the public gradient op: its gradient is the forward op.
    grad_g = jax.grad(lambda c: jnp.sum(w * GRAD_OP(indices, c, num_splits)))(v)
    assert_array_bits_equal(
        grad_g, oracle.split_by_indices(indices, w, num_splits).values, "grad of gradient op"
    )


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _names_op_and(*args: str) -> str:
    """Regex: the message names the op and (any of) the argument(s), in either order."""
    arg = "|".join(args)
    return rf"(?s)(split_by_indices.*\b({arg})\b|\b({arg})\b.*split_by_indices)"


def _call_maybe_jit(use_jit, indices, tensor, num_splits):
    if use_jit:
        return jax.jit(lambda i, t: OP(i, t, num_splits))(indices, tensor)
    return OP(indices, tensor, num_splits)


_I3 = np.array([0, 1, 0], np.int64)
_T3 = np.arange(6.0, dtype=np.float32).reshape(3, 2)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, tensor, num_splits, arg",
    [
        (np.zeros((3, 1), np.int64), _T3, 2, ("indices",)),
        (np.zeros((), np.int64), _T3, 2, ("indices",)),
        (np.zeros(1, np.int64), np.float32(1.0), 2, ("tensor",)),
        (_I3, np.zeros((4, 2), np.float32), 2, ("tensor", "indices")),
        (_I3, np.zeros((2,), np.float32), 2, ("tensor", "indices")),
        (_I3, _T3, 0, ("num_splits",)),
        (_I3, _T3, -1, ("num_splits",)),
    ],
    ids=[
        "indices_2d",
        "indices_0d",
        "tensor_0d",
        "more_rows_than_indices",
        "fewer_rows_than_indices",
        "num_splits_zero",
        "num_splits_negative",
    ],
)
def test_error_value(indices, tensor, num_splits, arg, use_jit):
    with pytest.raises(ValueError, match=_names_op_and(*arg)):
        _call_maybe_jit(use_jit, indices, tensor, num_splits)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, tensor, num_splits, arg",
    [
        (_I3, _T3, 2.0, "num_splits"),
        (_I3, _T3, "2", "num_splits"),
        (_I3.astype(np.float32), _T3, 2, "indices"),
        (_I3.astype(np.uint32), _T3, 2, "indices"),
        (_I3.astype(np.int16), _T3, 2, "indices"),
        (_I3, np.zeros((3, 2), np.bool_), 2, "tensor"),
        (_I3, np.zeros((3, 2), np.complex64), 2, "tensor"),
    ],
    ids=[
        "num_splits_float",
        "num_splits_str",
        "indices_float32",
        "indices_uint32",
        "indices_int16",
        "tensor_bool",
        "tensor_complex64",
    ],
)
def test_error_type(indices, tensor, num_splits, arg, use_jit):
    with pytest.raises(TypeError, match=_names_op_and(arg)):
        _call_maybe_jit(use_jit, indices, tensor, num_splits)


def _assert_runtime_error_names(excinfo, value) -> None:
    message = str(excinfo.value)
    assert "split_by_indices" in message, message
    assert re.search(r"\bindices\b", message), message
    assert re.search(rf"(?<![\d-]){re.escape(str(value))}(?!\d)", message), message


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, bad",
    [
        (np.array([0, -1, 1], np.int32), -1),
        (np.array([0, 1, 3], np.int64), 3),
        (np.array([7, 0, 1], np.int32), 7),
        (np.array([0, 2**40, 1], np.int64), 2**40),
        (np.array([0, -(2**31), 1], np.int32), -(2**31)),
    ],
    ids=["minus_one", "equal_to_S", "seven", "int64_2pow40", "int32_min"],
)
def test_error_index_out_of_range(indices, bad, use_jit):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        res = _call_maybe_jit(use_jit, indices, _T3, 3)
        np.asarray(res.values)
        np.asarray(res.split_sizes)
    _assert_runtime_error_names(excinfo, bad)


def test_error_index_out_of_range_under_vmap():
    """A bad index in one example of a batch fails the batched call too."""
    indices = np.array([[0, 1, 2], [0, 5, 1]], np.int64)
    tensor = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(runtime_errors(True)) as excinfo:
        res = jax.jit(jax.vmap(lambda i, t: OP(i, t, 3)))(indices, tensor)
        np.asarray(res.values)
        np.asarray(res.split_sizes)
    _assert_runtime_error_names(excinfo, 5)
