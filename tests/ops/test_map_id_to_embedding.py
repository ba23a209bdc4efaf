"""Tests for `jax_distops.map_id_to_embedding` and `map_id_to_embedding_gradient_back_prop` (spec
section 8; DESIGN.md section 2; the documented contract in the op docstrings).

Expected values come only from (a) the spec's vectors (section 8.6), transcribed literally below,
plus a few hand-worked vectors of our own, or (b) the independent numpy oracle in
`tests/oracle.py`, which is itself anchored to the literal vectors by
`test_oracle_matches_literal_vectors`. Nothing expected is computed by the op under test.

Battery (STYLE.md rule 10):
  * forward: literal vectors (spec 8.6 incl. the 1000-id multi-thread case and the 1e6-id
    benchmark round trip), every id dtype (int32, int64, uint32, uint64, with negative, extreme and
    >= 2**32 ids), every float dtype (float32, float64, bfloat16), input ranks 0-2, S in
    {1, 3, 10}, duplicate ids (first mapping wins), empty inputs and empty tables, compared bit for
    bit (the op only moves rows; NaN / -0.0 / inf included);
  * jit and no-jit through `chex.variants`; use_multi_threads True and False (same bits), also on
    a large input (~3e5 lookups);
  * vmap vs a Python loop (each argument mapped / unmapped, per-table axes, in_axes 1 and -1,
    nested);
  * gradients: the public gradient op (literal vectors, random vs the oracle, bit-exact because the
    summation order is pinned), `jax.grad`, `jax.vjp`, `jax.jvp`, `jax.linear_transpose` (and
    double transpose) of the op and of the gradient op, grad-of-grad, vmap of grad,
    `jax.test_util.check_grads` in float64 up to order 2;
  * x64 off: 32-bit ids work, 64-bit numpy ids raise TypeError;
  * every error of the contract (trace-time ValueError / TypeError naming op and argument, run-time
    "Unable to map id <id>" eager, under jit, with multi-threading and under vmap).

Requires `jax_enable_x64` (enabled globally by tests/conftest.py).
"""

import dataclasses
import functools
from typing import Optional, Tuple

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

OP = jax_distops.map_id_to_embedding
GRAD_OP = jax_distops.map_id_to_embedding_gradient_back_prop
OP_NAME = "map_id_to_embedding"
GRAD_NAME = "map_id_to_embedding_gradient_back_prop"
ID_DTYPES = (np.int32, np.int64, np.uint32, np.uint64)
FLOAT_DTYPES = (np.float32, np.float64, jnp.bfloat16)


