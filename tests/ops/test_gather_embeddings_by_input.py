"""Tests for `jax_distops.gather_embeddings_by_input` and
`gather_embeddings_by_ids_gradient_back_prop` (spec section 9; DESIGN.md section 2; the documented
contract in the op docstrings).

Expected values come only from (a) the spec's vectors (section 9.6: the op test, the docstring
example, both gradient tests and the benchmark workload), transcribed literally below, plus a few
hand-worked vectors of our own, or (b) the independent numpy oracle in `tests/oracle.py`, which is
itself anchored to the literal vectors by `test_oracle_matches_literal_vectors`. Nothing expected
is computed by the op under test.

Battery (STYLE.md rule 10):
  * forward: literal vectors, every id dtype (int32, int64, uint32, uint64, with negative, extreme
    and >= 2**32 ids), every float dtype (float32, float64, bfloat16), input ranks 0-2, duplicate
    ids (first row wins), empty inputs and empty tables, compared bit for bit (output rows are
    only moved; NaN / -0.0 / inf included) together with `index_mapping` (int64);
  * jit and no-jit through `chex.variants`; use_multi_threads True and False (same bits), also on
    large inputs (the spec's 100,000-id benchmark workload, ~3e5 random lookups);
  * vmap vs a Python loop (each argument mapped / unmapped, in_axes 1 and -1, nested);
  * gradients: the public gradient op (spec vectors, random vs the oracle, bit-exact because the
    summation order is pinned; int32 and int64 index_mapping), `jax.grad`, `jax.vjp`, `jax.jvp`,
    `jax.linear_transpose` (and double transpose) of the op and of the gradient op, grad-of-grad,
    vmap of grad, `jax.test_util.check_grads` in float64 up to order 2;
  * x64 off: 32-bit ids work and `index_mapping` is int32; 64-bit numpy ids raise TypeError;
  * every error of the contract (trace-time ValueError / TypeError naming op and argument, the
    "See unmatched embedding dim" message, run-time "Unable to map id <id>" and index_mapping out
    of range, eager, under jit and under vmap).

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
from testing import (  # tests/testing.py
    assert_array_bits_equal,
    assert_unable_to_map,
    batch_leaf,
    colliding_ids,
    dtype_name,
    id_pool,
    literal_params,
    random_floats,
    rows_array,
    runtime_errors,
    starts_with_op_names,
)

OP = jax_distops.gather_embeddings_by_input
GRAD_OP = jax_distops.gather_embeddings_by_ids_gradient_back_prop
OP_NAME = "gather_embeddings_by_input"
GRAD_NAME = "gather_embeddings_by_ids_gradient_back_prop"
FIELDS = ("output", "index_mapping")
ID_DTYPES = (np.int32, np.int64, np.uint32, np.uint64)
FLOAT_DTYPES = (np.float32, np.float64, jnp.bfloat16)


def assert_result_equal(got, want: oracle.GatherExpected, mapping_dtype=np.int64) -> None:
    """Both fields bit for bit; `index_mapping` is int64 (x64 on) or int32 (x64 off)."""
    assert type(got).__name__ == "GatherResult", type(got)
    assert got._fields == FIELDS, got._fields
    assert_array_bits_equal(got.output, want.output, "output")
    assert want.index_mapping.dtype == np.int64, "test bug"
    assert_array_bits_equal(
        got.index_mapping, want.index_mapping.astype(mapping_dtype), "index_mapping"
    )


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: forward, and the gradient op fed the expected index_mapping."""

    name: str
    ids: tuple
    embeddings: tuple  # nested [M, D]
    width: int  # D (needed when M == 0)
    input: object  # nested tuples / an int
    input_shape: Tuple[int, ...]
    output: object  # expected, [*input_shape, D]
    index_mapping: object  # expected, [*input_shape]
    grads: object  # gradient-op input, [*input_shape, D]
    grads_out: tuple  # expected gradient-op output, [M, D]
    id_dtypes: Tuple[type, ...] = ID_DTYPES


SPEC_CASES = (
    # Spec 9.6 `test_gather_embeddings_by_ids`; the gradient part is hand-worked (row 1 = 1 + 4).
    LiteralCase(
        name="spec_test_gather_embeddings_by_ids",
        ids=(1, 2, 3),
        embeddings=((1, 1), (2, 2), (3, 3)),
        width=2,
        input=((2,), (1,), (2,)),
        input_shape=(3, 1),
        output=(((2, 2),), ((1, 1),), ((2, 2),)),
        index_mapping=((1,), (0,), (1,)),
        grads=(((1, 1),), ((2, 2),), ((4, 4),)),
        grads_out=((2, 2), (5, 5), (0, 0)),
    ),
    # Spec 9.6 docstring example; the gradient part is hand-worked (row 2 = 2 + 8).
    LiteralCase(
        name="spec_docstring",
        ids=(1, 2, 3),
        embeddings=((1, 1), (2, 2), (3, 3)),
        width=2,
        input=(1, 3, 2, 3),
        input_shape=(4,),
        output=((1, 1), (3, 3), (2, 2), (3, 3)),
        index_mapping=(0, 2, 1, 2),
        grads=((1, 1), (2, 2), (4, 4), (8, 8)),
        grads_out=((1, 1), (4, 4), (10, 10)),
    ),
)

