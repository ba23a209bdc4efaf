"""Tests for `jax_distops.ragged_split_by_indices` (spec section 4 and Appendix A15; DESIGN.md 1-3).

Expected values come only from (a) the spec's hand-worked vectors (sections 4.2 / 4.6: the test
and the docstring case), transcribed literally below in both the static layout and Monolith's
per-split ragged lists, plus hand-worked vectors of our own, or (b) the independent numpy oracle
in `tests/oracle.py`, which is itself anchored to the literal vectors by
`test_oracle_matches_literal_vectors`. Nothing expected is computed by the op under test.

Battery (STYLE.md rule 10), adapted to an op without a gradient:
  * forward: the literal vectors for every value dtype (int32, int64, uint32, uint64, float32,
    float64) and both dtypes of indices and of row_splits;
  * jit and no-jit through `chex.variants` (static arguments are closed over);
  * random inputs vs the oracle (S in {1, 2, 5, 64}, empty rows, empty inputs, R = 0), bit for bit,
    plus one large input;
  * `RaggedSplitResult.to_ragged_list()` (Monolith's two output lists) and its error under jit;
  * vmap vs a Python loop, over the `Ragged` pytree too (each field mapped or not, in_axes 1,
    nested);
  * every documented error (trace-time ValueError/TypeError, run-time JaxRuntimeError, including
    Appendix A15's empty row_splits and invalid row splits).
There is no `check_grads` / `linear_transpose` part: the op is not differentiable.

Requires `jax_enable_x64` (enabled globally by tests/conftest.py).
"""

import dataclasses
import re
from typing import Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jax_distops
from jax_distops import Ragged

import oracle  # tests/oracle.py, importable through tests/conftest.py
from testing import assert_array_bits_equal, bits, dtype_name, runtime_errors  # tests/testing.py

OP = jax_distops.ragged_split_by_indices
FIELDS = ("values", "positions", "row_splits")
INDEX_DTYPES = (np.int32, np.int64)  # for `indices` and for `num.row_splits`
VALUE_DTYPES = (np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64)
FLOAT_DTYPES = (np.float32, np.float64)
NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: the inputs, the static-layout outputs and Monolith's lists."""

    name: str
    indices: Tuple[int, ...]
    values: tuple
    row_splits: Tuple[int, ...]
    num_splits: int
    out_values: tuple
    out_positions: Tuple[int, ...]
    out_row_splits: Tuple[Tuple[int, ...], ...]  # [S][R+1], absolute
    # Monolith's outputs: per split (values, relative row_splits) and (positions, row_splits).
    list_values: Tuple[Tuple[tuple, Tuple[int, ...]], ...]
    list_positions: Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]], ...]
    dtypes: Tuple[type, ...] = VALUE_DTYPES


SPEC_CASES = (
    # Spec 4.2 / 4.6 `test_ragged_split_by_indices`: num = [[],[],[4,3,2],[1],[],[]].
    # Split 0 -> [[],[],[4,2],[],[],[]], split 1 -> [[],[],[3],[1],[],[]].
    LiteralCase(
        name="spec_test_ragged_split_by_indices",
        indices=(0, 1, 0, 1),
        values=(4, 3, 2, 1),
        row_splits=(0, 0, 0, 3, 4, 4, 4),
        num_splits=2,
        out_values=(4, 2, 3, 1),
        out_positions=(0, 2, 1, 3),
        out_row_splits=((0, 0, 0, 2, 2, 2, 2), (2, 2, 2, 3, 4, 4, 4)),
        list_values=(((4, 2), (0, 0, 0, 2, 2, 2, 2)), ((3, 1), (0, 0, 0, 1, 2, 2, 2))),
        list_positions=(((0, 2), (0, 0, 0, 2, 2, 2, 2)), ((1, 3), (0, 0, 0, 1, 2, 2, 2))),
    ),
    # Spec 4.2 docstring case: num = [[4,3,2],[1]] -> [[4,2],[]] / [[3],[1]], pos [[0,2],[]] /
    # [[1],[3]].
    LiteralCase(
        name="spec_docstring",
        indices=(0, 1, 0, 1),
        values=(4, 3, 2, 1),
        row_splits=(0, 3, 4),
        num_splits=2,
        out_values=(4, 2, 3, 1),
        out_positions=(0, 2, 1, 3),
        out_row_splits=((0, 2, 2), (2, 3, 4)),
        list_values=(((4, 2), (0, 2, 2)), ((3, 1), (0, 1, 2))),
        list_positions=(((0, 2), (0, 2, 2)), ((1, 3), (0, 1, 2))),
    ),
)