def assert_list_bits_equal(got, want: list, what: str) -> None:
    """A list of S arrays (the gradient op's output), each with the same dtype, shape and bits."""
    assert isinstance(got, list), f"{what}: {type(got)}, want list"
    assert len(got) == len(want), f"{what}: {len(got)} arrays, want {len(want)}"
    for s, (g, w) in enumerate(zip(got, want)):
        assert_array_bits_equal(g, w, f"{what}[{s}]")


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: forward and gradient-op inputs and outputs."""

    name: str
    ids_list: Tuple[tuple, ...]  # S tuples of ids
    embeddings_list: Tuple[tuple, ...]  # S nested tuples [K_s, D]
    width: int  # D (needed for empty tables)
    input: object  # nested tuples / an int
    input_shape: Tuple[int, ...]
    output: object  # expected forward output, [*input_shape, D]
    grads: object  # gradient-op input, [*input_shape, D]
    grads_out: Tuple[tuple, ...]  # expected gradient-op output: S nested tuples [K_s, D]
    id_dtypes: Tuple[type, ...] = ID_DTYPES  # the dtypes that can hold every id of the case


SPEC_CASES = (
    # Spec 8.6 `test_map_id_to_embedding` (single-threaded); the gradient part is hand-worked.
    LiteralCase(
        name="spec_test_map_id_to_embedding",
        ids_list=((1,), (2,)),
        embeddings_list=(((1, 1),), ((2, 2),)),
        width=2,
        input=((1,), (2,)),
        input_shape=(2, 1),
        output=(((1, 1),), ((2, 2),)),
        grads=(((1, 2),), ((4, 8),)),
        grads_out=(((1, 2),), ((4, 8),)),
    ),
    # Spec 8.3 / 8.6 `test_map_id_to_embedding_gradient`: upstream gradient -1 everywhere.
    LiteralCase(
        name="spec_test_map_id_to_embedding_gradient",
        ids_list=((1,), (2,)),
        embeddings_list=(((0, 0),), ((0, 0),)),
        width=2,
        input=(1, 1, 2),
        input_shape=(3,),
        output=((0, 0), (0, 0), (0, 0)),
        grads=((-1, -1), (-1, -1), (-1, -1)),
        grads_out=(((-2, -2),), ((-1, -1),)),
    ),
)

EXTRA_CASES = (
    # Duplicates inside a table and across tables: 5 -> (0, 0), 7 -> (0, 1), 9 -> (1, 1).
    LiteralCase(
        name="duplicates_first_wins",
        ids_list=((5, 7, 5), (7, 9)),
        embeddings_list=(((10,), (20,), (30,)), ((40,), (50,))),
        width=1,
        input=(5, 7, 9, 7),
        input_shape=(4,),
        output=((10,), (20,), (50,), (20,)),
        grads=((1,), (2,), (4,), (8,)),
        grads_out=(((1,), (10,), (0,)), ((0,), (4,))),
    ),
    # 1 -> (0, 0), 2 -> (0, 1), 3 -> (1, 2); table 1's 2 and 1 are never used.
    LiteralCase(
        name="duplicates_across_tables_rank2",
        ids_list=((1, 2), (2, 1, 3)),
        embeddings_list=(((1, 1), (2, 2)), ((3, 3), (4, 4), (5, 5))),
        width=2,
        input=((3, 2), (1, 3)),
        input_shape=(2, 2),
        output=(((5, 5), (2, 2)), ((1, 1), (5, 5))),
        grads=(((1, 1), (2, 2)), ((4, 4), (8, 8))),
        grads_out=(((4, 4), (2, 2)), ((0, 0), (0, 0), (9, 9))),
    ),
    LiteralCase(
        name="rank0_input",
        ids_list=((3, 4),),
        embeddings_list=(((1, 2), (3, 4)),),
        width=2,
        input=4,
        input_shape=(),
        output=(3, 4),
        grads=(0.5, 0.25),
        grads_out=(((0, 0), (0.5, 0.25)),),
    ),
    LiteralCase(
        name="empty_tables",
        ids_list=((), (8,), ()),
        embeddings_list=((), ((1, 2),), ()),
        width=2,
        input=(8, 8),
        input_shape=(2,),
        output=((1, 2), (1, 2)),
        grads=((1, 1), (2, 2)),
        grads_out=((), ((3, 3),), ()),
    ),
    LiteralCase(
        name="empty_input",
        ids_list=((1, 2),),
        embeddings_list=(((1,), (2,)),),
        width=1,
        input=(),
        input_shape=(0,),
        output=(),
        grads=(),
        grads_out=(((0,), (0,)),),
    ),
    LiteralCase(
        name="all_tables_empty_empty_input",
        ids_list=((), ()),
        embeddings_list=((), ()),
        width=3,
        input=(),
        input_shape=(2, 0),
        output=(),
        grads=(),
        grads_out=((), ()),
    ),
    # 5 and 2**32 + 5 agree in their low 32 bits; int64 extremes.
    LiteralCase(
        name="int64_extremes",
        ids_list=((-(2**63), 2**63 - 1), (-1, 2**32 + 5, 5)),
        embeddings_list=(((1,), (2,)), ((3,), (4,), (5,))),
        width=1,
        input=(5, 2**32 + 5, -1, 2**63 - 1, -(2**63)),
        input_shape=(5,),
        output=((5,), (4,), (3,), (2,), (1,)),
        grads=((1,), (2,), (4,), (8,), (16,)),
        grads_out=(((16,), (8,)), ((4,), (2,), (1,))),
        id_dtypes=(np.int64,),
    ),
    LiteralCase(
        name="uint64_extremes",
        ids_list=((2**64 - 1, 2**63), (5, 2**32 + 5)),
        embeddings_list=(((1,), (2,)), ((3,), (4,))),
        width=1,
        input=(2**32 + 5, 5, 2**63, 2**64 - 1),
        input_shape=(4,),
        output=((4,), (3,), (2,), (1,)),
        grads=((1,), (2,), (4,), (8,)),
        grads_out=(((8,), (4,)), ((2,), (1,))),
        id_dtypes=(np.uint64,),
    ),
    LiteralCase(
        name="int32_extremes",
        ids_list=((2**31 - 1, -(2**31), -1),),
        embeddings_list=(((1,), (2,), (3,)),),
        width=1,
        input=(-1, -(2**31), 2**31 - 1, -1),
        input_shape=(4,),
        output=((3,), (2,), (1,), (3,)),
        grads=((1,), (2,), (4,), (8,)),
        grads_out=(((4,), (2,), (9,)),),
        id_dtypes=(np.int32, np.int64),
    ),
    LiteralCase(
        name="uint32_extremes",
        ids_list=((2**32 - 1,), (0, 2**31)),
        embeddings_list=(((1,),), ((2,), (3,))),
        width=1,
        input=((2**31, 0), (2**32 - 1, 2**31)),
        input_shape=(2, 2),
        output=(((3,), (2,)), ((1,), (3,))),
        grads=(((1,), (2,)), ((4,), (8,))),
        grads_out=(((4,),), ((2,), (9,))),
        id_dtypes=(np.uint32, np.int64, np.uint64),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _literal_inputs(case: LiteralCase, id_dtype, dtype):
    ids_list = [np.array(t, dtype=id_dtype).reshape(len(t)) for t in case.ids_list]
    embeddings_list = [rows_array(e, case.width, dtype) for e in case.embeddings_list]
    inp = np.array(case.input, dtype=id_dtype).reshape(case.input_shape)
    return ids_list, embeddings_list, inp


def _literal_output(case: LiteralCase, dtype) -> np.ndarray:
    return np.array(case.output, dtype=dtype).reshape(case.input_shape + (case.width,))


def _literal_grads(case: LiteralCase, dtype) -> np.ndarray:
    return np.array(case.grads, dtype=dtype).reshape(case.input_shape + (case.width,))


def _literal_grads_out(case: LiteralCase, dtype) -> list:
    return [rows_array(g, case.width, dtype) for g in case.grads_out]


# --------------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandomCase:
    name: str
    id_dtype: type
    dtype: type
    num_tables: int
    input_shape: Tuple[int, ...]
    width: int
    use_multi_threads: bool
    table_sizes: Optional[Tuple[int, ...]] = None  # None: random, with some empty tables


_RANDOM_SPECS = (
    # id dtype, float dtype, S, input shape, D
    (np.int32, np.float32, 1, (7,), 1),
    (np.int64, np.float64, 3, (4, 5), 2),
    (np.uint32, jnp.bfloat16, 10, (), 3),
    (np.uint64, np.float32, 3, (6,), 5),
    (np.int64, jnp.bfloat16, 1, (3, 4), 16),
    (np.int32, np.float64, 10, (9,), 1),
    (np.uint64, jnp.bfloat16, 10, (2, 3), 2),
    (np.uint32, np.float64, 1, (), 3),
    (np.int64, np.float32, 10, (25,), 5),
    (np.uint64, np.float64, 1, (), 16),
    (np.int32, jnp.bfloat16, 3, (5, 2), 1),
    (np.uint32, np.float32, 3, (40,), 2),
    (np.int64, np.float32, 3, (0,), 3),
    (np.uint32, np.float64, 1, (2, 0), 2),
)
RANDOM_CASES = tuple(
    RandomCase(
        name=(
            f"{k}_ids{dtype_name(i)}_{dtype_name(d)}_S{s}"
            f"_shape{'x'.join(map(str, shape)) or 'scalar'}_D{w}"
        ),
        id_dtype=i,
        dtype=d,
        num_tables=s,
        input_shape=shape,
        width=w,
        use_multi_threads=bool(k % 2),
    )
    for k, (i, d, s, shape, w) in enumerate(_RANDOM_SPECS)
) + (
    RandomCase("all_tables_empty_S3", np.int64, np.float32, 3, (0,), 2, True, (0, 0, 0)),
    RandomCase("one_nonempty_of_S10", np.uint64, np.float64, 10, (3, 3), 2, False,
               (0, 0, 0, 0, 0, 0, 0, 4, 0, 0)),
)


def _random_inputs(case: RandomCase, seed: int, special: bool = True):
    """Tables drawn with replacement from a pool of distinct ids (duplicates inside and across
    tables; table 1 empty when S >= 3); input drawn from the tables' ids, one id heavy."""
    rng = np.random.default_rng(seed)
    pool = id_pool(rng, case.id_dtype, 30)
    if case.table_sizes is not None:
        sizes = list(case.table_sizes)
    else:
        sizes = [int(k) for k in rng.integers(0, 9, size=case.num_tables)]
        if case.num_tables >= 3:
            sizes[1] = 0
        if sum(sizes) == 0:
            sizes[-1] = 3
    ids_list = [pool[rng.integers(0, len(pool), size=k)] for k in sizes]
    embeddings_list = [
        random_floats(rng, case.dtype, (k, case.width), special) for k in sizes
    ]
    present = np.concatenate(ids_list)
    n = int(np.prod(case.input_shape, dtype=np.int64))
    if n:
        picks = present[rng.integers(0, len(present), size=n)]
        picks[rng.random(n) < 0.3] = present[0]
    else:
        picks = np.zeros(0, case.id_dtype)
    inp = picks.astype(case.id_dtype).reshape(case.input_shape)
    return ids_list, embeddings_list, inp


def _random_params():
    return [dict(testcase_name=c.name, case=c, seed=k) for k, c in enumerate(RANDOM_CASES)]


def _random_grads(case: RandomCase, inp: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    return random_floats(rng, case.dtype, inp.shape + (case.width,), special=False)


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LITERAL_CASES, ids=lambda c: c.name)
def test_oracle_matches_literal_vectors(case):
    for id_dtype in case.id_dtypes:
        ids_list, embeddings_list, inp = _literal_inputs(case, id_dtype, np.float32)
        got = oracle.map_id_to_embedding(ids_list, embeddings_list, inp)
        np.testing.assert_array_equal(got, _literal_output(case, np.float32), strict=True)
        grads = oracle.map_id_to_embedding_gradient(ids_list, inp, _literal_grads(case, np.float32))
        want = _literal_grads_out(case, np.float32)
        assert len(grads) == len(want)
        for g, w in zip(grads, want):
            np.testing.assert_array_equal(g, w, strict=True)


def test_oracle_gradient_accumulates_in_float32_for_bfloat16():
    """256 + 1 + 1 is 258 in float32 but 256 in bfloat16 steps (bfloat16 has 8 significant bits)."""
    grads = np.array([[256.0], [1.0], [1.0]], dtype=jnp.bfloat16)
    (got,) = oracle.map_id_to_embedding_gradient([np.array([7])], np.array([7, 7, 7]), grads)
    np.testing.assert_array_equal(got.astype(np.float32), np.array([[258.0]], np.float32))