EXTRA_CASES = (
    LiteralCase(
        name="duplicates_first_wins_rank2",
        ids=(4, 9, 4, 9, 7),
        embeddings=((1,), (2,), (3,), (4,), (5,)),
        width=1,
        input=((7, 9), (4, 4)),
        input_shape=(2, 2),
        output=(((5,), (2,)), ((1,), (1,))),
        index_mapping=((4, 1), (0, 0)),
        grads=(((1,), (2,)), ((4,), (8,))),
        grads_out=((12,), (2,), (0,), (0,), (1,)),
    ),
    LiteralCase(
        name="rank0_input",
        ids=(10, 20),
        embeddings=((1, 2), (3, 4)),
        width=2,
        input=20,
        input_shape=(),
        output=(3, 4),
        index_mapping=1,
        grads=(0.5, 0.25),
        grads_out=((0, 0), (0.5, 0.25)),
    ),
    LiteralCase(
        name="empty_table_empty_input",
        ids=(),
        embeddings=(),
        width=3,
        input=(),
        input_shape=(0,),
        output=(),
        index_mapping=(),
        grads=(),
        grads_out=(),
    ),
    LiteralCase(
        name="empty_rank2_input",
        ids=(1, 2),
        embeddings=((1,), (2,)),
        width=1,
        input=(),
        input_shape=(2, 0),
        output=(),
        index_mapping=(),
        grads=(),
        grads_out=((0,), (0,)),
    ),
    # 5 and 2**32 + 5 agree in their low 32 bits; int64 extremes.
    LiteralCase(
        name="int64_extremes",
        ids=(2**63 - 1, -(2**63), -1, 2**32 + 5, 5),
        embeddings=((1,), (2,), (3,), (4,), (5,)),
        width=1,
        input=(5, 2**32 + 5, -1, -(2**63), 2**63 - 1),
        input_shape=(5,),
        output=((5,), (4,), (3,), (2,), (1,)),
        index_mapping=(4, 3, 2, 1, 0),
        grads=((1,), (2,), (4,), (8,), (16,)),
        grads_out=((16,), (8,), (4,), (2,), (1,)),
        id_dtypes=(np.int64,),
    ),
    LiteralCase(
        name="uint64_extremes",
        ids=(5, 2**64 - 1, 2**32 + 5, 2**63),
        embeddings=((1,), (2,), (3,), (4,)),
        width=1,
        input=(2**63, 2**32 + 5, 2**64 - 1, 5),
        input_shape=(4,),
        output=((4,), (3,), (2,), (1,)),
        index_mapping=(3, 2, 1, 0),
        grads=((1,), (2,), (4,), (8,)),
        grads_out=((8,), (4,), (2,), (1,)),
        id_dtypes=(np.uint64,),
    ),
    LiteralCase(
        name="int32_extremes",
        ids=(-(2**31), 2**31 - 1, -1),
        embeddings=((1, 2), (3, 4), (5, 6)),
        width=2,
        input=((-1,), (2**31 - 1,)),
        input_shape=(2, 1),
        output=(((5, 6),), ((3, 4),)),
        index_mapping=((2,), (1,)),
        grads=(((1, 2),), ((4, 8),)),
        grads_out=((0, 0), (4, 8), (1, 2)),
        id_dtypes=(np.int32, np.int64),
    ),
    LiteralCase(
        name="uint32_extremes",
        ids=(2**32 - 1, 0, 2**31),
        embeddings=((1,), (2,), (3,)),
        width=1,
        input=(0, 2**31, 2**32 - 1, 2**31),
        input_shape=(4,),
        output=((2,), (3,), (1,), (3,)),
        index_mapping=(1, 2, 0, 2),
        grads=((1,), (2,), (4,), (8,)),
        grads_out=((4,), (1,), (10,)),
        id_dtypes=(np.uint32, np.int64, np.uint64),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _literal_inputs(case: LiteralCase, id_dtype, dtype):
    ids = np.array(case.ids, dtype=id_dtype).reshape(len(case.ids))
    embeddings = rows_array(case.embeddings, case.width, dtype)
    inp = np.array(case.input, dtype=id_dtype).reshape(case.input_shape)
    return ids, embeddings, inp


def _literal_expected(case: LiteralCase, dtype) -> oracle.GatherExpected:
    return oracle.GatherExpected(
        output=np.array(case.output, dtype=dtype).reshape(case.input_shape + (case.width,)),
        index_mapping=np.array(case.index_mapping, dtype=np.int64).reshape(case.input_shape),
    )


def _literal_grads(case: LiteralCase, dtype) -> np.ndarray:
    return np.array(case.grads, dtype=dtype).reshape(case.input_shape + (case.width,))


# --------------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandomCase:
    name: str
    id_dtype: type
    dtype: type
    num_rows: int  # M
    input_shape: Tuple[int, ...]
    width: int
    use_multi_threads: bool
    mapping_dtype: type  # index_mapping dtype fed to the gradient op


_RANDOM_SPECS = (
    # id dtype, float dtype, M, input shape, D
    (np.int32, np.float32, 1, (7,), 1),
    (np.int64, np.float64, 12, (4, 5), 2),
    (np.uint32, jnp.bfloat16, 30, (), 3),
    (np.uint64, np.float32, 8, (6,), 5),
    (np.int64, jnp.bfloat16, 3, (3, 4), 16),
    (np.int32, np.float64, 40, (9,), 1),
    (np.uint64, jnp.bfloat16, 25, (2, 3), 2),
    (np.uint32, np.float64, 2, (), 3),
    (np.int64, np.float32, 50, (25,), 5),
    (np.uint64, np.float64, 6, (), 16),
    (np.int32, jnp.bfloat16, 17, (5, 2), 1),
    (np.uint32, np.float32, 9, (40,), 2),
    (np.int64, np.float32, 5, (0,), 3),
    (np.uint32, np.float64, 0, (2, 0), 2),
)
RANDOM_CASES = tuple(
    RandomCase(
        name=(
            f"{k}_ids{dtype_name(i)}_{dtype_name(d)}_M{m}"
            f"_shape{'x'.join(map(str, shape)) or 'scalar'}_D{w}"
        ),
        id_dtype=i,
        dtype=d,
        num_rows=m,
        input_shape=shape,
        width=w,
        use_multi_threads=bool(k % 2),
        mapping_dtype=(np.int32, np.int64)[(k // 2) % 2],
    )
    for k, (i, d, m, shape, w) in enumerate(_RANDOM_SPECS)
)


def _random_inputs(case: RandomCase, seed: int, special: bool = True):
    """ids drawn with replacement from a pool of distinct ids (duplicates); input drawn from the
    ids, one id heavy."""
    rng = np.random.default_rng(seed)
    pool = id_pool(rng, case.id_dtype, 30)
    ids = pool[rng.integers(0, len(pool), size=case.num_rows)]
    embeddings = random_floats(rng, case.dtype, (case.num_rows, case.width), special)
    n = int(np.prod(case.input_shape, dtype=np.int64))
    if n:
        picks = ids[rng.integers(0, len(ids), size=n)]
        picks[rng.random(n) < 0.3] = ids[-1]
    else:
        picks = np.zeros(0, case.id_dtype)
    return ids, embeddings, picks.astype(case.id_dtype).reshape(case.input_shape)


def _random_params():
    return [dict(testcase_name=c.name, case=c, seed=k) for k, c in enumerate(RANDOM_CASES)]


def _random_gradient_inputs(case: RandomCase, seed: int):
    """Any index_mapping in [0, M) (not only first occurrences), grads over many magnitudes."""
    rng = np.random.default_rng(20_000 + seed)
    if case.num_rows:
        mapping = rng.integers(0, case.num_rows, size=case.input_shape)
        mapping[rng.random(case.input_shape) < 0.3] = case.num_rows - 1
    else:
        mapping = np.zeros(case.input_shape, np.int64)
        assert mapping.size == 0, "test bug"
    grads = random_floats(rng, case.dtype, case.input_shape + (case.width,), special=False)
    return np.asarray(mapping).astype(case.mapping_dtype), grads


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LITERAL_CASES, ids=lambda c: c.name)
def test_oracle_matches_literal_vectors(case):
    for id_dtype in case.id_dtypes:
        ids, embeddings, inp = _literal_inputs(case, id_dtype, np.float32)
        got = oracle.gather_embeddings_by_input(ids, embeddings, inp)
        want = _literal_expected(case, np.float32)
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), strict=True)
        grads = oracle.gather_embeddings_by_ids_gradient(
            len(case.ids), _literal_grads(case, np.float32), want.index_mapping
        )
        np.testing.assert_array_equal(
            grads, rows_array(case.grads_out, case.width, np.float32), strict=True
        )


def test_oracle_gradient_matches_spec_back_prop_vector():
    """Spec 9.6 `test_gather_embeddings_by_ids_gradient_back_prop`."""
    grads = np.array([[1, 1], [2, 2], [4, 4], [8, 8]], np.float32)
    got = oracle.gather_embeddings_by_ids_gradient(3, grads, np.array([1, 0, 1, 2]))
    np.testing.assert_array_equal(got, np.array([[2, 2], [5, 5], [8, 8]], np.float32), strict=True)


def test_oracle_gradient_accumulation():
    """bfloat16: 256 + 1 + 1 is 258 in float32 (256 in bfloat16 steps); float32: ascending order,
    (1e8 + 1) + -1e8 = 0 (1e8 + (1 + -1e8) would be 8)."""
    grads = np.array([[256.0], [1.0], [1.0]], dtype=jnp.bfloat16)
    got = oracle.gather_embeddings_by_ids_gradient(1, grads, np.zeros(3, np.int64))
    np.testing.assert_array_equal(got.astype(np.float32), np.array([[258.0]], np.float32))
    grads = np.array([[1e8], [1.0], [-1e8]], dtype=np.float32)
    got = oracle.gather_embeddings_by_ids_gradient(1, grads, np.zeros(3, np.int64))
    np.testing.assert_array_equal(got, np.array([[0.0]], np.float32), strict=True)


# --------------------------------------------------------------------------------------------------
# Forward and gradient op, jit and no-jit
# --------------------------------------------------------------------------------------------------


class GatherEmbeddingsByInputVariantsTest(chex.TestCase):
    """Forward and gradient checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(literal_params(LITERAL_CASES, FLOAT_DTYPES))
    def test_literal_vectors(self, case, id_dtype, dtype):
        ids, embeddings, inp = _literal_inputs(case, id_dtype, dtype)
        for use_multi_threads in (False, True):
            fn = self.variant(lambda i, e, x: OP(i, e, x, use_multi_threads=use_multi_threads))
            assert_result_equal(fn(ids, embeddings, inp), _literal_expected(case, dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(literal_params(LITERAL_CASES, FLOAT_DTYPES))
    def test_gradient_op_literal_vectors(self, case, id_dtype, dtype):
        ids, _, _ = _literal_inputs(case, id_dtype, dtype)
        mapping = _literal_expected(case, dtype).index_mapping
        want = rows_array(case.grads_out, case.width, dtype)
        for mapping_dtype in (np.int64, np.int32):
            fn = self.variant(GRAD_OP)
            got = fn(ids, _literal_grads(case, dtype), mapping.astype(mapping_dtype))
            what = f"gradient, index_mapping {dtype_name(mapping_dtype)}"
            assert_array_bits_equal(got, want, what)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        p
        for k, p in enumerate(literal_params(LITERAL_CASES, FLOAT_DTYPES))
        if k % len(FLOAT_DTYPES) == (k // 3) % 3
    )
    def test_grad_literal_vectors(self, case, id_dtype, dtype):
        """jax.grad of sum(grads * output) w.r.t. embeddings is the gradient op's output."""
        ids, embeddings, inp = _literal_inputs(case, id_dtype, dtype)
        weights = _literal_grads(case, dtype)

        def loss(e):
            return jnp.sum((weights * OP(ids, e, inp).output).astype(jnp.float32))

        got = self.variant(jax.grad(loss))(embeddings)
        assert_array_bits_equal(got, rows_array(case.grads_out, case.width, dtype), "grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=dtype_name(d), dtype=d, id_dtype=i)
        for d, i in zip(FLOAT_DTYPES, (np.int64, np.uint32, np.int32))
    )
    def test_spec_gradient_vector_through_grad(self, dtype, id_dtype):
        """Spec 9.6 `test_gather_embeddings_by_ids_gradient`: ids [1, 2, 3], input [[1], [2], [1]],
        loss = sum(target - output): grad [[-2, -2], [-1, -1], [0, 0]]."""
        ids = np.array([1, 2, 3], id_dtype)
        embeddings = np.array([[1, 1], [2, 2], [3, 3]], dtype)
        inp = np.array([[1], [2], [1]], id_dtype)
        target = np.ones((3, 1, 2), dtype)

        def loss(e):
            return jnp.sum((target - OP(ids, e, inp).output).astype(jnp.float32))

        got = self.variant(jax.grad(loss))(embeddings)
        assert_array_bits_equal(got, np.array([[-2, -2], [-1, -1], [0, 0]], dtype), "grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"{dtype_name(d)}_mapping{dtype_name(m)}", dtype=d, mapping_dtype=m)
        for d, m in zip(FLOAT_DTYPES, (np.int64, np.int32, np.int64))
    )
    def test_spec_gradient_back_prop_vector(self, dtype, mapping_dtype):
        """Spec 9.6 `test_gather_embeddings_by_ids_gradient_back_prop`: ids [2, 3, 1] (only M
        matters), mapping [1, 0, 1, 2], grads [[1,1],[2,2],[4,4],[8,8]] -> [[2,2],[5,5],[8,8]]."""
        got = self.variant(GRAD_OP)(
            np.array([2, 3, 1], np.int64),
            np.array([[1, 1], [2, 2], [4, 4], [8, 8]], dtype),
            np.array([1, 0, 1, 2], mapping_dtype),
        )
        assert_array_bits_equal(got, np.array([[2, 2], [5, 5], [8, 8]], dtype), "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, case, seed):
        ids, embeddings, inp = _random_inputs(case, seed)
        fn = self.variant(lambda i, e, x: OP(i, e, x, use_multi_threads=case.use_multi_threads))
        want = oracle.gather_embeddings_by_input(ids, embeddings, inp)
        assert_result_equal(fn(ids, embeddings, inp), want)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_gradient_op_random_vs_oracle(self, case, seed):
        ids, _, _ = _random_inputs(case, seed)
        mapping, grads = _random_gradient_inputs(case, seed)
        got = self.variant(GRAD_OP)(ids, grads, mapping)
        want = oracle.gather_embeddings_by_ids_gradient(case.num_rows, grads, mapping)
        assert_array_bits_equal(got, want, "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=c.name, case=c, seed=k) for k, c in enumerate(RANDOM_CASES) if k % 3 == 0
    )
    def test_grad_random_vs_oracle(self, case, seed):
        """jax.grad of sum(w * output): the gradient op applied to w and the forward mapping."""
        ids, embeddings, inp = _random_inputs(case, seed, special=False)
        _, weights = _random_gradient_inputs(case, seed)

        def loss(e):
            out = OP(ids, e, inp, use_multi_threads=case.use_multi_threads).output
            return jnp.sum((weights * out).astype(jnp.float64))

        got = self.variant(jax.grad(loss))(embeddings)
        mapping = oracle.gather_embeddings_by_input(ids, embeddings, inp).index_mapping
        want = oracle.gather_embeddings_by_ids_gradient(case.num_rows, weights, mapping)
        assert_array_bits_equal(got, want, "grad")


def _benchmark_workload(n, width, num_cols, distinct_rows):
    """Spec 9.6 benchmark: ids 0..n-1, input[x] = [(x + k) mod n for k < num_cols] (n = 100,000
    in the spec)."""
    ids = np.arange(n, dtype=np.int64)
    if distinct_rows:  # row j = [j, j, ...] (exact in float32), so a wrong row would show
        embeddings = np.repeat(ids.astype(np.float32)[:, None], width, axis=1)
    else:  # the benchmark's all-ones embeddings
        embeddings = np.ones((n, width), np.float32)
    inp = (ids[:, None] + np.arange(num_cols)[None, :]) % n
    return ids, embeddings, inp


@pytest.mark.parametrize("use_multi_threads", [False, True], ids=["st", "mt"])
@pytest.mark.parametrize(
    "n, width, num_cols, distinct_rows",
    # D = 256 at a tenth of the spec's 100,000 ids: the full size writes 200 MB per call.
    [(100_000, 32, 4, False), (10_000, 256, 2, False), (100_000, 32, 4, True)],
    ids=["D32_ones", "D256_ones_reduced", "D32_distinct_rows"],
)
def test_spec_benchmark_workload(n, width, num_cols, distinct_rows, use_multi_threads):
    """The expected values follow from the construction: ids are 0..n-1 in order, so the mapping
    of id v is v and the output row is embeddings[v]."""
    ids, embeddings, inp = _benchmark_workload(n, width, num_cols, distinct_rows)
    res = jax.jit(functools.partial(OP, use_multi_threads=use_multi_threads))(ids, embeddings, inp)
    if distinct_rows:
        want_output = np.repeat(inp.astype(np.float32)[:, :, None], width, axis=2)
    else:
        want_output = np.ones(inp.shape + (width,), np.float32)
    assert_result_equal(res, oracle.GatherExpected(want_output, inp.astype(np.int64)))


_LARGE_SHAPE = (600, 500)  # ~3e5 lookups


@functools.lru_cache(maxsize=None)
def _large_case():
    rng = np.random.default_rng(41)
    pool = id_pool(rng, np.uint64, 30_000)
    ids = pool[rng.integers(0, len(pool), size=40_000)]
    embeddings = random_floats(rng, np.float32, (40_000, 4), special=True)
    inp = ids[rng.integers(0, len(ids), size=_LARGE_SHAPE)]
    inp[rng.random(_LARGE_SHAPE) < 0.2] = ids[7]  # one heavy id
    return ids, embeddings, inp, oracle.gather_embeddings_by_input(ids, embeddings, inp)


@pytest.mark.parametrize("use_multi_threads", [False, True], ids=["st", "mt"])
def test_ids_of_one_hash_group_vs_oracle(use_multi_threads):
    """Ids whose hashes share their top 40 bits (testing.colliding_ids), some twice (the first row
    wins): one chain of full groups, every tag matching, in the kernel's join index."""
    rng = np.random.default_rng(24)
    crowd = colliding_ids(rng, 300, None)
    ids = np.concatenate([crowd, crowd[:40]])
    embeddings = random_floats(rng, np.float32, (len(ids), 5), special=False)
    inp = ids[rng.integers(0, len(ids), size=(30, 70))]
    got = jax.jit(functools.partial(OP, use_multi_threads=use_multi_threads))(ids, embeddings, inp)
    assert_result_equal(got, oracle.gather_embeddings_by_input(ids, embeddings, inp))


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("use_multi_threads", [False, True], ids=["st", "mt"])
def test_large_vs_oracle(use_multi_threads, use_jit):
    ids, embeddings, inp, want = _large_case()
    fn = functools.partial(OP, use_multi_threads=use_multi_threads)
    if use_jit:
        fn = jax.jit(fn)
    assert_result_equal(fn(ids, embeddings, inp), want)


def test_large_gradient_vs_oracle():
    """~3e5 gradient rows, 20% of them onto one row: the fixed ascending summation order, through
    the gradient op and through jax.vjp."""
    ids, embeddings, inp, want_fwd = _large_case()
    grads = random_floats(np.random.default_rng(42), np.float32, inp.shape + (4,), special=False)
    want = oracle.gather_embeddings_by_ids_gradient(len(ids), grads, want_fwd.index_mapping)
    got = jax.jit(GRAD_OP)(ids, grads, want_fwd.index_mapping)
    assert_array_bits_equal(got, want, "gradient op")
    _, vjp_fn = jax.vjp(lambda e: OP(ids, e, inp, use_multi_threads=True).output, embeddings)
    assert_array_bits_equal(vjp_fn(grads)[0], want, "vjp")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float32], ids=dtype_name)
