"""Tests for `jax_distops.reorder_by_indices` (spec section 2 and Appendix A20; DESIGN.md 1-3).

Expected values come only from (a) the spec's hand-worked vectors (section 2.6, Appendix A20),
transcribed literally below, plus hand-worked vectors of our own (float keys, duplicates' shard
ids, integer extremes), or (b) the independent numpy oracle in `tests/oracle.py`, which is itself
anchored to the literal vectors by `test_oracle_matches_literal_vectors`. Nothing expected is
computed by the op under test.

Battery (STYLE.md rule 10), adapted to an op without a gradient:
  * forward: the literal vectors for every input dtype (int32, int64, uint32, uint64, float32,
    float64) and both shard-id dtypes, 1-D and 2-D inputs;
  * jit and no-jit through `chex.variants` (static arguments are closed over);
  * random inputs vs the oracle (S in {1, 2, 5, 64}, heavy duplicates, keys shared by rows with
    different other columns, +-0.0 and NaN keys, empty inputs), bit for bit, plus large inputs;
  * vmap vs a Python loop (every argument mapped and unmapped, in_axes 1 and -1, nested);
  * every documented error (trace-time ValueError/TypeError, run-time JaxRuntimeError).
There is no `check_grads` / `linear_transpose` part: the op has no gradient rule.

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
    bits,
    colliding_ids,
    dtype_name,
    runtime_errors,
)

OP = jax_distops.reorder_by_indices
FIELDS = ("output", "shard_sizes", "num_unique")
SHARD_ID_DTYPES = (np.int32, np.int64)
INT_DTYPES = (np.int32, np.int64, np.uint32, np.uint64)
FLOAT_DTYPES = (np.float32, np.float64)
INPUT_DTYPES = INT_DTYPES + FLOAT_DTYPES
NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: inputs and the kept rows, written out literally."""

    name: str
    input: tuple  # [N] or [N, E] as nested tuples
    row_shape: Tuple[int, ...]  # () for 1-D input, (E,) for 2-D (needed when N == 0)
    shard_ids: Tuple[int, ...]
    num_of_shards: int
    kept: tuple  # the valid rows of `output`, before zero padding
    shard_sizes: Tuple[int, ...]
    dtypes: Tuple[type, ...] = INPUT_DTYPES


SPEC_CASES = (
    # Spec 2.2 / 2.6 `test_reorder_by_indices`: shard_ids = ids mod 3 (int32).
    LiteralCase(
        name="spec_test_reorder_by_indices",
        input=(0, 1, 2, 2, 3, 5),
        row_shape=(),
        shard_ids=(0, 1, 2, 2, 0, 2),
        num_of_shards=3,
        kept=(3, 0, 1, 5, 2),
        shard_sizes=(2, 1, 2),
    ),
    # Spec 2.2 / 2.6, the docstring example.
    LiteralCase(
        name="spec_docstring",
        input=(1, 2, 3, 2),
        row_shape=(),
        shard_ids=(1, 0, 1, 0),
        num_of_shards=2,
        kept=(2, 3, 1),
        shard_sizes=(1, 2),
    ),
    # Appendix A20: the key of a 2-D row is its first column only; the second row is dropped.
    LiteralCase(
        name="A20_first_column_key",
        input=((1, 2), (1, 3)),
        row_shape=(2,),
        shard_ids=(0, 0),
        num_of_shards=1,
        kept=((1, 2),),
        shard_sizes=(1,),
    ),
)