def test_oracle_gradient_sums_in_ascending_order():
    """float32: (1e8 + 1) + -1e8 = 0 but 1e8 + (1 + -1e8) = 8 - ascending order gives 0."""
    grads = np.array([[1e8], [1.0], [-1e8]], dtype=np.float32)
    (got,) = oracle.map_id_to_embedding_gradient([np.array([3])], np.array([3, 3, 3]), grads)
    np.testing.assert_array_equal(got, np.array([[0.0]], np.float32), strict=True)


# --------------------------------------------------------------------------------------------------
# Forward and gradient op, jit and no-jit
# --------------------------------------------------------------------------------------------------


class MapIdToEmbeddingVariantsTest(chex.TestCase):
    """Forward and gradient checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(literal_params(LITERAL_CASES, FLOAT_DTYPES))
    def test_literal_vectors(self, case, id_dtype, dtype):
        ids_list, embeddings_list, inp = _literal_inputs(case, id_dtype, dtype)
        want = _literal_output(case, dtype)
        for use_multi_threads in (True, False):
            fn = self.variant(lambda i, e, x: OP(i, e, x, use_multi_threads=use_multi_threads))
            assert_array_bits_equal(fn(ids_list, embeddings_list, inp), want, "output")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(literal_params(LITERAL_CASES, FLOAT_DTYPES))
    def test_gradient_op_literal_vectors(self, case, id_dtype, dtype):
        ids_list, _, inp = _literal_inputs(case, id_dtype, dtype)
        got = self.variant(GRAD_OP)(ids_list, inp, _literal_grads(case, dtype))
        assert_list_bits_equal(got, _literal_grads_out(case, dtype), "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        p
        for k, p in enumerate(literal_params(LITERAL_CASES, FLOAT_DTYPES))
        if k % len(FLOAT_DTYPES) == (k // 3) % 3
    )
    def test_grad_literal_vectors(self, case, id_dtype, dtype):
        """jax.grad of sum(grads * output) w.r.t. embeddings_list is the gradient op's output."""
        ids_list, embeddings_list, inp = _literal_inputs(case, id_dtype, dtype)
        weights = _literal_grads(case, dtype)

        def loss(embs):
            return jnp.sum((weights * OP(ids_list, embs, inp)).astype(jnp.float32))

        got = self.variant(jax.grad(loss))(embeddings_list)
        assert_list_bits_equal(got, _literal_grads_out(case, dtype), "grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=dtype_name(d), dtype=d, id_dtype=i)
        for d, i in zip(FLOAT_DTYPES, (np.int64, np.uint32, np.int32))
    )
    def test_spec_gradient_vector_through_grad(self, dtype, id_dtype):
        """Spec 8.3: ids [1], [2]; zero embeddings; input [1, 1, 2]; loss = sum(target - output)."""
        ids_list = [np.array([1], id_dtype), np.array([2], id_dtype)]
        embeddings_list = [np.zeros((1, 2), dtype), np.zeros((1, 2), dtype)]
        inp = np.array([1, 1, 2], id_dtype)
        target = np.ones((3, 2), dtype)

        def loss(embs):
            return jnp.sum((target - OP(ids_list, embs, inp)).astype(jnp.float32))

        got = self.variant(jax.grad(loss))(embeddings_list)
        want = [np.array([[-2, -2]], dtype), np.array([[-1, -1]], dtype)]
        assert_list_bits_equal(got, want, "grad")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, case, seed):
        ids_list, embeddings_list, inp = _random_inputs(case, seed)
        fn = self.variant(
            lambda i, e, x: OP(i, e, x, use_multi_threads=case.use_multi_threads)
        )
        want = oracle.map_id_to_embedding(ids_list, embeddings_list, inp)
        assert_array_bits_equal(fn(ids_list, embeddings_list, inp), want, "output")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_gradient_op_random_vs_oracle(self, case, seed):
        ids_list, _, inp = _random_inputs(case, seed)
        grads = _random_grads(case, inp, seed)
        got = self.variant(GRAD_OP)(ids_list, inp, grads)
        want = oracle.map_id_to_embedding_gradient(ids_list, inp, grads)
        assert_list_bits_equal(got, want, "gradient")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=c.name, case=c, seed=k)
        for k, c in enumerate(RANDOM_CASES)
        if k % 3 == 0
    )
    def test_grad_random_vs_oracle(self, case, seed):
        """jax.grad of sum(w * output): the gradient op applied to w (rows of absent ids 0)."""
        ids_list, embeddings_list, inp = _random_inputs(case, seed, special=False)
        weights = _random_grads(case, inp, seed)

        def loss(embs):
            out = OP(ids_list, embs, inp, use_multi_threads=case.use_multi_threads)
            return jnp.sum((weights * out).astype(jnp.float64))

        got = self.variant(jax.grad(loss))(embeddings_list)
        want = oracle.map_id_to_embedding_gradient(ids_list, inp, weights)
        assert_list_bits_equal(got, want, "grad")


def test_spec_multi_threads_vector():
    """Spec 8.6 `test_map_id_to_embedding_multi_threads`: ids 0..999 split by id mod 10, every
    embedding row [0, 1, ..., 15]; looking up ids 0..999 gives back the unsplit embeddings."""
    ids = np.arange(1000, dtype=np.int64)
    embeddings = np.tile(np.arange(16, dtype=np.float32), (1000, 1))
    ids_list = [ids[ids % 10 == s] for s in range(10)]
    embeddings_list = [embeddings[ids % 10 == s] for s in range(10)]
    for use_multi_threads in (True, False):
        got = OP(ids_list, embeddings_list, ids, use_multi_threads=use_multi_threads)
        assert_array_bits_equal(got, embeddings, f"multi_threads={use_multi_threads}")


def test_spec_multi_threads_vector_distinct_rows():
    """The same workload with row i = [16 i, ..., 16 i + 15], so a wrong row would show."""
    ids = np.arange(1000, dtype=np.int64)
    embeddings = (ids[:, None] * 16 + np.arange(16)).astype(np.float32)
    ids_list = [ids[ids % 10 == s] for s in range(10)]
    embeddings_list = [embeddings[ids % 10 == s] for s in range(10)]
    got = jax.jit(OP)(ids_list, embeddings_list, ids)
    assert_array_bits_equal(got, embeddings, "rows")
    # And the gradient op puts every row back into its split.
    grads_out = jax.jit(GRAD_OP)(ids_list, ids, embeddings)
    assert_list_bits_equal(grads_out, embeddings_list, "gradient")


def test_spec_benchmark_round_trip():
    """Spec 8.6 benchmark: 1e6 ids, D = 16, 10 splits by id mod 10; the lookup of the ids is the
    unsplit embeddings, single- and multi-threaded (5 blocks of 200,000 in Monolith). The input
    is also looked up in a shuffled order."""
    n = 1_000_000
    rng = np.random.default_rng(8)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 7919 - 3 * n)
    embeddings = rng.normal(size=(n, 16)).astype(np.float32)
    ids_list = [ids[ids % 10 == s] for s in range(10)]
    embeddings_list = [embeddings[ids % 10 == s] for s in range(10)]
    for use_multi_threads in (True, False):
        fn = jax.jit(functools.partial(OP, use_multi_threads=use_multi_threads))
        got = fn(ids_list, embeddings_list, ids)
        assert_array_bits_equal(got, embeddings, f"round trip, multi_threads={use_multi_threads}")
    order = rng.permutation(n)
    got = OP(ids_list, embeddings_list, ids[order])
    assert_array_bits_equal(got, embeddings[order], "shuffled lookup")


# A large input (~3e5 lookups) that crosses every multi-threading block threshold.
_LARGE = RandomCase("large", np.int64, np.float32, 10, (600, 500), 4, True)