def test_gradient_heavy_duplicates_vs_oracle(dtype):
    """20,000 gradient rows onto 5 rows: bfloat16 must sum in float32 and round once; float32
    must sum in ascending order (wide magnitudes make every other order differ in the bits)."""
    rng = np.random.default_rng(6)
    mapping = rng.integers(0, 5, size=(100, 200))
    grads = random_floats(rng, dtype, (100, 200, 3), special=False)
    want = oracle.gather_embeddings_by_ids_gradient(5, grads, mapping)
    assert_array_bits_equal(GRAD_OP(np.arange(5, dtype=np.int32), grads, mapping), want, "grad")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_eval_shape(dtype):
    out = jax.eval_shape(
        OP,
        jax.ShapeDtypeStruct((4,), jnp.uint32),
        jax.ShapeDtypeStruct((4, 6), dtype),
        jax.ShapeDtypeStruct((2, 3, 5), jnp.uint32),
    )
    assert type(out).__name__ == "GatherResult" and out._fields == FIELDS
    assert out.output.shape == (2, 3, 5, 6) and out.output.dtype == np.dtype(dtype)
    assert out.index_mapping.shape == (2, 3, 5) and out.index_mapping.dtype == np.int64
    grads = jax.eval_shape(
        GRAD_OP,
        jax.ShapeDtypeStruct((4,), jnp.int64),
        jax.ShapeDtypeStruct((7, 6), dtype),
        jax.ShapeDtypeStruct((7,), jnp.int32),
    )
    assert grads.shape == (4, 6) and grads.dtype == np.dtype(dtype)