EXTRA_CASES = (
    # A20 again, the dropped duplicate naming another shard: its shard id is ignored.
    LiteralCase(
        name="A20_duplicate_shard_ignored",
        input=((1, 2), (1, 3)),
        row_shape=(2,),
        shard_ids=(0, 1),
        num_of_shards=2,
        kept=((1, 2),),
        shard_sizes=(1, 0),
    ),
    # Only the first occurrence's shard counts (spec 2.2 step 2).
    LiteralCase(
        name="duplicates_shard_ids_ignored",
        input=(5, 5, 5),
        row_shape=(),
        shard_ids=(1, 0, 0),
        num_of_shards=2,
        kept=(5,),
        shard_sizes=(0, 1),
    ),
    # Kept: row 0 (key 1, shard 0), row 1 (key 2, shard 1), row 3 (key 3, shard 0); shard 0
    # reversed is rows 3, 0.
    LiteralCase(
        name="2d_first_column_key_reversed",
        input=((1, 10), (2, 20), (1, 30), (3, 40), (2, 50)),
        row_shape=(2,),
        shard_ids=(0, 1, 1, 0, 0),
        num_of_shards=2,
        kept=((3, 40), (1, 10), (2, 20)),
        shard_sizes=(2, 1),
    ),
    LiteralCase(
        name="one_shard_reversed",
        input=(4, 3, 4, 2, 1, 3),
        row_shape=(),
        shard_ids=(0, 0, 0, 0, 0, 0),
        num_of_shards=1,
        kept=(1, 2, 3, 4),
        shard_sizes=(4,),
    ),
    LiteralCase(
        name="one_id_last_of_64_shards",
        input=(7,),
        row_shape=(),
        shard_ids=(63,),
        num_of_shards=64,
        kept=(7,),
        shard_sizes=(0,) * 63 + (1,),
    ),
    LiteralCase(
        name="empty_1d",
        input=(),
        row_shape=(),
        shard_ids=(),
        num_of_shards=3,
        kept=(),
        shard_sizes=(0, 0, 0),
    ),
    LiteralCase(
        name="empty_2d",
        input=(),
        row_shape=(3,),
        shard_ids=(),
        num_of_shards=2,
        kept=(),
        shard_sizes=(0, 0),
    ),
    LiteralCase(
        name="2d_one_column",
        input=((4,), (4,), (9,)),
        row_shape=(1,),
        shard_ids=(1, 0, 1),
        num_of_shards=2,
        kept=((9,), (4,)),
        shard_sizes=(0, 2),
    ),
    # Float keys (spec 2.2 step 5): -0.0 is the key 0.0 seen at row 0 (dropped); both NaNs kept.
    # Shard 0: [nan (row 2)]; shard 1: rows 0, 3, 4 reversed = [1.0, nan, 0.0].
    LiteralCase(
        name="float_signed_zero_and_nan",
        input=(0.0, -0.0, NAN, NAN, 1.0),
        row_shape=(),
        shard_ids=(1, 0, 0, 1, 1),
        num_of_shards=2,
        kept=(NAN, 1.0, NAN, 0.0),
        shard_sizes=(1, 3),
        dtypes=FLOAT_DTYPES,
    ),
    # The first occurrence -0.0 is kept as is (bits of -0.0), the later +0.0 dropped.
    LiteralCase(
        name="float_negative_zero_first",
        input=(-0.0, 0.0, -0.0),
        row_shape=(),
        shard_ids=(0, 1, 1),
        num_of_shards=2,
        kept=(-0.0,),
        shard_sizes=(1, 0),
        dtypes=FLOAT_DTYPES,
    ),
    # 2-D float keys: both NaN-keyed rows kept, -0.0 row dropped; reversed: rows 2, 1, 0.
    LiteralCase(
        name="float_2d_nan_keys",
        input=((NAN, 1.0), (NAN, 2.0), (0.0, 3.0), (-0.0, 4.0)),
        row_shape=(2,),
        shard_ids=(0, 0, 0, 0),
        num_of_shards=1,
        kept=((0.0, 3.0), (NAN, 2.0), (NAN, 1.0)),
        shard_sizes=(3,),
        dtypes=FLOAT_DTYPES,
    ),
    # int64 extremes: kept rows 0 (shard 0), 1 (shard 1), 2 (shard 0).
    LiteralCase(
        name="int64_extremes",
        input=(-(2**63), 2**63 - 1, -1, -(2**63)),
        row_shape=(),
        shard_ids=(0, 1, 0, 1),
        num_of_shards=2,
        kept=(-1, -(2**63), 2**63 - 1),
        shard_sizes=(2, 1),
        dtypes=(np.int64,),
    ),
    LiteralCase(
        name="int32_extremes",
        input=(-(2**31), 2**31 - 1, -(2**31)),
        row_shape=(),
        shard_ids=(1, 0, 0),
        num_of_shards=2,
        kept=(2**31 - 1, -(2**31)),
        shard_sizes=(1, 1),
        dtypes=(np.int32,),
    ),
    # Top-bit unsigned keys: kept rows 0 (shard 1), 1 (shard 0), 3 (shard 0).
    LiteralCase(
        name="uint64_top_bit",
        input=(2**64 - 1, 2**63, 2**64 - 1, 0),
        row_shape=(),
        shard_ids=(1, 0, 0, 0),
        num_of_shards=2,
        kept=(0, 2**63, 2**64 - 1),
        shard_sizes=(2, 1),
        dtypes=(np.uint64,),
    ),
    LiteralCase(
        name="uint32_top_bit",
        input=(2**32 - 1, 2**31, 2**32 - 1),
        row_shape=(),
        shard_ids=(0, 0, 1),
        num_of_shards=2,
        kept=(2**31, 2**32 - 1),
        shard_sizes=(2, 0),
        dtypes=(np.uint32,),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _arr(data, row_shape, dtype) -> np.ndarray:
    return np.array(data, dtype=dtype).reshape((len(data),) + tuple(row_shape))


def _literal_inputs(case: LiteralCase, dtype, shard_id_dtype):
    return (
        _arr(case.input, case.row_shape, dtype),
        np.array(case.shard_ids, dtype=shard_id_dtype),
    )


def _literal_expected(case: LiteralCase, dtype) -> oracle.ReorderExpected:
    """The literal vectors in the op's padded layout (zero rows after the kept ones)."""
    num_unique = len(case.kept)
    assert sum(case.shard_sizes) == num_unique, "transcription error"
    output = np.zeros((len(case.input),) + tuple(case.row_shape), dtype=dtype)
    output[:num_unique] = _arr(case.kept, case.row_shape, dtype)
    return oracle.ReorderExpected(
        output=output,
        shard_sizes=np.array(case.shard_sizes, dtype=np.int32),
        num_unique=np.array(num_unique, dtype=np.int32),
    )


def _literal_params(cases=LITERAL_CASES):
    """Every case with each of its dtypes; the shard-id dtype alternates so both are covered (the
    spec's own test uses int32 shard ids)."""
    params = []
    for case in cases:
        for k, dtype in enumerate(case.dtypes):
            shard_id_dtype = SHARD_ID_DTYPES[k % 2]
            params.append(
                dict(
                    testcase_name=(
                        f"{case.name}_{dtype_name(dtype)}_sid{dtype_name(shard_id_dtype)}"
                    ),
                    case=case,
                    dtype=dtype,
                    shard_id_dtype=shard_id_dtype,
                )
            )
    return params


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_result_equal(got, want: oracle.ReorderExpected) -> None:
    """Bit-exact equality of every field, with shapes and dtypes (counts int32)."""
    assert isinstance(got, jax_distops.ReorderResult), type(got)
    assert got._fields == FIELDS
    for name in FIELDS:
        want_field = getattr(want, name)
        if name != "output":
            assert want_field.dtype == np.int32, f"test bug: {name} built as {want_field.dtype}"
        assert_array_bits_equal(getattr(got, name), want_field, f"field {name}")


def _stack(expected) -> oracle.ReorderExpected:
    """Stacks per-example expected results along a new leading batch axis."""
    return oracle.ReorderExpected(*[np.stack(fields) for fields in zip(*expected)])


def _random_keys(rng: np.random.Generator, dtype, n: int) -> np.ndarray:
    """Keys with many duplicates: a small range, the dtype's extremes, and for floats +-0.0,
    +-inf and NaN."""
    if jnp.issubdtype(dtype, jnp.floating):
        small = rng.integers(-6, 7, size=n).astype(dtype) / 2
        special = np.array([0.0, -0.0, NAN, np.inf, -np.inf, 1e30], dtype=dtype)
        wide = rng.normal(size=n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        lo = -6 if info.min < 0 else 0
        small = rng.integers(lo, lo + 13, size=n).astype(dtype)
        special = np.array([info.min, info.max, info.max - 1, 0], dtype=dtype)
        wide = rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True)
    pick = rng.choice(3, size=n, p=[0.6, 0.15, 0.25])
    extreme = special[rng.integers(0, len(special), size=n)]
    return np.where(pick == 0, small, np.where(pick == 1, extreme, wide)).astype(dtype)


def _random_inputs(seed, num_of_shards, dtype, shard_id_dtype, two_d):
    """N in [0, 60] (0 every fifth seed). Even seeds: shard ids random per row (duplicates disagree
    with their first occurrence); odd seeds: one shard per key value, as a real sharding would do.
    2-D rows repeat keys with different other columns."""
    rng = np.random.default_rng(3000 + seed)
    n = 0 if seed % 5 == 0 else int(rng.integers(1, 61))
    keys = _random_keys(rng, dtype, n)
    if two_d:
        width = int(rng.integers(1, 4))
        rows = np.zeros((n, width), dtype=dtype)
        rows[:, 0] = keys
        if width > 1:
            rows[:, 1:] = _random_keys(rng, dtype, n * (width - 1)).reshape(n, width - 1)
    else:
        rows = keys
    if seed % 2 == 0:
        shard_ids = rng.integers(0, num_of_shards, size=n)
    else:
        table = {}
        shard_ids = []
        for key in keys.tolist():
            key = "nan" if key != key else (0.0 if key == 0 else key)
            shard_ids.append(table.setdefault(key, int(rng.integers(0, num_of_shards))))
        shard_ids = np.array(shard_ids, dtype=np.int64).reshape(n)
    return rows, shard_ids.astype(shard_id_dtype)


def _random_params():
    params = []
    cases = [(s, d) for s in (1, 2, 5, 64) for d in INPUT_DTYPES]
    for seed, (num_of_shards, dtype) in enumerate(cases):
        shard_id_dtype = SHARD_ID_DTYPES[seed % 2]
        two_d = seed % 3 == 1
        rank = "2d" if two_d else "1d"
        name = f"S{num_of_shards}_{dtype_name(dtype)}_{rank}_sid{dtype_name(shard_id_dtype)}"
        params.append(
            dict(
                testcase_name=name,
                seed=seed,
                num_of_shards=num_of_shards,
                dtype=dtype,
                shard_id_dtype=shard_id_dtype,
                two_d=two_d,
            )
        )
    return params


# Special inputs vs the oracle: (name, input, shard_ids, S).
SPECIAL_CASES = (
    ("empty_S64", np.zeros(0, np.uint64), np.zeros(0, np.int32), 64),
    ("empty_2d_S1", np.zeros((0, 4), np.float64), np.zeros(0, np.int64), 1),
    ("one_key_repeated_S5", np.full(40, 9, np.int64), np.arange(40, dtype=np.int32) % 5, 5),
    ("all_distinct_S2", np.arange(30, dtype=np.uint32)[::-1].copy(),
     np.arange(30, dtype=np.int64) % 2, 2),
    ("all_nan_S3", np.full(7, NAN, np.float32), np.array([2, 0, 1, 2, 0, 1, 2], np.int32), 3),
    ("nan_rows_2d_S2", np.array([[NAN, 1], [NAN, 1], [2, 3], [2, 4]], np.float64),
     np.array([1, 1, 0, 1], np.int64), 2),
)


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, dtype",
    [pytest.param(c, d, id=f"{c.name}-{dtype_name(d)}") for c in LITERAL_CASES for d in c.dtypes],
)
def test_oracle_matches_literal_vectors(case, dtype):
    rows, shard_ids = _literal_inputs(case, dtype, np.int32)
    got = oracle.reorder_by_indices(rows, shard_ids, case.num_of_shards)
    want = _literal_expected(case, dtype)
    for name in FIELDS:
        np.testing.assert_array_equal(
            bits(getattr(got, name)), bits(getattr(want, name)), err_msg=name, strict=True
        )


# --------------------------------------------------------------------------------------------------
# Forward, jit and no-jit
# --------------------------------------------------------------------------------------------------


class ReorderByIndicesVariantsTest(chex.TestCase):
    """Forward checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_literal_params())
    def test_literal_vectors(self, case, dtype, shard_id_dtype):
        rows, shard_ids = _literal_inputs(case, dtype, shard_id_dtype)
        res = self.variant(lambda x, s: OP(x, s, case.num_of_shards))(rows, shard_ids)
        assert_result_equal(res, _literal_expected(case, dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, seed, num_of_shards, dtype, shard_id_dtype, two_d):
        rows, shard_ids = _random_inputs(seed, num_of_shards, dtype, shard_id_dtype, two_d)
        res = self.variant(functools.partial(OP, num_of_shards=num_of_shards))(rows, shard_ids)
        assert_result_equal(res, oracle.reorder_by_indices(rows, shard_ids, num_of_shards))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=name, rows=x, shard_ids=s, num_of_shards=n)
        for name, x, s, n in SPECIAL_CASES
    )
    def test_special_vs_oracle(self, rows, shard_ids, num_of_shards):
        res = self.variant(lambda x, s: OP(x, s, num_of_shards))(rows, shard_ids)
        assert_result_equal(res, oracle.reorder_by_indices(rows, shard_ids, num_of_shards))


def test_ids_of_one_hash_group_vs_oracle():
    """Rows whose ids hash alike in their top 40 bits (testing.colliding_ids): one partition of the
    kernel, and in it one chain of full hash-index groups in which every tag matches."""
    rng = np.random.default_rng(29)
    crowd = colliding_ids(rng, 400, 2**40 - 1)
    rows = np.concatenate([crowd, crowd[::3], rng.integers(0, 10**6, size=600)])
    rng.shuffle(rows)
    shard_ids = rng.integers(0, 6, size=len(rows)).astype(np.int32)
    res = jax.jit(lambda x, s: OP(x, s, 6))(rows, shard_ids)
    assert_result_equal(res, oracle.reorder_by_indices(rows, shard_ids, 6))


@pytest.mark.parametrize(
    "dtype, two_d, num_of_shards",
    [(np.int64, False, 64), (np.float32, True, 5)],
    ids=["int64_1d_S64", "float32_2d_S5"],
)
def test_large_vs_oracle(dtype, two_d, num_of_shards):
    """N = 100_000 rows, about a third of them duplicates, shard ids random per row."""
    rng = np.random.default_rng(num_of_shards)
    n = 100_000
    keys = rng.integers(0, 65_000, size=n).astype(dtype)
    if two_d:
        rows = np.stack([keys, rng.normal(size=n).astype(dtype), -keys], axis=1)
    else:
        rows = keys
    shard_ids = rng.integers(0, num_of_shards, size=n).astype(np.int32)
    res = jax.jit(lambda x, s: OP(x, s, num_of_shards))(rows, shard_ids)
    assert_result_equal(res, oracle.reorder_by_indices(rows, shard_ids, num_of_shards))


@pytest.mark.parametrize("dtype", INPUT_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("shape", [(9,), (9, 4)], ids=["1d", "2d"])
def test_eval_shape(shape, dtype):
    out = jax.eval_shape(
        lambda x, s: OP(x, s, 6),
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct((9,), jnp.int64),
    )
    assert isinstance(out, jax_distops.ReorderResult)
    assert out.output.shape == shape and out.output.dtype == np.dtype(dtype)
    assert out.shard_sizes.shape == (6,) and out.shard_sizes.dtype == np.int32
    assert out.num_unique.shape == () and out.num_unique.dtype == np.int32


def test_x64_off_accepts_32_bit_inputs():
    case = SPEC_CASES[0]
    with jax.enable_x64(False):
        for dtype in (np.int32, np.uint32, np.float32):
            rows, shard_ids = _literal_inputs(case, dtype, np.int32)
            assert_result_equal(OP(rows, shard_ids, 3), _literal_expected(case, dtype))


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_VMAP_MODES = (
    "in_axes_0",
    "in_axes_1",
    "in_axes_neg1_0",
    "batched_unbatched",
    "unbatched_batched",
    "all_unbatched_axis_size",
)


def _vmap_setup(mode, dtype, two_d, num_of_shards, seed=0):
    """Per-example rows x[b] ([10] or [10, 2]) and shard ids s[b] ([10]); returns (in_axes, args,
    examples, axis_size)."""
    rng = np.random.default_rng(seed)
    x = _random_keys(rng, dtype, _B * 10 * (2 if two_d else 1))
    x = x.reshape((_B, 10, 2) if two_d else (_B, 10))
    s = rng.integers(0, num_of_shards, size=(_B, 10)).astype(np.int32)
    every = range(_B)
    if mode == "in_axes_0":
        return (0, 0), (x, s), [(x[b], s[b]) for b in every], None
    if mode == "in_axes_1":
        return (1, 1), (np.moveaxis(x, 0, 1), s.T), [(x[b], s[b]) for b in every], None
    if mode == "in_axes_neg1_0":
        return (-1, 0), (np.moveaxis(x, 0, -1), s), [(x[b], s[b]) for b in every], None
    if mode == "batched_unbatched":
        return (0, None), (x, s[1]), [(x[b], s[1]) for b in every], None
    if mode == "unbatched_batched":
        return (None, 0), (x[2], s), [(x[2], s[b]) for b in every], None
    if mode == "all_unbatched_axis_size":
        return (None, None), (x[0], s[0]), [(x[0], s[0])] * _B, _B
    raise AssertionError(mode)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, two_d, num_of_shards",
    [(np.int64, False, 3), (np.float32, True, 4), (np.uint32, True, 2)],
    ids=["int64_1d_S3", "float32_2d_S4", "uint32_2d_S2"],
)
@pytest.mark.parametrize("mode", _VMAP_MODES)
def test_vmap_matches_loop(mode, dtype, two_d, num_of_shards, use_jit):
    in_axes, args, examples, axis_size = _vmap_setup(mode, dtype, two_d, num_of_shards)
    batched = jax.vmap(lambda x, s: OP(x, s, num_of_shards), in_axes=in_axes, axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    want = _stack([oracle.reorder_by_indices(*ex, num_of_shards) for ex in examples])
    assert_result_equal(batched(*args), want)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap over axis 1 of the rows with per-outer shard ids; inner over the rows' axis 0
    with the shard ids unbatched."""
    rng = np.random.default_rng(21)
    rows = rng.integers(0, 6, size=(4, 2, 8, 3)).astype(np.int64)  # [inner, outer, n, e]
    shard_ids = rng.integers(0, 5, size=(2, 8)).astype(np.int64)  # [outer, n]
    inner = jax.vmap(lambda x, s: OP(x, s, 5), in_axes=(0, None))
    batched = jax.vmap(inner, in_axes=(1, 0))
    if use_jit:
        batched = jax.jit(batched)
    want = _stack(
        [
            _stack([oracle.reorder_by_indices(rows[k, o], shard_ids[o], 5) for k in range(4)])
            for o in range(2)
        ]
    )
    assert_result_equal(batched(rows, shard_ids), want)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _names_op_and(*args: str) -> str:
    """Regex: the message names the op and (any of) the argument(s), in either order."""
    arg = "|".join(args)
    return rf"(?s)(reorder_by_indices.*\b({arg})\b|\b({arg})\b.*reorder_by_indices)"


def _call_maybe_jit(use_jit, rows, shard_ids, num_of_shards):
    if use_jit:
        return jax.jit(lambda x, s: OP(x, s, num_of_shards))(rows, shard_ids)
    return OP(rows, shard_ids, num_of_shards)


_X3 = np.array([1, 2, 1], np.int64)
_S3 = np.array([0, 1, 0], np.int32)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "rows, shard_ids, num_of_shards, arg",
    [
        (np.int64(4), np.zeros(1, np.int32), 2, ("input",)),
        (np.zeros((3, 2, 2), np.int64), _S3, 2, ("input",)),
        (np.zeros((3, 0), np.int64), _S3, 2, ("input",)),
        (_X3, _S3.reshape(3, 1), 2, ("shard_ids",)),
        (_X3, np.zeros((), np.int32), 2, ("shard_ids",)),
        (_X3, np.zeros(4, np.int32), 2, ("shard_ids", "input")),
        (np.zeros((2, 2), np.int64), _S3, 2, ("shard_ids", "input")),
        (_X3, _S3, 0, ("num_of_shards",)),
        (_X3, _S3, -3, ("num_of_shards",)),
    ],
    ids=[
        "input_0d",
        "input_3d",
        "input_2d_zero_width",
        "shard_ids_2d",
        "shard_ids_0d",
        "more_shard_ids_than_rows",
        "fewer_shard_ids_than_rows",
        "num_of_shards_zero",
        "num_of_shards_negative",
    ],
)
def test_error_value(rows, shard_ids, num_of_shards, arg, use_jit):
    with pytest.raises(ValueError, match=_names_op_and(*arg)):
        _call_maybe_jit(use_jit, rows, shard_ids, num_of_shards)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "rows, shard_ids, num_of_shards, arg",
    [
        (_X3, _S3, 2.0, "num_of_shards"),
        (_X3, _S3, "2", "num_of_shards"),
        (_X3.astype(np.bool_), _S3, 2, "input"),
        (_X3.astype(np.complex64), _S3, 2, "input"),
        (_X3, _S3.astype(np.float32), 2, "shard_ids"),
        (_X3, _S3.astype(np.uint32), 2, "shard_ids"),
        (_X3, _S3.astype(np.int16), 2, "shard_ids"),
    ],
    ids=[
        "num_of_shards_float",
        "num_of_shards_str",
        "input_bool",
        "input_complex64",
        "shard_ids_float32",
        "shard_ids_uint32",
        "shard_ids_int16",
    ],
)
def test_error_type(rows, shard_ids, num_of_shards, arg, use_jit):
    with pytest.raises(TypeError, match=_names_op_and(arg)):
        _call_maybe_jit(use_jit, rows, shard_ids, num_of_shards)