@functools.lru_cache(maxsize=None)
def _large_case():
    rng = np.random.default_rng(31)
    pool = id_pool(rng, np.int64, 40_000)
    sizes = [int(k) for k in rng.integers(0, 9_000, size=10)]
    sizes[3] = 0
    ids_list = [pool[rng.integers(0, len(pool), size=k)] for k in sizes]
    embeddings_list = [random_floats(rng, np.float32, (k, 4), special=True) for k in sizes]
    present = np.concatenate(ids_list)
    inp = present[rng.integers(0, len(present), size=_LARGE.input_shape)]
    inp[rng.random(inp.shape) < 0.2] = present[-1]  # one heavy id
    want = oracle.map_id_to_embedding(ids_list, embeddings_list, inp)
    return ids_list, embeddings_list, inp, want


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("use_multi_threads", [True, False], ids=["mt", "st"])
def test_large_vs_oracle(use_multi_threads, use_jit):
    ids_list, embeddings_list, inp, want = _large_case()
    fn = functools.partial(OP, use_multi_threads=use_multi_threads)
    if use_jit:
        fn = jax.jit(fn)
    assert_array_bits_equal(fn(ids_list, embeddings_list, inp), want, "large")


def test_large_gradient_vs_oracle():
    """~3e5 gradient rows, 20% of them onto one id: the fixed ascending summation order."""
    ids_list, _, inp, _ = _large_case()
    grads = random_floats(np.random.default_rng(32), np.float32, inp.shape + (4,), special=False)
    got = jax.jit(GRAD_OP)(ids_list, inp, grads)
    assert_list_bits_equal(got, oracle.map_id_to_embedding_gradient(ids_list, inp, grads), "grad")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_ids_of_one_hash_group_vs_oracle(use_jit):
    """Map ids whose hashes share their top 40 bits (testing.colliding_ids), 50 of them in both
    tables (the first wins): the kernel's id join puts them all in one partition, whose hash index
    holds them in one chain of full groups in which every tag matches, wrapping from its last group
    to its first. The lookups probe that chain; the gradient op joins the same way. A crowded id
    absent from the map is still reported missing."""
    rng = np.random.default_rng(23)
    crowd = colliding_ids(rng, 401, 2**40 - 1)
    absent, crowd = int(crowd[-1]), crowd[:-1]
    ids_list = [crowd[:250], np.concatenate([crowd[200:], crowd[:10]])]
    embeddings_list = [random_floats(rng, np.float32, (len(x), 3), special=False) for x in ids_list]
    inp = crowd[rng.integers(0, len(crowd), size=(40, 50))]
    fwd, grad_op = (jax.jit(f) if use_jit else f for f in (OP, GRAD_OP))
    assert_array_bits_equal(fwd(ids_list, embeddings_list, inp),
                            oracle.map_id_to_embedding(ids_list, embeddings_list, inp), "forward")
    grads = random_floats(rng, np.float32, inp.shape + (3,), special=False)
    assert_list_bits_equal(grad_op(ids_list, inp, grads),
                           oracle.map_id_to_embedding_gradient(ids_list, inp, grads), "gradient")
    inp[17, 3] = absent
    with pytest.raises(runtime_errors(False)) as excinfo:  # (fwd ran before: either type)
        np.asarray(fwd(ids_list, embeddings_list, inp))
    assert_unable_to_map(excinfo, OP_NAME, absent)


@pytest.mark.parametrize("ids_batched", [True, False], ids=["own_map", "shared_map"])
def test_large_vmap_vs_oracle(ids_batched):
    """Large enough for the kernel's id join to use many partitions and several partitioning
    tasks on each side (> 2**16 ids and lookups per map): a batch of 3 with its own map per
    element (ids repeated across and within arrays: the first row wins), or one shared map."""
    rng = np.random.default_rng(41)
    batch = 3
    pool = rng.integers(-(2**62), 2**62, size=(batch, 50_000), dtype=np.int64)
    take = rng.integers(0, 50_000, size=(batch, 90_000))
    ids = [np.take_along_axis(pool, take[:, :70_000], 1), np.take_along_axis(pool, take[:, 70_000:], 1)]
    if not ids_batched:
        ids = [a[0] for a in ids]
    present = np.concatenate(ids, axis=-1) if ids_batched else np.broadcast_to(
        np.concatenate(ids), (batch, 90_000))
    inp = np.take_along_axis(present, rng.integers(0, 90_000, size=(batch, 80_000)), 1)
    emb = [random_floats(rng, np.float32, a.shape + (2,), special=False) for a in ids]
    in_axes = (0, 0, 0) if ids_batched else (None, None, 0)
    got = jax.vmap(OP, in_axes=in_axes)(ids, emb, inp)
    for b in range(batch):
        ids_b = [a[b] for a in ids] if ids_batched else ids
        emb_b = [e[b] for e in emb] if ids_batched else emb
        want = oracle.map_id_to_embedding(ids_b, emb_b, inp[b])
        assert_array_bits_equal(got[b], want, f"batch element {b}")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float32], ids=dtype_name)
def test_gradient_heavy_duplicates_vs_oracle(dtype):
    """20,000 gradient rows onto 7 ids: bfloat16 must sum in float32 and round once; float32 must
    sum in ascending input order (wide magnitudes make every other order differ in the bits)."""
    rng = np.random.default_rng(5)
    ids_list = [np.array([11, 12, 13], np.uint64), np.array([14, 15, 16, 17, 11], np.uint64)]
    inp = rng.integers(11, 18, size=(200, 100)).astype(np.uint64)
    grads = random_floats(rng, dtype, (200, 100, 3), special=False)
    want = oracle.map_id_to_embedding_gradient(ids_list, inp, grads)
    assert_list_bits_equal(GRAD_OP(ids_list, inp, grads), want, "gradient")
    f = lambda e: OP(ids_list, e, inp)  # noqa: E731
    _, vjp_fn = jax.vjp(f, [np.zeros((3, 3), dtype), np.zeros((5, 3), dtype)])
    assert_list_bits_equal(vjp_fn(grads)[0], want, "vjp")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_name)
def test_eval_shape(dtype):
    out = jax.eval_shape(
        OP,
        [jax.ShapeDtypeStruct((4,), jnp.int32), jax.ShapeDtypeStruct((0,), jnp.int32)],
        [jax.ShapeDtypeStruct((4, 6), dtype), jax.ShapeDtypeStruct((0, 6), dtype)],
        jax.ShapeDtypeStruct((2, 3, 5), jnp.int32),
    )
    assert out.shape == (2, 3, 5, 6) and out.dtype == np.dtype(dtype)
    grads = jax.eval_shape(
        GRAD_OP,
        [jax.ShapeDtypeStruct((4,), jnp.uint64), jax.ShapeDtypeStruct((0,), jnp.uint64)],
        jax.ShapeDtypeStruct((), jnp.uint64),
        jax.ShapeDtypeStruct((6,), dtype),
    )
    assert isinstance(grads, list) and len(grads) == 2
    assert grads[0].shape == (4, 6) and grads[0].dtype == np.dtype(dtype)
    assert grads[1].shape == (0, 6) and grads[1].dtype == np.dtype(dtype)


# --------------------------------------------------------------------------------------------------
# x64 off
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_dtype", [np.int32, np.uint32], ids=dtype_name)
def test_x64_off_accepts_32_bit_ids(id_dtype):
    case = EXTRA_CASES[0]  # duplicates_first_wins
    with jax.enable_x64(False):
        ids_list, embeddings_list, inp = _literal_inputs(case, id_dtype, np.float32)
        assert_array_bits_equal(
            OP(ids_list, embeddings_list, inp), _literal_output(case, np.float32), "output"
        )
        assert_array_bits_equal(
            jax.jit(OP)(ids_list, embeddings_list, inp), _literal_output(case, np.float32), "jit"
        )
        grads = _literal_grads(case, np.float32)
        assert_list_bits_equal(
            GRAD_OP(ids_list, inp, grads), _literal_grads_out(case, np.float32), "gradient"
        )
        got = jax.grad(lambda e: jnp.sum(grads * OP(ids_list, e, inp)))(embeddings_list)
        assert_list_bits_equal(got, _literal_grads_out(case, np.float32), "grad")