# --------------------------------------------------------------------------------------------------
# x64 off
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_dtype", [np.int32, np.uint32], ids=dtype_name)
def test_x64_off_32_bit_ids_and_int32_mapping(id_dtype):
    case = EXTRA_CASES[0]  # duplicates_first_wins_rank2
    want = _literal_expected(case, np.float32)
    want_grad = rows_array(case.grads_out, case.width, np.float32)
    with jax.enable_x64(False):
        ids, embeddings, inp = _literal_inputs(case, id_dtype, np.float32)
        for fn in (OP, jax.jit(OP)):
            assert_result_equal(fn(ids, embeddings, inp), want, mapping_dtype=np.int32)
        grads = _literal_grads(case, np.float32)
        got = GRAD_OP(ids, grads, want.index_mapping.astype(np.int32))
        assert_array_bits_equal(got, want_grad, "gradient op")
        got = jax.grad(lambda e: jnp.sum(grads * OP(ids, e, inp).output))(embeddings)
        assert_array_bits_equal(got, want_grad, "grad")
        out = jax.eval_shape(OP, ids, embeddings, inp)
        assert out.index_mapping.dtype == np.int32


@pytest.mark.parametrize("id_dtype", [np.int64, np.uint64], ids=dtype_name)
def test_x64_off_rejects_64_bit_numpy_ids(id_dtype):
    """JAX would silently truncate 2**32 + 1 to 1 with x64 off; the op refuses 64-bit numpy ids."""
    ids, inp = np.array([1, 2**32 + 1], id_dtype), np.array([2**32 + 1], id_dtype)
    embeddings = np.zeros((2, 2), np.float32)
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=starts_with_op_names(OP_NAME, "ids", "input")):
            OP(ids, embeddings, inp)
        with pytest.raises(TypeError, match=r"(?s).*(x64|64-bit|64 bit)"):
            OP(ids, embeddings, inp)


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_VMAP_M = 14
_VMAP_INPUT = (6, 5)  # per-example input shape (more rows than the kernels prefetch ahead)
_VMAP_D = 3