EXTRA_CASES = (
    # num = [[10, 11], [12, 13, 14]], indices [2,0,2,2,0], S=3. Split 0: positions 1, 4 (values
    # 11, 14), offset 0; split 1 empty, offset 2; split 2: positions 0, 2, 3, offset 2.
    # Split 0 rows [[11], [14]]; split 1 [[], []]; split 2 [[10], [12, 13]].
    LiteralCase(
        name="empty_middle_split_S3",
        indices=(2, 0, 2, 2, 0),
        values=(10, 11, 12, 13, 14),
        row_splits=(0, 2, 5),
        num_splits=3,
        out_values=(11, 14, 10, 12, 13),
        out_positions=(1, 4, 0, 2, 3),
        out_row_splits=((0, 1, 2), (2, 2, 2), (2, 3, 5)),
        list_values=(((11, 14), (0, 1, 2)), ((), (0, 0, 0)), ((10, 12, 13), (0, 1, 3))),
        list_positions=(((1, 4), (0, 1, 2)), ((), (0, 0, 0)), ((0, 2, 3), (0, 1, 3))),
    ),
    LiteralCase(
        name="one_split",
        indices=(0, 0, 0),
        values=(7, 8, 9),
        row_splits=(0, 1, 3),
        num_splits=1,
        out_values=(7, 8, 9),
        out_positions=(0, 1, 2),
        out_row_splits=((0, 1, 3),),
        list_values=(((7, 8, 9), (0, 1, 3)),),
        list_positions=(((0, 1, 2), (0, 1, 3)),),
    ),
    # R = 0, N = 0: every split is an empty ragged value with no rows.
    LiteralCase(
        name="no_rows",
        indices=(),
        values=(),
        row_splits=(0,),
        num_splits=3,
        out_values=(),
        out_positions=(),
        out_row_splits=((0,), (0,), (0,)),
        list_values=(((), (0,)), ((), (0,)), ((), (0,))),
        list_positions=(((), (0,)), ((), (0,)), ((), (0,))),
    ),
    LiteralCase(
        name="empty_rows_only",
        indices=(),
        values=(),
        row_splits=(0, 0, 0),
        num_splits=2,
        out_values=(),
        out_positions=(),
        out_row_splits=((0, 0, 0), (0, 0, 0)),
        list_values=(((), (0, 0, 0)), ((), (0, 0, 0))),
        list_positions=(((), (0, 0, 0)), ((), (0, 0, 0))),
    ),
    # All values in split 63 of 64: offsets of splits 0..63 are all 0.
    LiteralCase(
        name="last_of_64_splits",
        indices=(63, 63),
        values=(5, 6),
        row_splits=(0, 0, 2),
        num_splits=64,
        out_values=(5, 6),
        out_positions=(0, 1),
        out_row_splits=((0, 0, 0),) * 63 + ((0, 0, 2),),
        list_values=(((), (0, 0, 0)),) * 63 + (((5, 6), (0, 0, 2)),),
        list_positions=(((), (0, 0, 0)),) * 63 + (((0, 1), (0, 0, 2)),),
    ),
    # num = [[nan], [-0.0, 0.0]], indices [0, 1, 0]: split 0 = positions 0, 2; split 1 = 1.
    LiteralCase(
        name="float_nan_signed_zero",
        indices=(0, 1, 0),
        values=(NAN, -0.0, 0.0),
        row_splits=(0, 1, 3),
        num_splits=2,
        out_values=(NAN, 0.0, -0.0),
        out_positions=(0, 2, 1),
        out_row_splits=((0, 1, 2), (2, 2, 3)),
        list_values=(((NAN, 0.0), (0, 1, 2)), ((-0.0,), (0, 0, 1))),
        list_positions=(((0, 2), (0, 1, 2)), ((1,), (0, 0, 1))),
        dtypes=FLOAT_DTYPES,
    ),
    LiteralCase(
        name="uint64_top_bit",
        indices=(1, 1, 0),
        values=(2**63, 1, 2**64 - 1),
        row_splits=(0, 3),
        num_splits=2,
        out_values=(2**64 - 1, 2**63, 1),
        out_positions=(2, 0, 1),
        out_row_splits=((0, 1), (1, 3)),
        list_values=(((2**64 - 1,), (0, 1)), ((2**63, 1), (0, 2))),
        list_positions=(((2,), (0, 1)), ((0, 1), (0, 2))),
        dtypes=(np.uint64,),
    ),
    LiteralCase(
        name="int64_extremes",
        indices=(1, 0, 1),
        values=(-(2**63), 2**63 - 1, -1),
        row_splits=(0, 2, 3),
        num_splits=2,
        out_values=(2**63 - 1, -(2**63), -1),
        out_positions=(1, 0, 2),
        out_row_splits=((0, 1, 1), (1, 2, 3)),
        list_values=(((2**63 - 1,), (0, 1, 1)), ((-(2**63), -1), (0, 1, 2))),
        list_positions=(((1,), (0, 1, 1)), ((0, 2), (0, 1, 2))),
        dtypes=(np.int64,),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _literal_inputs(case: LiteralCase, dtype, index_dtype, splits_dtype):
    return (
        np.array(case.indices, dtype=index_dtype).reshape(-1),
        Ragged(
            np.array(case.values, dtype=dtype).reshape(-1),
            np.array(case.row_splits, dtype=splits_dtype),
        ),
    )


def _literal_expected(case: LiteralCase, dtype, splits_dtype) -> oracle.RaggedSplitExpected:
    num_splits, width = case.num_splits, len(case.row_splits)
    assert len(case.out_row_splits) == num_splits, "transcription error"
    return oracle.RaggedSplitExpected(
        values=np.array(case.out_values, dtype=dtype).reshape(-1),
        positions=np.array(case.out_positions, dtype=splits_dtype).reshape(-1),
        row_splits=np.array(case.out_row_splits, dtype=splits_dtype).reshape(num_splits, width),
    )


def _literal_lists(case: LiteralCase, dtype, splits_dtype):
    """Monolith's lists as numpy (flat, row_splits) pairs, like `oracle.ragged_split_..._lists`."""
    values = [
        (np.array(v, dtype=dtype).reshape(-1), np.array(rs, dtype=splits_dtype))
        for v, rs in case.list_values
    ]
    positions = [
        (np.array(p, dtype=splits_dtype).reshape(-1), np.array(rs, dtype=splits_dtype))
        for p, rs in case.list_positions
    ]
    return values, positions


def _literal_params(cases=LITERAL_CASES):
    """Every case with each of its dtypes; the dtypes of indices and row_splits cycle through all
    four combinations."""
    combos = [(i, r) for i in INDEX_DTYPES for r in INDEX_DTYPES]
    params = []
    for case in cases:
        for k, dtype in enumerate(case.dtypes):
            index_dtype, splits_dtype = combos[k % len(combos)]
            params.append(
                dict(
                    testcase_name=(
                        f"{case.name}_{dtype_name(dtype)}_idx{dtype_name(index_dtype)}"
                        f"_rs{dtype_name(splits_dtype)}"
                    ),
                    case=case,
                    dtype=dtype,
                    index_dtype=index_dtype,
                    splits_dtype=splits_dtype,
                )
            )
    return params


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_result_equal(got, want: oracle.RaggedSplitExpected) -> None:
    """Bit-exact equality of every field, with shapes and dtypes."""
    assert isinstance(got, jax_distops.RaggedSplitResult), type(got)
    assert got._fields == FIELDS
    for name in FIELDS:
        assert_array_bits_equal(getattr(got, name), getattr(want, name), name)


def assert_lists_equal(got, want) -> None:
    """`got` = `to_ragged_list()`; `want` = (values, positions) lists of (flat, row_splits)."""
    assert isinstance(got, tuple) and len(got) == 2, type(got)
    for label, got_list, want_list in zip(("values", "positions"), got, want):
        assert isinstance(got_list, list), f"{label}: {type(got_list)}"
        assert len(got_list) == len(want_list), f"{label}: {len(got_list)} splits"
        for s, (got_ragged, (want_flat, want_splits)) in enumerate(zip(got_list, want_list)):
            assert isinstance(got_ragged, Ragged), f"{label}[{s}]: {type(got_ragged)}"
            assert_array_bits_equal(got_ragged.values, want_flat, f"{label}[{s}].values")
            assert_array_bits_equal(got_ragged.row_splits, want_splits, f"{label}[{s}].row_splits")


def _stack(expected) -> oracle.RaggedSplitExpected:
    """Stacks per-example expected results along a new leading batch axis."""
    return oracle.RaggedSplitExpected(*[np.stack(fields) for fields in zip(*expected)])


def _expected(indices, num: Ragged, num_splits) -> oracle.RaggedSplitExpected:
    return oracle.ragged_split_by_indices(indices, num.values, num.row_splits, num_splits)


def _random_values(rng: np.random.Generator, dtype, n: int) -> np.ndarray:
    if jnp.issubdtype(dtype, jnp.floating):
        values = rng.normal(size=n) * 10
        special = np.array([NAN, 0.0, -0.0, np.inf, -np.inf])
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True)
        special = np.array([info.min, info.max, 0], dtype=dtype)
    pick = rng.random(n) < 0.2
    return np.where(pick, special[rng.integers(0, len(special), size=n)], values).astype(dtype)


def _random_row_splits(rng: np.random.Generator, n: int, num_rows: int, dtype) -> np.ndarray:
    """Valid row splits: `num_rows` rows over `n` values, empty rows likely (R = 0 needs n = 0)."""
    assert num_rows >= 1 or n == 0
    cuts = np.sort(rng.integers(0, n + 1, size=max(num_rows - 1, 0)))
    return np.concatenate([[0], cuts, [n] if num_rows >= 1 else []]).astype(dtype)


def _random_inputs(seed, num_splits, dtype, index_dtype, splits_dtype):
    """N in [0, 60] (0 every fifth seed), R in [0, 12] (R = 0 only with N = 0); indices from a
    random subset of the splits."""
    rng = np.random.default_rng(4000 + seed)
    n = 0 if seed % 5 == 0 else int(rng.integers(1, 61))
    num_rows = int(rng.integers(0 if n == 0 else 1, 13))
    used = rng.choice(num_splits, size=int(rng.integers(1, num_splits + 1)), replace=False)
    indices = used[rng.integers(0, len(used), size=n)].astype(index_dtype)
    num = Ragged(_random_values(rng, dtype, n), _random_row_splits(rng, n, num_rows, splits_dtype))
    return indices, num


def _random_params():
    combos = [(i, r) for i in INDEX_DTYPES for r in INDEX_DTYPES]
    params = []
    cases = [(s, d) for s in (1, 2, 5, 64) for d in VALUE_DTYPES]
    for seed, (num_splits, dtype) in enumerate(cases):
        index_dtype, splits_dtype = combos[seed % len(combos)]
        params.append(
            dict(
                testcase_name=(
                    f"S{num_splits}_{dtype_name(dtype)}_idx{dtype_name(index_dtype)}"
                    f"_rs{dtype_name(splits_dtype)}"
                ),
                seed=seed,
                num_splits=num_splits,
                dtype=dtype,
                index_dtype=index_dtype,
                splits_dtype=splits_dtype,
            )
        )
    return params


# Special inputs vs the oracle: (name, indices, values, row_splits, S).
SPECIAL_CASES = (
    ("no_rows_S64", np.zeros(0, np.int64), np.zeros(0, np.uint32), np.array([0], np.int32), 64),
    ("many_empty_rows_S2", np.array([1, 0, 1], np.int32), np.array([1.5, 2.5, 3.5], np.float32),
     np.array([0, 0, 0, 1, 1, 1, 3, 3, 3], np.int64), 2),
    ("one_row_S5", np.arange(10, dtype=np.int64) % 5, np.arange(10, dtype=np.int64),
     np.array([0, 10], np.int64), 5),
    ("one_value_per_row_S3", np.array([2, 1, 0, 2, 1, 0], np.int32),
     np.arange(6, dtype=np.float64), np.arange(7, dtype=np.int32), 3),
)


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, dtype",
    [pytest.param(c, d, id=f"{c.name}-{dtype_name(d)}") for c in LITERAL_CASES for d in c.dtypes],
)
def test_oracle_matches_literal_vectors(case, dtype):
    indices, num = _literal_inputs(case, dtype, np.int64, np.int64)
    got = oracle.ragged_split_by_indices(indices, num.values, num.row_splits, case.num_splits)
    want = _literal_expected(case, dtype, np.int64)
    for name in FIELDS:
        np.testing.assert_array_equal(
            bits(getattr(got, name)), bits(getattr(want, name)), err_msg=name, strict=True
        )
    got_lists = oracle.ragged_split_by_indices_lists(
        indices, num.values, num.row_splits, case.num_splits
    )
    want_lists = _literal_lists(case, dtype, np.int64)
    for got_list, want_list in zip(got_lists, want_lists):
        assert len(got_list) == len(want_list) == case.num_splits
        for (got_flat, got_rs), (want_flat, want_rs) in zip(got_list, want_list):
            np.testing.assert_array_equal(bits(got_flat), bits(want_flat), strict=True)
            np.testing.assert_array_equal(got_rs, want_rs, strict=True)