@pytest.mark.parametrize("id_dtype", [np.int64, np.uint64], ids=dtype_name)
def test_x64_off_rejects_64_bit_numpy_ids(id_dtype):
    """JAX would silently truncate 2**32 + 1 to 1 with x64 off; the ops refuse 64-bit numpy ids."""
    wide_ids, wide_input = np.array([1, 2**32 + 1], id_dtype), np.array([2**32 + 1], id_dtype)
    embeddings_list = [np.zeros((2, 2), np.float32)]
    x64_error = r"(?s).*(x64|64-bit|64 bit)"
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=starts_with_op_names(OP_NAME, "ids_list", "input")):
            OP([wide_ids], embeddings_list, wide_input)
        with pytest.raises(TypeError, match=x64_error):
            OP([wide_ids], embeddings_list, wide_input)
        grads = np.zeros((1, 2), np.float32)
        with pytest.raises(TypeError, match=starts_with_op_names(GRAD_NAME, "ids_list", "input")):
            GRAD_OP([wide_ids], wide_input, grads)
        with pytest.raises(TypeError, match=x64_error):
            GRAD_OP([wide_ids], wide_input, grads)


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_VMAP_SIZES = (6, 4, 0, 12)  # K_s per table, the same for every example (table 2 empty)
_VMAP_INPUT = (6, 5)  # per-example input shape (more rows than the kernels prefetch ahead)
_VMAP_D = 3

# name -> (ids axes per table, embeddings axes per table, input axis, axis_size)
_VMAP_MODES = {
    "all_axis0": ([0, 0, 0, 0], [0, 0, 0, 0], 0, None),
    "input_axis0": ([None] * 4, [None] * 4, 0, None),
    "input_axis1": ([None] * 4, [None] * 4, 1, None),
    "embs_axis1_input_axis_neg1": ([None] * 4, [1, 1, 1, 1], -1, None),
    "tables_axis0_input_unbatched": ([0, 0, 0, 0], [0, 0, 0, 0], None, None),
    "mixed_per_table": ([0, None, 1, -1], [None, 2, 0, -1], 1, None),
    "ids_only": ([0, 0, 0, 0], [None] * 4, None, None),
    "all_unbatched_axis_size": ([None] * 4, [None] * 4, None, _B),
}


def _vmap_examples(id_dtype, dtype, seed, width=_VMAP_D, special=True):
    """Per-example tables, embeddings and inputs over one pool of 10 ids. Tables 0 and 1 are
    random draws from the pool; table 3 is a permutation of the whole pool plus duplicates. So
    any example's input maps in any mix of examples' tables, and the first-wins picks differ
    between examples (tables 0 and 1 shadow table 3 differently)."""
    rng = np.random.default_rng(seed)
    pool = id_pool(rng, id_dtype, 10)
    ids, embs, inputs = [], [], []
    for _ in range(_B):
        ids.append(
            [
                pool[rng.integers(0, 10, size=_VMAP_SIZES[0])],
                pool[rng.integers(0, 10, size=_VMAP_SIZES[1])],
                pool[:0],
                np.concatenate([rng.permutation(pool), pool[rng.integers(0, 10, size=2)]]),
            ]
        )
        embs.append([random_floats(rng, dtype, (k, width), special) for k in _VMAP_SIZES])
        inputs.append(pool[rng.integers(0, 10, size=_VMAP_INPUT)])
    return ids, embs, inputs


def _batch_tables(per_example: list, axes: list, fixed: int):
    """per_example[b][s] -> (list of batched tables, per-example lists of tables)."""
    batched, seen = [], []
    for s, axis in enumerate(axes):
        arg, values = batch_leaf([tables[s] for tables in per_example], axis, fixed)
        batched.append(arg)
        seen.append(values)
    return batched, [[seen[s][b] for s in range(len(axes))] for b in range(_B)]


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "id_dtype, dtype",
    [(np.int64, np.float32), (np.uint32, jnp.bfloat16)],
    ids=["int64_float32", "uint32_bfloat16"],
)
@pytest.mark.parametrize("mode", list(_VMAP_MODES))
def test_vmap_matches_loop(mode, id_dtype, dtype, use_jit):
    ids_axes, embs_axes, input_axis, axis_size = _VMAP_MODES[mode]
    ids, embs, inputs = _vmap_examples(id_dtype, dtype, seed=len(mode))
    ids_arg, ids_ex = _batch_tables(ids, ids_axes, fixed=1)
    embs_arg, embs_ex = _batch_tables(embs, embs_axes, fixed=2)
    input_arg, input_ex = batch_leaf(inputs, input_axis, fixed=0)
    batched = jax.vmap(
        lambda i, e, x: OP(i, e, x, use_multi_threads=False),
        in_axes=(ids_axes, embs_axes, input_axis),
        axis_size=axis_size,
    )
    if use_jit:
        batched = jax.jit(batched)
    want = np.stack(
        [oracle.map_id_to_embedding(ids_ex[b], embs_ex[b], input_ex[b]) for b in range(_B)]
    )
    assert_array_bits_equal(batched(ids_arg, embs_arg, input_arg), want, "batched output")