# name -> (ids axis, embeddings axis, input axis, axis_size)
_VMAP_MODES = {
    "all_axis0": (0, 0, 0, None),
    "input_axis0": (None, None, 0, None),
    "input_axis1": (None, None, 1, None),
    "embeddings_axis1_input_axis_neg1": (None, 1, -1, None),
    "ids_and_embeddings_axis0": (0, 0, None, None),
    "ids_axis_neg1_embeddings_axis2_input_axis1": (-1, 2, 1, None),
    "embeddings_only_axis_neg1": (None, -1, None, None),
    "all_unbatched_axis_size": (None, None, None, _B),
}


def _vmap_examples(id_dtype, dtype, seed, special=True):
    """Per-example ids (each a permutation of one pool plus duplicates, so every example's input
    maps in every example's ids and first-wins rows differ), embeddings and inputs."""
    rng = np.random.default_rng(seed)
    pool = id_pool(rng, id_dtype, 10)
    ids, embs, inputs = [], [], []
    for _ in range(_B):
        ids.append(np.concatenate([rng.permutation(pool), pool[rng.integers(0, 10, size=4)]]))
        embs.append(random_floats(rng, dtype, (_VMAP_M, _VMAP_D), special))
        inputs.append(pool[rng.integers(0, 10, size=_VMAP_INPUT)])
    return ids, embs, inputs


def _stack_expected(expected) -> oracle.GatherExpected:
    return oracle.GatherExpected(*[np.stack(fields) for fields in zip(*expected)])


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "id_dtype, dtype, use_multi_threads",
    [(np.int64, np.float32, False), (np.uint32, jnp.bfloat16, True)],
    ids=["int64_float32_st", "uint32_bfloat16_mt"],
)
@pytest.mark.parametrize("mode", list(_VMAP_MODES))
def test_vmap_matches_loop(mode, id_dtype, dtype, use_multi_threads, use_jit):
    ids_axis, embs_axis, input_axis, axis_size = _VMAP_MODES[mode]
    ids, embs, inputs = _vmap_examples(id_dtype, dtype, seed=len(mode))
    ids_arg, ids_ex = batch_leaf(ids, ids_axis, fixed=1)
    embs_arg, embs_ex = batch_leaf(embs, embs_axis, fixed=2)
    input_arg, input_ex = batch_leaf(inputs, input_axis, fixed=0)
    batched = jax.vmap(
        functools.partial(OP, use_multi_threads=use_multi_threads),
        in_axes=(ids_axis, embs_axis, input_axis),
        axis_size=axis_size,
    )
    if use_jit:
        batched = jax.jit(batched)
    want = _stack_expected(
        [oracle.gather_embeddings_by_input(ids_ex[b], embs_ex[b], input_ex[b]) for b in range(_B)]
    )
    assert_result_equal(batched(ids_arg, embs_arg, input_arg), want)


# name -> (ids axis, grads axis, index_mapping axis, axis_size)
_VMAP_GRAD_MODES = {
    "all_axis0": (0, 0, 0, None),
    "grads_and_mapping_axis0": (None, 0, 0, None),
    "grads_axis1_mapping_unbatched": (None, 1, None, None),
    "mapping_axis_neg1_grads_axis2": (None, 2, -1, None),
    "ids_axis0_only": (0, None, None, None),
    "all_unbatched_axis_size": (None, None, None, _B),
}


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("mapping_dtype", [np.int64, np.int32], ids=dtype_name)
@pytest.mark.parametrize("mode", list(_VMAP_GRAD_MODES))
def test_vmap_gradient_op_matches_loop(mode, mapping_dtype, use_jit):
    ids_axis, grads_axis, mapping_axis, axis_size = _VMAP_GRAD_MODES[mode]
    ids, _, _ = _vmap_examples(np.uint64, np.float32, seed=7)
    rng = np.random.default_rng(8)
    grads = [
        random_floats(rng, np.float32, _VMAP_INPUT + (_VMAP_D,), special=False) for _ in range(_B)
    ]
    mappings = [rng.integers(0, _VMAP_M, size=_VMAP_INPUT).astype(mapping_dtype) for _ in range(_B)]
    ids_arg, _ = batch_leaf(ids, ids_axis, fixed=2)
    grads_arg, grads_ex = batch_leaf(grads, grads_axis, fixed=1)
    mapping_arg, mapping_ex = batch_leaf(mappings, mapping_axis, fixed=0)
    batched = jax.vmap(GRAD_OP, in_axes=(ids_axis, grads_axis, mapping_axis), axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    want = np.stack(
        [
            oracle.gather_embeddings_by_ids_gradient(_VMAP_M, grads_ex[b], mapping_ex[b])
            for b in range(_B)
        ]
    )
    assert_array_bits_equal(batched(ids_arg, grads_arg, mapping_arg), want, "batched gradient")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap: ids and embeddings per outer example (axis 0), input's axis 1. Inner vmap:
    input's axis 0, ids and embeddings unbatched."""
    ids, embs, _ = _vmap_examples(np.int32, np.float64, seed=21)
    pool = np.unique(ids[0])
    rng = np.random.default_rng(22)
    inp = pool[rng.integers(0, len(pool), size=(2, _B, 5))]  # [inner, outer, n]

    inner = jax.vmap(OP, in_axes=(None, None, 0))
    batched = jax.vmap(inner, in_axes=(0, 0, 1))
    if use_jit:
        batched = jax.jit(batched)
    want = _stack_expected(
        [
            _stack_expected(
                [oracle.gather_embeddings_by_input(ids[o], embs[o], inp[k, o]) for k in range(2)]
            )
            for o in range(_B)
        ]
    )
    assert_result_equal(batched(np.stack(ids), np.stack(embs), inp), want)


@pytest.mark.parametrize("tables_batched", [False, True], ids=["shared_table", "batched_table"])
def test_vmap_of_grad_matches_loop(tables_batched):
    """Per-example gradients with per-example input (integer batched operand under grad)."""
    ids, embs, inputs = _vmap_examples(np.int64, np.float64, seed=3, special=False)
    rng = np.random.default_rng(4)
    weights = np.stack([rng.normal(size=_VMAP_INPUT + (_VMAP_D,)) for _ in range(_B)])
    t_axis = 0 if tables_batched else None
    ids_arg, ids_ex = batch_leaf(ids, t_axis, fixed=0)
    embs_arg, embs_ex = batch_leaf(embs, t_axis, fixed=0)

    def loss(i, e, x, w):
        return jnp.sum(w * OP(i, e, x).output)

    grad_fn = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(t_axis, t_axis, 0, 0)))
    got = grad_fn(ids_arg, embs_arg, np.stack(inputs), weights)
    want = []
    for b in range(_B):
        mapping = oracle.gather_embeddings_by_input(ids_ex[b], embs_ex[b], inputs[b]).index_mapping
        want.append(oracle.gather_embeddings_by_ids_gradient(_VMAP_M, weights[b], mapping))
    assert_array_bits_equal(got, np.stack(want), "per-example grad")