def _assert_runtime_error_names(excinfo, value) -> None:
    message = str(excinfo.value)
    assert "reorder_by_indices" in message, message
    assert re.search(r"\bshard_ids\b", message), message
    assert re.search(rf"(?<![\d-]){re.escape(str(value))}(?!\d)", message), message


def _force(res) -> None:
    for field in res:
        np.asarray(field)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "rows, shard_ids, bad",
    [
        (np.array([1, 2, 3], np.int64), np.array([0, -1, 1], np.int32), -1),
        (np.array([1, 2, 3], np.int64), np.array([0, 1, 3], np.int64), 3),
        (np.array([1, 2, 3], np.uint32), np.array([9, 1, 0], np.int32), 9),
        (np.array([1.0, 2.0, 3.0], np.float64), np.array([0, 2**40, 1], np.int64), 2**40),
        # The bad shard id belongs to a duplicate row, whose shard id Monolith would ignore.
        (np.array([5, 5, 5], np.int64), np.array([0, 1, 7], np.int32), 7),
        (np.array([[5, 1], [5, 2]], np.int32), np.array([2, -4], np.int64), -4),
    ],
    ids=["minus_one", "equal_to_S", "nine", "int64_2pow40", "on_duplicate", "2d_duplicate"],
)
def test_error_shard_id_out_of_range(rows, shard_ids, bad, use_jit):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        _force(_call_maybe_jit(use_jit, rows, shard_ids, 3))
    _assert_runtime_error_names(excinfo, bad)


def test_error_shard_id_out_of_range_under_vmap():
    """A bad shard id in one example of a batch fails the batched call too."""
    rows = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    shard_ids = np.array([[0, 1, 2], [0, 1, 8]], np.int32)
    with pytest.raises(runtime_errors(True)) as excinfo:
        _force(jax.jit(jax.vmap(lambda x, s: OP(x, s, 3)))(rows, shard_ids))
    _assert_runtime_error_names(excinfo, 8)