# name -> (ids axes per table, input axis, grads axis, axis_size)
_VMAP_GRAD_MODES = {
    "all_axis0": ([0, 0, 0, 0], 0, 0, None),
    "grads_only_axis1": ([None] * 4, None, 1, None),
    "input_and_grads_axis_neg1": ([None] * 4, -1, -1, None),
    "ids_and_input_grads_unbatched": ([0, 0, 0, 0], 1, None, None),
    "mixed_per_table": ([None, 0, -1, 0], 0, 2, None),
    "all_unbatched_axis_size": ([None] * 4, None, None, _B),
}


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("mode", list(_VMAP_GRAD_MODES))
def test_vmap_gradient_op_matches_loop(mode, use_jit):
    ids_axes, input_axis, grads_axis, axis_size = _VMAP_GRAD_MODES[mode]
    ids, _, inputs = _vmap_examples(np.uint64, np.float32, seed=7)
    rng = np.random.default_rng(8)
    grads = [
        random_floats(rng, np.float32, _VMAP_INPUT + (_VMAP_D,), special=False) for _ in range(_B)
    ]
    ids_arg, ids_ex = _batch_tables(ids, ids_axes, fixed=2)
    input_arg, input_ex = batch_leaf(inputs, input_axis, fixed=1)
    grads_arg, grads_ex = batch_leaf(grads, grads_axis, fixed=0)
    batched = jax.vmap(GRAD_OP, in_axes=(ids_axes, input_axis, grads_axis), axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    per_example = [
        oracle.map_id_to_embedding_gradient(ids_ex[b], input_ex[b], grads_ex[b]) for b in range(_B)
    ]
    want = [np.stack([per_example[b][s] for b in range(_B)]) for s in range(len(_VMAP_SIZES))]
    assert_list_bits_equal(batched(ids_arg, input_arg, grads_arg), want, "batched gradient")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap: tables per outer example (axis 0), input's axis 1. Inner vmap: input's axis 0,
    tables unbatched."""
    ids, embs, _ = _vmap_examples(np.int32, np.float64, seed=21)
    pool = np.unique(np.concatenate(ids[0]))
    rng = np.random.default_rng(22)
    inp = pool[rng.integers(0, len(pool), size=(2, _B, 5))]  # [inner, outer, n]
    ids_arg = [np.stack([ids[b][s] for b in range(_B)]) for s in range(len(_VMAP_SIZES))]
    embs_arg = [np.stack([embs[b][s] for b in range(_B)]) for s in range(len(_VMAP_SIZES))]

    inner = jax.vmap(OP, in_axes=(None, None, 0))
    batched = jax.vmap(inner, in_axes=(0, 0, 1))
    if use_jit:
        batched = jax.jit(batched)
    want = np.stack(
        [
            np.stack([oracle.map_id_to_embedding(ids[o], embs[o], inp[k, o]) for k in range(2)])
            for o in range(_B)
        ]
    )
    assert_array_bits_equal(batched(ids_arg, embs_arg, inp), want, "nested")


@pytest.mark.parametrize("tables_batched", [False, True], ids=["shared_tables", "batched_tables"])
def test_vmap_of_grad_matches_loop(tables_batched):
    """Per-example gradients with per-example input (integer batched operand under grad)."""
    ids, embs, inputs = _vmap_examples(np.int64, np.float64, seed=3, special=False)
    rng = np.random.default_rng(4)
    weights = np.stack([rng.normal(size=_VMAP_INPUT + (_VMAP_D,)) for _ in range(_B)])
    t_axes = 0 if tables_batched else None
    ids_arg, ids_ex = _batch_tables(ids, [t_axes] * 4, fixed=0)
    embs_arg, _ = _batch_tables(embs, [t_axes] * 4, fixed=0)

    def loss(i, e, x, w):
        return jnp.sum(w * OP(i, e, x))

    in_axes = ([t_axes] * 4, [t_axes] * 4, 0, 0)
    grad_fn = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=in_axes))
    got = grad_fn(ids_arg, embs_arg, np.stack(inputs), weights)
    per_example = [
        oracle.map_id_to_embedding_gradient(ids_ex[b], inputs[b], weights[b]) for b in range(_B)
    ]
    want = [np.stack([per_example[b][s] for b in range(_B)]) for s in range(len(_VMAP_SIZES))]
    assert_list_bits_equal(got, want, "per-example grad")


# --------------------------------------------------------------------------------------------------
# Autodiff: vjp, jvp, grad-of-grad, linear_transpose, check_grads (float64)
# --------------------------------------------------------------------------------------------------

# (name, id dtype, table sizes, input shape, D)
_AD_CASES = (
    ("S1_rank1", np.int64, (5,), (7,), 2),
    ("S3_rank2_empty_table", np.uint64, (4, 0, 6), (3, 4), 3),
    ("S10_rank0", np.int32, (2, 1, 0, 3, 1, 1, 2, 0, 4, 1), (), 2),
)
_AD_PARAMS = [pytest.param(i, sz, sh, d, id=name) for name, i, sz, sh, d in _AD_CASES]


def _ad_inputs(id_dtype, sizes, input_shape, width, seed=0):
    case = RandomCase("ad", id_dtype, np.float64, len(sizes), input_shape, width, False, sizes)
    ids_list, _, inp = _random_inputs(case, seed, special=False)
    rng = np.random.default_rng(100 + seed)
    embs = [rng.normal(size=(k, width)) for k in sizes]
    tangents = [rng.normal(size=(k, width)) for k in sizes]
    cotangent = rng.normal(size=input_shape + (width,))
    return ids_list, inp, embs, tangents, cotangent


@pytest.mark.parametrize("id_dtype, sizes, input_shape, width", _AD_PARAMS)
def test_vjp_and_jvp_vs_oracle(id_dtype, sizes, input_shape, width):
    ids_list, inp, embs, tangents, cotangent = _ad_inputs(id_dtype, sizes, input_shape, width)
    f = lambda e: OP(ids_list, e, inp)  # noqa: E731

    primal, vjp_fn = jax.vjp(f, embs)
    assert_array_bits_equal(primal, oracle.map_id_to_embedding(ids_list, embs, inp), "primal")
    (cotangent_in,) = vjp_fn(cotangent)
    want = oracle.map_id_to_embedding_gradient(ids_list, inp, cotangent)
    assert_list_bits_equal(cotangent_in, want, "vjp")

    # JVP = the op applied to the tangents.
    primal_out, tangent_out = jax.jvp(f, (embs,), (tangents,))
    assert_array_bits_equal(primal_out, oracle.map_id_to_embedding(ids_list, embs, inp), "primal")
    want_tangent = oracle.map_id_to_embedding(ids_list, tangents, inp)
    assert_array_bits_equal(tangent_out, want_tangent, "jvp")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_grad_wrt_one_table(use_jit):
    """Differentiating w.r.t. one table only (the others constants: symbolic-zero tangents)."""
    ids_list, inp, embs, _, cotangent = _ad_inputs(np.int64, (4, 0, 6), (3, 4), 3, seed=5)

    def loss(e1):
        return jnp.sum(cotangent * OP(ids_list, [embs[0], embs[1], e1], inp))

    grad = jax.grad(loss)
    if use_jit:
        grad = jax.jit(grad)
    want = oracle.map_id_to_embedding_gradient(ids_list, inp, cotangent)[2]
    assert_array_bits_equal(grad(embs[2]), want, "grad of table 2")


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("id_dtype, sizes, input_shape, width", _AD_PARAMS)
def test_linear_transpose_and_double_transpose(id_dtype, sizes, input_shape, width, use_jit):
    ids_list, inp, embs, _, cotangent = _ad_inputs(id_dtype, sizes, input_shape, width, seed=1)
    f = lambda e: OP(ids_list, e, inp)  # noqa: E731
    f_t = jax.linear_transpose(f, embs)
    f_tt = jax.linear_transpose(lambda c: f_t(c)[0], cotangent)
    g = lambda c: GRAD_OP(ids_list, inp, c)  # noqa: E731
    g_t = jax.linear_transpose(g, cotangent)
    g_tt = jax.linear_transpose(lambda e: g_t(e)[0], embs)
    if use_jit:
        f_t, f_tt, g_t, g_tt = jax.jit(f_t), jax.jit(f_tt), jax.jit(g_t), jax.jit(g_tt)

    want_transpose = oracle.map_id_to_embedding_gradient(ids_list, inp, cotangent)
    assert_list_bits_equal(f_t(cotangent)[0], want_transpose, "transpose")
    want_forward = oracle.map_id_to_embedding(ids_list, embs, inp)
    assert_array_bits_equal(f_tt(embs)[0], want_forward, "double transpose")
    # The gradient op's transpose is the forward op, and its double transpose the gradient op.
    assert_array_bits_equal(g_t(embs)[0], want_forward, "transpose of the gradient op")
    assert_list_bits_equal(g_tt(cotangent)[0], want_transpose, "double transpose of gradient op")


@pytest.mark.parametrize("id_dtype, sizes, input_shape, width", _AD_PARAMS)
def test_check_grads(id_dtype, sizes, input_shape, width):
    ids_list, inp, embs, _, cotangent = _ad_inputs(id_dtype, sizes, input_shape, width, seed=2)
    kw = dict(order=2, modes=("fwd", "rev"))
    jax.test_util.check_grads(lambda e: OP(ids_list, e, inp), (embs,), **kw)
    jax.test_util.check_grads(lambda c: GRAD_OP(ids_list, inp, c), (cotangent,), **kw)
    if sizes == _AD_CASES[1][2]:
        # Nonlinear around the op, so second derivatives are not all zero (one case: slow).
        jax.test_util.check_grads(
            lambda e: jnp.sin(OP(ids_list, e, inp)) * OP(ids_list, e, inp) ** 2, (embs,), **kw
        )


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("id_dtype, sizes, input_shape, width", _AD_PARAMS)
def test_grad_of_grad(id_dtype, sizes, input_shape, width, use_jit):
    """f(e) = sum(w * (P e)**2): grad f = 2 P^T (w * P e) and the Hessian-vector product with v is
    2 P^T (w * P v), where P is the lookup and P^T the gradient op."""
    ids_list, inp, embs, v, w = _ad_inputs(id_dtype, sizes, input_shape, width, seed=3)

    def f(e):
        return jnp.sum(w * OP(ids_list, e, inp) ** 2)

    def hvp(e):
        return jax.grad(lambda x: sum(jnp.sum(a * b) for a, b in zip(v, jax.grad(f)(x))))(e)

    grad_f, hvp_fn = jax.grad(f), hvp
    if use_jit:
        grad_f, hvp_fn = jax.jit(grad_f), jax.jit(hvp_fn)
    pe = oracle.map_id_to_embedding(ids_list, embs, inp)
    pv = oracle.map_id_to_embedding(ids_list, v, inp)
    want_grad = oracle.map_id_to_embedding_gradient(ids_list, inp, 2 * w * pe)
    want_hvp = oracle.map_id_to_embedding_gradient(ids_list, inp, 2 * w * pv)
    for got, want in ((grad_f(embs), want_grad), (hvp_fn(embs), want_hvp)):
        assert isinstance(got, list) and len(got) == len(want)
        for g, x in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), x, rtol=1e-13, atol=1e-13)
    # Through the public gradient op: its gradient is the forward op.
    grad_g = jax.grad(
        lambda c: sum(jnp.sum(a * b) for a, b in zip(embs, GRAD_OP(ids_list, inp, c)))
    )
    want = oracle.map_id_to_embedding(ids_list, embs, inp)
    assert_array_bits_equal(grad_g(w), want, "grad of the gradient op")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


_IDS = [np.array([1, 2], np.int64), np.array([3], np.int64)]
_EMBS = [np.zeros((2, 2), np.float32), np.ones((1, 2), np.float32)]
_INPUT = np.array([3, 1, 2], np.int64)
_IDS_OR_INPUT = ("ids_list", "input")


def _call(use_jit, fn, *args, **kwargs):
    if use_jit:
        return jax.jit(functools.partial(fn, **kwargs))(*args)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_error_list_lengths_differ(use_jit):
    with pytest.raises(
        ValueError, match=rf"^{OP_NAME}\b(?s:.*)ids length and embeddings length must match"
    ):
        _call(use_jit, OP, _IDS, _EMBS[:1], _INPUT)
    with pytest.raises(
        ValueError, match=rf"^{OP_NAME}\b(?s:.*)ids length and embeddings length must match"
    ):
        _call(use_jit, OP, _IDS[:1], _EMBS, _INPUT)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids_list, embeddings_list, inp, args",
    [
        ([], [], _INPUT, ("ids_list", "embeddings_list")),
        ([np.array([[1, 2]], np.int64), _IDS[1]], _EMBS, _INPUT, ("ids_list",)),
        ([np.int64(1)], [np.zeros((1, 2), np.float32)], _INPUT, ("ids_list",)),
        (_IDS, [np.zeros((2, 2, 1), np.float32), _EMBS[1]], _INPUT, ("embeddings_list",)),
        (_IDS, [np.zeros(2, np.float32), _EMBS[1]], _INPUT, ("embeddings_list",)),
        (_IDS, [np.zeros((3, 2), np.float32), _EMBS[1]], _INPUT, ("embeddings_list", "ids_list")),
        (_IDS, [_EMBS[0], np.zeros((0, 2), np.float32)], _INPUT, ("embeddings_list", "ids_list")),
        (_IDS, [_EMBS[0], np.zeros((1, 3), np.float32)], _INPUT, ("embeddings_list",)),
    ],
    ids=[
        "S_zero",
        "ids_2d",
        "ids_0d",
        "embeddings_3d",
        "embeddings_1d",
        "more_rows_than_ids",
        "fewer_rows_than_ids",
        "widths_differ",
    ],
)
def test_error_value(ids_list, embeddings_list, inp, args, use_jit):
    with pytest.raises(ValueError, match=starts_with_op_names(OP_NAME, *args)):
        _call(use_jit, OP, ids_list, embeddings_list, inp)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids_list, embeddings_list, inp, args",
    [
        ([_IDS[0], _IDS[1].astype(np.int32)], _EMBS, _INPUT, ("ids_list",)),
        (_IDS, _EMBS, _INPUT.astype(np.uint64), ("input", "ids_list")),
        (_IDS, _EMBS, _INPUT.astype(np.int32), ("input", "ids_list")),
        ([i.astype(np.float32) for i in _IDS], _EMBS, _INPUT.astype(np.float32), _IDS_OR_INPUT),
        ([i.astype(np.int16) for i in _IDS], _EMBS, _INPUT.astype(np.int16), _IDS_OR_INPUT),
        (_IDS, _EMBS, _INPUT.astype(np.float64), ("input",)),
        (_IDS, [_EMBS[0], _EMBS[1].astype(np.float64)], _INPUT, ("embeddings_list",)),
        (_IDS, [e.astype(np.int32) for e in _EMBS], _INPUT, ("embeddings_list",)),
        (_IDS, [e.astype(np.float16) for e in _EMBS], _INPUT, ("embeddings_list",)),
    ],
    ids=[
        "ids_dtypes_differ",
        "input_uint64_ids_int64",
        "input_int32_ids_int64",
        "ids_float32",
        "ids_int16",
        "input_float64",
        "embeddings_dtypes_differ",
        "embeddings_int32",
        "embeddings_float16",
    ],
)
def test_error_type(ids_list, embeddings_list, inp, args, use_jit):
    with pytest.raises(TypeError, match=starts_with_op_names(OP_NAME, *args)):
        _call(use_jit, OP, ids_list, embeddings_list, inp)


_GRADS = np.ones((3, 2), np.float32)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids_list, inp, grads, error, args",
    [
        (_IDS, _INPUT, np.ones((4, 2), np.float32), ValueError, ("grads", "input")),
        (_IDS, _INPUT, np.ones((3,), np.float32), ValueError, ("grads", "input")),
        (_IDS, _INPUT, np.float32(1), ValueError, ("grads",)),
        (_IDS, _INPUT[None], _GRADS, ValueError, ("grads", "input")),
        ([np.array([[1, 2]], np.int64), _IDS[1]], _INPUT, _GRADS, ValueError, ("ids_list",)),
        ([_IDS[0], _IDS[1].astype(np.uint64)], _INPUT, _GRADS, TypeError, ("ids_list",)),
        (_IDS, _INPUT.astype(np.int32), _GRADS, TypeError, ("input", "ids_list")),
        (_IDS, _INPUT, _GRADS.astype(np.int32), TypeError, ("grads",)),
        (_IDS, _INPUT, _GRADS.astype(np.float16), TypeError, ("grads",)),
    ],
    ids=[
        "grads_rows_differ",
        "grads_missing_width_axis",
        "grads_0d",
        "input_rank_differs",
        "ids_2d",
        "ids_dtypes_differ",
        "input_dtype_differs",
        "grads_int32",
        "grads_float16",
    ],
)
def test_gradient_op_errors(ids_list, inp, grads, error, args, use_jit):
    with pytest.raises(error, match=starts_with_op_names(GRAD_NAME, *args)):
        _call(use_jit, GRAD_OP, ids_list, inp, grads)


# (ids_list, input, missing id): 2**32 + 5 and -(2**32) + 5 share their low 32 bits with 5.
_MISSING_CASES = [
    pytest.param([np.array([1, 2], np.int64)], np.array([1, -7, 2], np.int64), -7, id="int64_neg"),
    pytest.param(
        [np.array([5], np.int64), np.array([1], np.int64)],
        np.array([[5, 1], [2**32 + 5, 5]], np.int64),
        2**32 + 5,
        id="int64_high_bits",
    ),
    pytest.param(
        [np.array([5, 0], np.int64)], np.array([0, -(2**32) + 5], np.int64), -(2**32) + 5,
        id="int64_negative_high_bits",
    ),
    pytest.param(
        [np.array([0, 2**63 - 1], np.uint64)], np.array([2**64 - 1], np.uint64), 2**64 - 1,
        id="uint64_max",
    ),
    pytest.param(
        [np.array([2**31 - 1], np.int32)], np.array(-(2**31), np.int32), -(2**31), id="int32_min_0d"
    ),
    pytest.param(
        [np.array([1], np.uint32), np.array([], np.uint32)],
        np.array([1, 2**32 - 1], np.uint32),
        2**32 - 1,
        id="uint32_max",
    ),
    pytest.param(
        [np.array([], np.int64), np.array([], np.int64)], np.array([4], np.int64), 4,
        id="all_tables_empty",
    ),
]


def _tables_for(ids_list, dtype=np.float32, width=2):
    return [np.arange(len(t) * width, dtype=dtype).reshape(len(t), width) for t in ids_list]


@pytest.mark.parametrize("use_multi_threads", [True, False], ids=["mt", "st"])
@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("ids_list, inp, missing", _MISSING_CASES)
def test_error_missing_id(ids_list, inp, missing, use_jit, use_multi_threads):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        out = _call(
            use_jit, OP, ids_list, _tables_for(ids_list), inp, use_multi_threads=use_multi_threads
        )
        np.asarray(out)
    assert_unable_to_map(excinfo, OP_NAME, missing)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("ids_list, inp, missing", _MISSING_CASES)
def test_gradient_op_error_missing_id(ids_list, inp, missing, use_jit):
    grads = np.ones(np.shape(inp) + (2,), np.float32)
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        out = _call(use_jit, GRAD_OP, ids_list, inp, grads)
        [np.asarray(o) for o in out]
    assert_unable_to_map(excinfo, GRAD_NAME, missing)


@pytest.mark.parametrize("use_multi_threads", [True, False], ids=["mt", "st"])
def test_error_missing_id_in_large_input(use_multi_threads):
    """One missing id (repeated) in the middle of ~3e5 lookups: every thread block's share."""
    ids_list, embeddings_list, inp, _ = _large_case()
    inp = inp.copy()
    missing = int(np.iinfo(np.int64).max) - 12345
    assert all(missing not in t for t in ids_list), "test bug"
    inp[300, 250] = missing
    inp[599, 499] = missing
    fn = jax.jit(functools.partial(OP, use_multi_threads=use_multi_threads))
    with pytest.raises(runtime_errors(True)) as excinfo:
        np.asarray(fn(ids_list, embeddings_list, inp))
    assert_unable_to_map(excinfo, OP_NAME, missing)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_error_missing_id_under_vmap(use_jit):
    """A missing id in one example of a batch fails the batched call, forward and gradient op."""
    ids_list = [np.array([1, 2], np.uint64), np.array([3], np.uint64)]
    inp = np.array([[1, 2, 3], [3, 2**40, 1]], np.uint64)
    fwd = jax.vmap(OP, in_axes=(None, None, 0))
    if use_jit:
        fwd = jax.jit(fwd)
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        np.asarray(fwd(ids_list, _tables_for(ids_list), inp))
    assert_unable_to_map(excinfo, OP_NAME, 2**40)
    # Batched tables, too: example 1's tables lack 3.
    batched_ids = [np.array([[1, 2], [1, 2]], np.uint64), np.array([[3], [4]], np.uint64)]
    with pytest.raises(runtime_errors(True)) as excinfo:
        out = jax.jit(jax.vmap(OP, in_axes=(0, None, None)))(
            batched_ids, _tables_for(ids_list), np.array([3, 1], np.uint64)
        )
        np.asarray(out)
    assert_unable_to_map(excinfo, OP_NAME, 3)
    grad = jax.vmap(GRAD_OP, in_axes=(None, 0, 0))
    if use_jit:
        grad = jax.jit(grad)
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        [np.asarray(o) for o in grad(ids_list, inp, np.ones((2, 3, 2), np.float32))]
    assert_unable_to_map(excinfo, GRAD_NAME, 2**40)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_zero_width_rows(use_jit):
    """D = 0: empty rows forward, zero-width table gradients (the op and jax.grad)."""
    ids_list = [np.array([3, 1], np.int64), np.array([8], np.int64)]
    tables = [np.zeros((2, 0), np.float32), np.zeros((1, 0), np.float32)]
    inp = np.array([[8, 3], [1, 8]], np.int64)
    grads = np.zeros((2, 2, 0), np.float32)
    maybe_jit = jax.jit if use_jit else (lambda f: f)
    out = maybe_jit(OP)(ids_list, tables, inp)
    assert_array_bits_equal(out, oracle.map_id_to_embedding(ids_list, tables, inp), "output")
    want = oracle.map_id_to_embedding_gradient(ids_list, inp, grads)
    got = maybe_jit(GRAD_OP)(ids_list, inp, grads)
    d_tables = maybe_jit(jax.grad(lambda t: jnp.sum(OP(ids_list, t, inp))))(tables)
    for s in range(2):
        assert_array_bits_equal(got[s], want[s], f"gradient op, table {s}")
        assert_array_bits_equal(d_tables[s], want[s], f"jax.grad, table {s}")


def test_wide_gradient_vs_oracle():
    """Tables over 8 MiB in all and over 65536 lookups: the parallel range-by-range scatter-add,
    whose ranges cross table boundaries, sums every row in ascending lookup order."""
    rng = np.random.default_rng(44)
    sizes = (60_000, 50_000, 40_000)
    ids = rng.permutation(10 * sum(sizes))[: sum(sizes)].astype(np.int64) - 5 * sum(sizes)
    ids_list = list(np.split(ids, np.cumsum(sizes)[:-1]))
    inp = ids[rng.integers(0, len(ids), size=200_000)]
    inp[rng.random(inp.shape) < 0.2] = ids[60_001]  # one heavy id, in table 1
    grads = random_floats(rng, np.float32, inp.shape + (16,), special=False)
    want = oracle.map_id_to_embedding_gradient(ids_list, inp, grads)
    got = jax.jit(GRAD_OP)(ids_list, inp, grads)
    for s in range(len(sizes)):
        assert_array_bits_equal(got[s], want[s], f"table {s}")


def test_wide_gradient_reports_first_missing_id():
    """Missing ids in two counting tasks of the parallel range-by-range path: the first one, in
    lookup order, is named (not whichever task fails first)."""
    rng = np.random.default_rng(45)
    sizes = (60_000, 50_000, 40_000)
    ids = rng.permutation(sum(sizes)).astype(np.int64)
    ids_list = list(np.split(ids, np.cumsum(sizes)[:-1]))
    inp = ids[rng.integers(0, len(ids), size=200_000)]
    inp[150_000] = 10**12  # a missing id in a later task
    inp[70_000] = 10**12 + 7  # the first missing id
    grads = random_floats(rng, np.float32, inp.shape + (16,), special=False)
    with pytest.raises(runtime_errors(use_jit=False)) as excinfo:
        np.asarray(jax.jit(GRAD_OP)(ids_list, inp, grads)[0])
    assert_unable_to_map(excinfo, "map_id_to_embedding_gradient_back_prop", 10**12 + 7)