# --------------------------------------------------------------------------------------------------
# Autodiff: vjp, jvp, grad-of-grad, linear_transpose, check_grads (float64)
# --------------------------------------------------------------------------------------------------

# (name, id dtype, M, input shape, D)
_AD_CASES = (
    ("M5_rank1", np.int64, 5, (7,), 2),
    ("M9_rank2", np.uint64, 9, (3, 4), 3),
    ("M4_rank0", np.int32, 4, (), 2),
)
_AD_PARAMS = [pytest.param(i, m, sh, d, id=name) for name, i, m, sh, d in _AD_CASES]


def _ad_inputs(id_dtype, num_rows, input_shape, width, seed=0):
    case = RandomCase("ad", id_dtype, np.float64, num_rows, input_shape, width, False, np.int64)
    ids, _, inp = _random_inputs(case, seed, special=False)
    rng = np.random.default_rng(100 + seed)
    embeddings = rng.normal(size=(num_rows, width))
    tangent = rng.normal(size=(num_rows, width))
    cotangent = rng.normal(size=input_shape + (width,))
    mapping = oracle.gather_embeddings_by_input(ids, embeddings, inp).index_mapping
    return ids, inp, embeddings, tangent, cotangent, mapping


def _gather_rows(table: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """The gradient op's transpose: `out[k] = table[mapping[k]]` (plain loop)."""
    flat = mapping.reshape(-1).tolist()
    out = np.zeros((len(flat), table.shape[1]), table.dtype)
    for k, j in enumerate(flat):
        out[k] = table[j]
    return out.reshape(mapping.shape + (table.shape[1],))


@pytest.mark.parametrize("id_dtype, num_rows, input_shape, width", _AD_PARAMS)
def test_vjp_and_jvp_vs_oracle(id_dtype, num_rows, input_shape, width):
    ids, inp, embeddings, tangent, cotangent, mapping = _ad_inputs(
        id_dtype, num_rows, input_shape, width
    )
    want_primal = oracle.gather_embeddings_by_input(ids, embeddings, inp)

    primal, vjp_fn = jax.vjp(lambda e: OP(ids, e, inp).output, embeddings)
    assert_array_bits_equal(primal, want_primal.output, "primal")
    (cotangent_in,) = vjp_fn(cotangent)
    want = oracle.gather_embeddings_by_ids_gradient(num_rows, cotangent, mapping)
    assert_array_bits_equal(cotangent_in, want, "vjp")

    # JVP = the op applied to the tangent; the integer output's tangent is float0.
    primal_out, tangent_out = jax.jvp(lambda e: OP(ids, e, inp), (embeddings,), (tangent,))
    assert_result_equal(primal_out, want_primal)
    want_tangent = oracle.gather_embeddings_by_input(ids, tangent, inp).output
    assert_array_bits_equal(tangent_out.output, want_tangent, "jvp")
    assert tangent_out.index_mapping.dtype == jax.dtypes.float0


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("id_dtype, num_rows, input_shape, width", _AD_PARAMS)
def test_linear_transpose_and_double_transpose(id_dtype, num_rows, input_shape, width, use_jit):
    ids, inp, embeddings, _, cotangent, mapping = _ad_inputs(
        id_dtype, num_rows, input_shape, width, seed=1
    )
    f = lambda e: OP(ids, e, inp).output  # noqa: E731
    f_t = jax.linear_transpose(f, embeddings)
    f_tt = jax.linear_transpose(lambda c: f_t(c)[0], cotangent)
    g = lambda c: GRAD_OP(ids, c, mapping)  # noqa: E731
    g_t = jax.linear_transpose(g, cotangent)
    g_tt = jax.linear_transpose(lambda e: g_t(e)[0], embeddings)
    if use_jit:
        f_t, f_tt, g_t, g_tt = jax.jit(f_t), jax.jit(f_tt), jax.jit(g_t), jax.jit(g_tt)

    want_transpose = oracle.gather_embeddings_by_ids_gradient(num_rows, cotangent, mapping)
    assert_array_bits_equal(f_t(cotangent)[0], want_transpose, "transpose")
    want_forward = oracle.gather_embeddings_by_input(ids, embeddings, inp).output
    assert_array_bits_equal(f_tt(embeddings)[0], want_forward, "double transpose")
    # The gradient op's transpose gathers rows by index_mapping; its double transpose is itself.
    assert_array_bits_equal(g_t(embeddings)[0], _gather_rows(embeddings, mapping), "g transpose")
    assert_array_bits_equal(g_tt(cotangent)[0], want_transpose, "g double transpose")


def test_gradient_op_transpose_any_mapping():
    """The gradient op with a mapping that is no forward's (rows hit several times, some never):
    its transpose gathers `ct[mapping]`."""
    mapping = np.array([[3, 3], [0, 5], [3, 1]], np.int32)
    grads = np.random.default_rng(9).normal(size=(3, 2, 4))
    table = np.random.default_rng(10).normal(size=(6, 4))
    ids = np.zeros(6, np.uint32)  # only M = 6 matters
    g_t = jax.linear_transpose(lambda c: GRAD_OP(ids, c, mapping), grads)
    assert_array_bits_equal(g_t(table)[0], _gather_rows(table, mapping), "transpose")
    want = oracle.gather_embeddings_by_ids_gradient(6, grads, mapping)
    assert_array_bits_equal(GRAD_OP(ids, grads, mapping), want, "gradient op")


@pytest.mark.parametrize("id_dtype, num_rows, input_shape, width", _AD_PARAMS)
def test_check_grads(id_dtype, num_rows, input_shape, width):
    ids, inp, embeddings, _, cotangent, mapping = _ad_inputs(
        id_dtype, num_rows, input_shape, width, seed=2
    )
    kw = dict(order=2, modes=("fwd", "rev"))
    jax.test_util.check_grads(lambda e: OP(ids, e, inp).output, (embeddings,), **kw)
    jax.test_util.check_grads(lambda c: GRAD_OP(ids, c, mapping), (cotangent,), **kw)
    if num_rows == _AD_CASES[1][2]:
        # Nonlinear around the op, so second derivatives are not all zero (one case: slow).
        jax.test_util.check_grads(
            lambda e: jnp.sin(OP(ids, e, inp).output) * OP(ids, e, inp).output ** 2,
            (embeddings,),
            **kw,
        )


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("id_dtype, num_rows, input_shape, width", _AD_PARAMS)
def test_grad_of_grad(id_dtype, num_rows, input_shape, width, use_jit):
    """f(e) = sum(w * (P e)**2): grad f = 2 P^T (w * P e) and the Hessian-vector product with v is
    2 P^T (w * P v), where P gathers rows by index_mapping and P^T is the gradient op."""
    ids, inp, embeddings, v, w, mapping = _ad_inputs(id_dtype, num_rows, input_shape, width, seed=3)

    def f(e):
        return jnp.sum(w * OP(ids, e, inp).output ** 2)

    def hvp(e):
        return jax.grad(lambda x: jnp.sum(v * jax.grad(f)(x)))(e)

    grad_f, hvp_fn = jax.grad(f), hvp
    if use_jit:
        grad_f, hvp_fn = jax.jit(grad_f), jax.jit(hvp_fn)
    pe = oracle.gather_embeddings_by_input(ids, embeddings, inp).output
    pv = oracle.gather_embeddings_by_input(ids, v, inp).output
    want_grad = oracle.gather_embeddings_by_ids_gradient(num_rows, 2 * w * pe, mapping)
    want_hvp = oracle.gather_embeddings_by_ids_gradient(num_rows, 2 * w * pv, mapping)
    np.testing.assert_allclose(np.asarray(grad_f(embeddings)), want_grad, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(hvp_fn(embeddings)), want_hvp, rtol=1e-13, atol=1e-13)
    # Through the public gradient op: its gradient gathers rows by index_mapping.
    grad_g = jax.grad(lambda c: jnp.sum(embeddings * GRAD_OP(ids, c, mapping)))(w)
    assert_array_bits_equal(grad_g, _gather_rows(embeddings, mapping), "grad of gradient op")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _call(use_jit, fn, *args, **kwargs):
    if use_jit:
        return jax.jit(functools.partial(fn, **kwargs))(*args)
    return fn(*args, **kwargs)


_IDS = np.array([1, 2, 3], np.int64)
_EMBS = np.arange(6, dtype=np.float32).reshape(3, 2)
_INPUT = np.array([[3, 1], [2, 2]], np.int64)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "embeddings, rows",
    [(np.zeros((4, 2), np.float32), 4), (np.zeros((2, 5), np.float32), 2)],
    ids=["more_rows", "fewer_rows"],
)
def test_error_unmatched_embedding_dim(embeddings, rows, use_jit):
    """Spec 9.4: "See unmatched embedding dim <rows> and id dim <len(ids)>"."""
    with pytest.raises(
        ValueError, match=rf"^{OP_NAME}\b(?s:.*)See unmatched embedding dim {rows} and id dim 3\b"
    ):
        _call(use_jit, OP, _IDS, embeddings, _INPUT)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids, embeddings, inp, error, args",
    [
        (_IDS[None], _EMBS, _INPUT, ValueError, ("ids",)),
        (np.int64(1), _EMBS[:1], _INPUT, ValueError, ("ids",)),
        (_IDS, _EMBS[:, :, None], _INPUT, ValueError, ("embeddings",)),
        (_IDS, np.zeros(3, np.float32), _INPUT, ValueError, ("embeddings",)),
        (_IDS, _EMBS, _INPUT.astype(np.uint64), TypeError, ("input", "ids")),
        (_IDS, _EMBS, _INPUT.astype(np.int32), TypeError, ("input", "ids")),
        (_IDS.astype(np.float32), _EMBS, _INPUT.astype(np.float32), TypeError, ("ids", "input")),
        (_IDS.astype(np.int16), _EMBS, _INPUT.astype(np.int16), TypeError, ("ids", "input")),
        (_IDS, _EMBS, _INPUT.astype(np.float64), TypeError, ("input",)),
        (_IDS, _EMBS.astype(np.int32), _INPUT, TypeError, ("embeddings",)),
        (_IDS, _EMBS.astype(np.float16), _INPUT, TypeError, ("embeddings",)),
    ],
    ids=[
        "ids_2d",
        "ids_0d",
        "embeddings_3d",
        "embeddings_1d",
        "input_uint64_ids_int64",
        "input_int32_ids_int64",
        "ids_float32",
        "ids_int16",
        "input_float64",
        "embeddings_int32",
        "embeddings_float16",
    ],
)
def test_error_trace_time(ids, embeddings, inp, error, args, use_jit):
    with pytest.raises(error, match=starts_with_op_names(OP_NAME, *args)):
        _call(use_jit, OP, ids, embeddings, inp)