@pytest.mark.parametrize("seed", range(6))
def test_oracle_static_layout_matches_lists(seed):
    """The two oracle functions agree: split s of the static layout, shifted by its offset, is
    Monolith's ragged value s (values, positions and row_splits)."""
    indices, num = _random_inputs(seed + 1, 5, np.int64, np.int64, np.int64)
    flat = oracle.ragged_split_by_indices(indices, num.values, num.row_splits, 5)
    values_list, positions_list = oracle.ragged_split_by_indices_lists(
        indices, num.values, num.row_splits, 5
    )
    for s in range(5):
        start, stop = flat.row_splits[s, 0], flat.row_splits[s, -1]
        np.testing.assert_array_equal(values_list[s][0], flat.values[start:stop], strict=True)
        np.testing.assert_array_equal(positions_list[s][0], flat.positions[start:stop], strict=True)
        np.testing.assert_array_equal(values_list[s][1], flat.row_splits[s] - start, strict=True)


# --------------------------------------------------------------------------------------------------
# Forward, jit and no-jit
# --------------------------------------------------------------------------------------------------


class RaggedSplitByIndicesVariantsTest(chex.TestCase):
    """Forward checks, each with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_literal_params())
    def test_literal_vectors(self, case, dtype, index_dtype, splits_dtype):
        indices, num = _literal_inputs(case, dtype, index_dtype, splits_dtype)
        res = self.variant(lambda i, n: OP(i, n, case.num_splits))(indices, num)
        assert_result_equal(res, _literal_expected(case, dtype, splits_dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, seed, num_splits, dtype, index_dtype, splits_dtype):
        indices, num = _random_inputs(seed, num_splits, dtype, index_dtype, splits_dtype)
        res = self.variant(lambda i, n: OP(i, n, num_splits))(indices, num)
        assert_result_equal(res, _expected(indices, num, num_splits))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=name, indices=i, num=Ragged(v, rs), num_splits=s)
        for name, i, v, rs, s in SPECIAL_CASES
    )
    def test_special_vs_oracle(self, indices, num, num_splits):
        res = self.variant(lambda i, n: OP(i, n, num_splits))(indices, num)
        assert_result_equal(res, _expected(indices, num, num_splits))


# --------------------------------------------------------------------------------------------------
# Result object
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, dtype, splits_dtype",
    [
        pytest.param(c, c.dtypes[k % len(c.dtypes)], INDEX_DTYPES[k % 2], id=c.name)
        for k, c in enumerate(LITERAL_CASES)
    ],
)
def test_to_ragged_list_literal(case, dtype, splits_dtype):
    """Monolith's two output lists (spec 4.2: split 0 = [[],[],[4,2],[],[],[]] ...), with
    per-split row_splits starting at 0."""
    indices, num = _literal_inputs(case, dtype, np.int64, splits_dtype)
    got = OP(indices, num, case.num_splits).to_ragged_list()
    assert_lists_equal(got, _literal_lists(case, dtype, splits_dtype))


@pytest.mark.parametrize("seed, num_splits", [(1, 2), (2, 5), (3, 64)], ids=["S2", "S5", "S64"])
def test_to_ragged_list_random_vs_oracle(seed, num_splits):
    indices, num = _random_inputs(seed, num_splits, np.float32, np.int32, np.int64)
    got = jax.jit(lambda i, n: OP(i, n, num_splits))(indices, num).to_ragged_list()
    want = oracle.ragged_split_by_indices_lists(indices, num.values, num.row_splits, num_splits)
    assert_lists_equal(got, want)


def test_to_ragged_list_under_jit_raises():
    indices, num = _literal_inputs(SPEC_CASES[0], np.int64, np.int64, np.int64)
    with pytest.raises(ValueError, match="to_ragged_list"):
        jax.jit(lambda i, n: OP(i, n, 2).to_ragged_list())(indices, num)


@pytest.mark.parametrize("splits_dtype", INDEX_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("dtype", VALUE_DTYPES, ids=dtype_name)
def test_eval_shape(dtype, splits_dtype):
    out = jax.eval_shape(
        lambda i, n: OP(i, n, 6),
        jax.ShapeDtypeStruct((9,), jnp.int32),
        Ragged(jax.ShapeDtypeStruct((9,), dtype), jax.ShapeDtypeStruct((5,), splits_dtype)),
    )
    assert isinstance(out, jax_distops.RaggedSplitResult)
    assert out.values.shape == (9,) and out.values.dtype == np.dtype(dtype)
    assert out.positions.shape == (9,) and out.positions.dtype == np.dtype(splits_dtype)
    assert out.row_splits.shape == (6, 5) and out.row_splits.dtype == np.dtype(splits_dtype)


def test_large_vs_oracle():
    """N = 100_000 values in 10_000 rows, S = 64."""
    rng = np.random.default_rng(99)
    n, num_rows = 100_000, 10_000
    indices = rng.integers(0, 64, size=n).astype(np.int64)
    num = Ragged(
        _random_values(rng, np.int64, n), _random_row_splits(rng, n, num_rows, np.int64)
    )
    res = jax.jit(lambda i, x: OP(i, x, 64))(indices, num)
    assert_result_equal(res, _expected(indices, num, 64))


def test_x64_off_accepts_32_bit_inputs():
    case = SPEC_CASES[0]
    with jax.enable_x64(False):
        for dtype in (np.int32, np.uint32, np.float32):
            indices, num = _literal_inputs(case, dtype, np.int32, np.int32)
            res = OP(indices, num, 2)
            assert_result_equal(res, _literal_expected(case, dtype, np.int32))


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_B = 3
_N = 9
_ROWS = 4
_VMAP_MODES = (
    "in_axes_0_everything",
    "in_axes_0_prefix",
    "indices_values_batched_splits_shared",
    "values_batched_only",
    "indices_batched_num_shared",
    "splits_batched_only",
    "in_axes_1_everything",
    "all_unbatched_axis_size",
)


def _vmap_setup(mode, dtype, num_splits, seed=0):
    """Per-example indices i[b] ([9]), values v[b] ([9]) and row splits r[b] ([5], each valid on
    its own); returns (in_axes, args, examples, axis_size)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, num_splits, size=(_B, _N)).astype(np.int32)
    v = _random_values(rng, dtype, _B * _N).reshape(_B, _N)
    r = np.stack([_random_row_splits(rng, _N, _ROWS, np.int64) for _ in range(_B)])
    every = range(_B)
    per_example = [(i[b], Ragged(v[b], r[b])) for b in every]
    if mode == "in_axes_0_everything":
        return (0, Ragged(0, 0)), (i, Ragged(v, r)), per_example, None
    if mode == "in_axes_0_prefix":
        return 0, (i, Ragged(v, r)), per_example, None
    if mode == "indices_values_batched_splits_shared":
        return (
            (0, Ragged(0, None)),
            (i, Ragged(v, r[1])),
            [(i[b], Ragged(v[b], r[1])) for b in every],
            None,
        )
    if mode == "values_batched_only":
        return (
            (None, Ragged(0, None)),
            (i[0], Ragged(v, r[2])),
            [(i[0], Ragged(v[b], r[2])) for b in every],
            None,
        )
    if mode == "indices_batched_num_shared":
        return (
            (0, None),
            (i, Ragged(v[1], r[1])),
            [(i[b], Ragged(v[1], r[1])) for b in every],
            None,
        )
    if mode == "splits_batched_only":
        return (
            (None, Ragged(None, 0)),
            (i[2], Ragged(v[0], r)),
            [(i[2], Ragged(v[0], r[b])) for b in every],
            None,
        )
    if mode == "in_axes_1_everything":
        return (1, Ragged(1, 1)), (i.T, Ragged(v.T, r.T)), per_example, None
    if mode == "all_unbatched_axis_size":
        return (None, None), per_example[0], [per_example[0]] * _B, _B
    raise AssertionError(mode)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, num_splits", [(np.int64, 3), (np.float32, 5)], ids=["int64_S3", "float32_S5"]
)
@pytest.mark.parametrize("mode", _VMAP_MODES)
def test_vmap_matches_loop(mode, dtype, num_splits, use_jit):
    in_axes, args, examples, axis_size = _vmap_setup(mode, dtype, num_splits)
    batched = jax.vmap(lambda i, n: OP(i, n, num_splits), in_axes=in_axes, axis_size=axis_size)
    if use_jit:
        batched = jax.jit(batched)
    want = _stack([_expected(idx, num, num_splits) for idx, num in examples])
    assert_result_equal(batched(*args), want)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Outer vmap over the indices (axis 0) and row splits (axis 1); inner vmap over the values'
    axis 0 with indices and row splits unbatched."""
    rng = np.random.default_rng(31)
    indices = rng.integers(0, 4, size=(2, _N)).astype(np.int64)  # [outer, n]
    values = rng.integers(-50, 50, size=(3, 2, _N)).astype(np.int32)  # [inner, outer, n]
    splits = np.stack(
        [_random_row_splits(rng, _N, _ROWS, np.int32) for _ in range(2)], axis=1
    )  # [rows + 1, outer]

    inner = jax.vmap(lambda i, n: OP(i, n, 4), in_axes=(None, Ragged(0, None)))
    batched = jax.vmap(inner, in_axes=(0, Ragged(1, 1)))
    if use_jit:
        batched = jax.jit(batched)
    want = _stack(
        [
            _stack(
                [
                    _expected(indices[o], Ragged(values[k, o], splits[:, o]), 4)
                    for k in range(3)
                ]
            )
            for o in range(2)
        ]
    )
    assert_result_equal(batched(indices, Ragged(values, splits)), want)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def _names_op_and(*args: str) -> str:
    """Regex: the message names the op and (any of) the argument(s), in either order."""
    arg = "|".join(args)
    return (
        rf"(?s)(ragged_split_by_indices.*\b({arg})\b|\b({arg})\b.*ragged_split_by_indices)"
    )


def _call_maybe_jit(use_jit, indices, num, num_splits):
    if use_jit:
        return jax.jit(lambda i, n: OP(i, n, num_splits))(indices, num)
    return OP(indices, num, num_splits)


_I4 = np.array([0, 1, 0, 1], np.int64)
_V4 = np.array([4, 3, 2, 1], np.int64)
_RS = np.array([0, 3, 4], np.int64)
_NUM = Ragged(_V4, _RS)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, num, num_splits, arg",
    [
        (_I4[:3], _NUM, 2, ("num", "indices")),
        (np.zeros(5, np.int64), _NUM, 2, ("num", "indices")),
        (np.zeros(0, np.int64), Ragged(np.zeros(0, np.int64), np.zeros(0, np.int64)), 2,
         ("num", "row_splits")),
        (_I4, Ragged(_V4, np.zeros(0, np.int32)), 2, ("num", "row_splits")),
        (_I4.reshape(2, 2), Ragged(_V4.reshape(2, 2), _RS), 2, ("indices", "num")),
        (_I4.reshape(4, 1), _NUM, 2, ("indices",)),
        (_I4, Ragged(_V4.reshape(4, 1), _RS), 2, ("num", "values")),
        (_I4, Ragged(_V4, _RS.reshape(3, 1)), 2, ("num", "row_splits")),
        (_I4, _NUM, 0, ("num_splits",)),
        (_I4, _NUM, -2, ("num_splits",)),
    ],
    ids=[
        "fewer_indices_than_values",
        "more_indices_than_values",
        "empty_row_splits_A15",
        "empty_row_splits_nonempty_values",
        "all_2d",
        "indices_2d",
        "values_2d",
        "row_splits_2d",
        "num_splits_zero",
        "num_splits_negative",
    ],
)
def test_error_value(indices, num, num_splits, arg, use_jit):
    with pytest.raises(ValueError, match=_names_op_and(*arg)):
        _call_maybe_jit(use_jit, indices, num, num_splits)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, num, num_splits, arg",
    [
        (_I4, _NUM, 2.0, ("num_splits",)),
        (_I4, _NUM, "2", ("num_splits",)),
        (_I4.astype(np.float32), _NUM, 2, ("indices",)),
        (_I4.astype(np.uint32), _NUM, 2, ("indices",)),
        (_I4, Ragged(_V4.astype(np.bool_), _RS), 2, ("num", "values")),
        (_I4, Ragged(_V4.astype(np.complex64), _RS), 2, ("num", "values")),
        (_I4, Ragged(_V4, _RS.astype(np.float32)), 2, ("num", "row_splits")),
        (_I4, Ragged(_V4, _RS.astype(np.uint32)), 2, ("num", "row_splits")),
        (_I4, (_V4, _RS), 2, ("num",)),
        (_I4, _V4, 2, ("num",)),
    ],
    ids=[
        "num_splits_float",
        "num_splits_str",
        "indices_float32",
        "indices_uint32",
        "values_bool",
        "values_complex64",
        "row_splits_float32",
        "row_splits_uint32",
        "num_plain_tuple",
        "num_plain_array",
    ],
)
def test_error_type(indices, num, num_splits, arg, use_jit):
    with pytest.raises(TypeError, match=_names_op_and(*arg)):
        _call_maybe_jit(use_jit, indices, num, num_splits)


def _force(res) -> None:
    for field in res:
        np.asarray(field)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "indices, bad",
    [
        (np.array([0, -1, 1, 0], np.int32), -1),
        (np.array([0, 1, 2, 0], np.int64), 2),
        (np.array([6, 1, 0, 0], np.int32), 6),
        (np.array([0, 1, 0, 2**40], np.int64), 2**40),
    ],
    ids=["minus_one", "equal_to_S", "six", "int64_2pow40"],
)
def test_error_index_out_of_range(indices, bad, use_jit):
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        _force(_call_maybe_jit(use_jit, indices, _NUM, 2))
    message = str(excinfo.value)
    assert "ragged_split_by_indices" in message, message
    assert re.search(r"\bindices\b", message), message
    assert re.search(rf"(?<![\d-]){re.escape(str(bad))}(?!\d)", message), message


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("splits_dtype", INDEX_DTYPES, ids=dtype_name)
@pytest.mark.parametrize(
    "row_splits",
    [(1, 2, 4), (0, 3, 2, 4), (0, 2, 3), (0, 2, 5), (0, 5, 4), (0,), (-1, 4)],
    ids=[
        "first_not_zero",
        "decreasing",
        "last_below_N",
        "last_above_N",
        "overshoot_then_back",
        "no_rows_but_values",
        "negative_start",
    ],
)
def test_error_invalid_row_splits(row_splits, splits_dtype, use_jit):
    num = Ragged(_V4, np.array(row_splits, splits_dtype))
    with pytest.raises(runtime_errors(use_jit)) as excinfo:
        _force(_call_maybe_jit(use_jit, _I4, num, 2))
    message = str(excinfo.value)
    assert "ragged_split_by_indices" in message, message
    assert re.search(r"\brow_splits\b", message), message


def test_error_under_vmap():
    """Bad data in one example of a batch fails the batched call: an out-of-range index, and a
    row_splits that is invalid for that example only."""
    indices = np.array([[0, 1, 0, 1], [0, 1, 0, 3]], np.int64)
    values = np.stack([_V4, _V4])
    good_splits = np.stack([_RS, _RS])
    batched = jax.vmap(lambda i, n: OP(i, n, 2))
    with pytest.raises(runtime_errors(True), match="ragged_split_by_indices"):
        _force(jax.jit(batched)(indices, Ragged(values, good_splits)))
    bad_splits = np.array([[0, 3, 4], [0, 3, 2]], np.int64)
    with pytest.raises(runtime_errors(False), match="row_splits"):  # eager
        _force(batched(np.stack([_I4, _I4]), Ragged(values, bad_splits)))