_MAPPING = np.array([[2, 0], [1, 1]], np.int64)
_GRADS = np.ones((2, 2, 5), np.float32)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids, grads, mapping, error, args",
    [
        (_IDS, _GRADS[:1], _MAPPING, ValueError, ("grads", "index_mapping")),
        (_IDS, _GRADS[..., 0], _MAPPING, ValueError, ("grads", "index_mapping")),
        (_IDS, np.float32(1), np.int64(0), ValueError, ("grads",)),
        (_IDS, _GRADS, _MAPPING[None], ValueError, ("grads", "index_mapping")),
        (_IDS[None], _GRADS, _MAPPING, ValueError, ("ids",)),
        (_IDS, _GRADS, _MAPPING.astype(np.float32), TypeError, ("index_mapping",)),
        (_IDS, _GRADS, _MAPPING.astype(np.uint32), TypeError, ("index_mapping",)),
        (_IDS, _GRADS, _MAPPING.astype(np.int16), TypeError, ("index_mapping",)),
        (_IDS, _GRADS.astype(np.int32), _MAPPING, TypeError, ("grads",)),
        (_IDS, _GRADS.astype(np.float16), _MAPPING, TypeError, ("grads",)),
    ],
    ids=[
        "grads_rows_differ",
        "grads_missing_width_axis",
        "grads_0d",
        "mapping_rank_differs",
        "ids_2d",
        "mapping_float32",
        "mapping_uint32",
        "mapping_int16",
        "grads_int32",
        "grads_float16",
    ],
)
def test_gradient_op_trace_time_errors(ids, grads, mapping, error, args, use_jit):
    with pytest.raises(error, match=starts_with_op_names(GRAD_NAME, *args)):
        _call(use_jit, GRAD_OP, ids, grads, mapping)


# (ids, input, missing id): 2**32 + 5 and -(2**32) + 5 share their low 32 bits with 5.
_MISSING_CASES = [
    pytest.param(np.array([1, 2], np.int64), np.array([1, -7, 2], np.int64), -7, id="int64_neg"),
    pytest.param(
        np.array([5, 1], np.int64), np.array([[5, 1], [2**32 + 5, 5]], np.int64), 2**32 + 5,
        id="int64_high_bits",
    ),
    pytest.param(
        np.array([5, 0], np.int64), np.array([0, -(2**32) + 5], np.int64), -(2**32) + 5,
        id="int64_negative_high_bits",
    ),
    pytest.param(
        np.array([0, 2**63 - 1], np.uint64), np.array([2**64 - 1], np.uint64), 2**64 - 1,
        id="uint64_max",
    ),
    pytest.param(
        np.array([2**31 - 1], np.int32), np.array(-(2**31), np.int32), -(2**31), id="int32_min_0d"
    ),
    pytest.param(
        np.array([1, 7], np.uint32), np.array([1, 2**32 - 1], np.uint32), 2**32 - 1,
        id="uint32_max",
    ),
    pytest.param(np.array([], np.int64), np.array([4], np.int64), 4, id="empty_table"),
]


def _table_for(ids, dtype=np.float32, width=2):
    return np.arange(len(ids) * width, dtype=dtype).reshape(len(ids), width)


@pytest.mark.parametrize("use_multi_threads", [False, True], ids=["st", "mt"])
@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("ids, inp, missing", _MISSING_CASES)
def test_error_missing_id(ids, inp, missing, use_jit, use_multi_threads):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        res = _call(use_jit, OP, ids, _table_for(ids), inp, use_multi_threads=use_multi_threads)
        np.asarray(res.output)
        np.asarray(res.index_mapping)
    assert_unable_to_map(excinfo, OP_NAME, missing)


@pytest.mark.parametrize("use_multi_threads", [False, True], ids=["st", "mt"])
def test_error_missing_id_in_large_input(use_multi_threads):
    """One missing id (repeated) among ~3e5 lookups."""
    ids, embeddings, inp, _ = _large_case()
    inp = inp.copy()
    missing = 2**64 - 12345
    assert missing not in set(ids.tolist()), "test bug"
    inp[300, 250] = missing
    inp[599, 499] = missing
    fn = jax.jit(functools.partial(OP, use_multi_threads=use_multi_threads))
    with pytest.raises(runtime_errors(True)) as excinfo:
        res = fn(ids, embeddings, inp)
        np.asarray(res.output)
    assert_unable_to_map(excinfo, OP_NAME, missing)


def _assert_mapping_error(excinfo, value: int) -> None:
    message = str(excinfo.value)
    assert GRAD_NAME in message, message
    assert "index_mapping" in message, message
    assert re.search(rf"(?<![\d-]){re.escape(str(value))}(?!\d)", message), message


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "mapping, bad",
    [
        (np.array([[0, -1], [1, 2]], np.int64), -1),
        (np.array([[0, 3], [1, 2]], np.int32), 3),
        (np.array([[0, 1], [2, 2**40]], np.int64), 2**40),
        (np.array([[-(2**31), 1], [2, 0]], np.int32), -(2**31)),
        (np.array([[0, 1], [2, -(2**63)]], np.int64), -(2**63)),
    ],
    ids=["minus_one", "equal_to_M", "int64_2pow40", "int32_min", "int64_min"],
)
def test_gradient_op_error_mapping_out_of_range(mapping, bad, use_jit):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        np.asarray(_call(use_jit, GRAD_OP, _IDS, _GRADS, mapping))
    _assert_mapping_error(excinfo, bad)


def test_gradient_op_error_empty_table():
    """M = 0: every index_mapping entry is out of range."""
    with pytest.raises(runtime_errors(True)) as excinfo:
        out = jax.jit(GRAD_OP)(
            np.zeros(0, np.int64), np.ones((1, 2), np.float32), np.zeros(1, np.int64)
        )
        np.asarray(out)
    _assert_mapping_error(excinfo, 0)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_errors_under_vmap(use_jit):
    """A bad id / index in one example of a batch fails the batched call."""
    ids = np.array([1, 2, 3], np.uint64)
    inp = np.array([[1, 2, 3], [3, 2**40, 1]], np.uint64)
    fwd = jax.vmap(OP, in_axes=(None, None, 0))
    if use_jit:
        fwd = jax.jit(fwd)
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        res = fwd(ids, _table_for(ids), inp)
        np.asarray(res.output)
    assert_unable_to_map(excinfo, OP_NAME, 2**40)
    # Batched ids, unbatched input: example 1's ids lack 3.
    batched_ids = np.array([[1, 2, 3], [1, 2, 4]], np.uint64)
    with pytest.raises(runtime_errors(True)) as excinfo:
        res = jax.jit(jax.vmap(OP, in_axes=(0, None, None)))(
            batched_ids, _table_for(ids), np.array([3, 1], np.uint64)
        )
        np.asarray(res.output)
    assert_unable_to_map(excinfo, OP_NAME, 3)
    grad = jax.vmap(GRAD_OP, in_axes=(None, 0, 0))
    if use_jit:
        grad = jax.jit(grad)
    mapping = np.array([[0, 1, 2], [2, 1, 3]], np.int64)
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        np.asarray(grad(ids, np.ones((2, 3, 2), np.float32), mapping))
    _assert_mapping_error(excinfo, 3)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_zero_width_rows(use_jit):
    """D = 0: empty rows forward (with the mapping), zero-width gradients (the op and jax.grad)."""
    ids = np.array([3, 1, 8], np.int64)
    embeddings = np.zeros((3, 0), np.float32)
    inp = np.array([8, 3, 8, 1], np.int64)
    grads = np.zeros((4, 0), np.float32)
    maybe_jit = jax.jit if use_jit else (lambda f: f)
    want = oracle.gather_embeddings_by_input(ids, embeddings, inp)
    out, mapping = maybe_jit(OP)(ids, embeddings, inp)
    assert_array_bits_equal(out, want.output, "output")
    np.testing.assert_array_equal(np.asarray(mapping), want.index_mapping)
    want_grad = oracle.gather_embeddings_by_ids_gradient(3, grads, want.index_mapping)
    assert_array_bits_equal(maybe_jit(GRAD_OP)(ids, grads, mapping), want_grad, "gradient op")
    d_emb = maybe_jit(jax.grad(lambda e: jnp.sum(OP(ids, e, inp).output)))(embeddings)
    assert_array_bits_equal(d_emb, want_grad, "jax.grad")


def _wide_case(num_rows=150_000, width=16, lookups=200_000, seed=43):
    """An output over 8 MiB and over 65536 lookups: the parallel range-by-range scatter-add."""
    rng = np.random.default_rng(seed)
    mapping = rng.integers(0, num_rows, size=lookups)
    mapping[rng.random(lookups) < 0.2] = 1234  # one heavy row
    grads = random_floats(rng, np.float32, (lookups, width), special=False)
    return mapping, grads


def test_wide_gradient_vs_oracle():
    """The parallel path sums every row in ascending lookup order, as the oracle does."""
    mapping, grads = _wide_case()
    ids = np.arange(150_000, dtype=np.int64)
    want = oracle.gather_embeddings_by_ids_gradient(len(ids), grads, mapping)
    assert_array_bits_equal(jax.jit(GRAD_OP)(ids, grads, mapping), want, "gradient op")


def test_wide_gradient_reports_first_bad_mapping():
    """Bad entries in several counting tasks of the parallel path: the first one is reported."""
    mapping, grads = _wide_case()
    mapping[150_000] = -5
    mapping[70_000] = 150_000  # the first bad position, in another task than 150_000
    # The executable may already have run (test_wide_gradient_vs_oracle, same shapes), so JAX's
    # fast path may report the failure as a ValueError (see runtime_errors).
    with pytest.raises(runtime_errors(use_jit=False)) as excinfo:
        np.asarray(jax.jit(GRAD_OP)(np.arange(150_000, dtype=np.int64), grads, mapping))
    _assert_mapping_error(excinfo, 150_000)
    assert "position 70000" in str(excinfo.value), str(excinfo.value)
