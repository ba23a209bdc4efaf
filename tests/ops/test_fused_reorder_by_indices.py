"""Tests for `jax_distops.fused_reorder_by_indices` (spec section 3; DESIGN.md sections 1-3).

Expected values come only from (a) the spec's hand-worked vectors, transcribed literally below,
plus a few hand-worked vectors for jax_distops' deviations (floor-mod sharding of negative ids,
unsigned ids with the top bit set), or (b) the independent numpy oracle in `tests/oracle.py`,
which is itself anchored to the literal vectors by `test_oracle_matches_literal_vectors`. Nothing
expected is computed by the op under test.

Battery (STYLE.md rule 10), adapted to an op with integer inputs and outputs only:
  * forward: literal spec cases 1-7, the rank-0 example, negative / extreme ids, every id dtype;
  * jit and no-jit through `chex.variants` (static arguments are closed over);
  * random inputs vs the oracle (S in {1, 2, 7, 256}, with/without rank-0-empty, heavy duplicates,
    empty tables, all-empty input);
  * vmap vs a Python loop (in_axes 0, 1, -1, mixed batched/unbatched, all unbatched, nested);
  * the MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD rule and the explicit argument's precedence;
  * every documented error (trace-time ValueError/TypeError, run-time JaxRuntimeError);
  * reduced versions of the two Monolith benchmark workloads;
  * `jax.grad` through a function that uses only the op's integer outputs.
There is no `check_grads` / `linear_transpose` part: the op has no float inputs and no gradient.

Requires `jax_enable_x64` (enabled globally by tests/conftest.py).
"""

import dataclasses
import functools
from typing import Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jax_distops

import oracle  # tests/oracle.py, importable through tests/conftest.py
from testing import colliding_ids  # tests/testing.py

# The benchmark's workload builders (benchmarks/ is on sys.path through tests/conftest.py), so the
# large tests run exactly the benchmarked workloads.
from fused_reorder import make_fused_test, make_monolith_bench  # noqa: E402

OP = jax_distops.fused_reorder_by_indices
ENV_VAR = "MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD"
FIELDS = (
    "ids",
    "shard_sizes",
    "sharded_slot_sizes",
    "slot_sizes",
    "fused_embedding_offsets",
    "num_unique",
    "fused_embedding_size",
)
ID_DTYPES = (np.int32, np.int64, np.uint32, np.uint64)
SIGNED_DTYPES = (np.int32, np.int64)
INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Literal vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiteralCase:
    """One hand-worked vector: inputs and all seven outputs, written out literally."""

    name: str
    ids_list: Tuple[Tuple[int, ...], ...]
    num_of_shards: int
    dim_sizes: Optional[Tuple[int, ...]]
    rank0_empty: bool
    unique_ids: Tuple[int, ...]  # output 0 before padding
    shard_sizes: Tuple[int, ...]  # output 1
    sharded_slot_sizes: Tuple[int, ...]  # output 2
    slot_sizes: Tuple[int, ...]  # output 3 (emb_offset_sz)
    fused_embedding_offsets: Tuple[int, ...]  # output 4 (fused_emb_offset)
    fused_embedding_size: int  # E_tot
    dtypes: Tuple[type, ...] = ID_DTYPES


# Spec section 3.2 hand checks (cases 1-7, dims [2]*M unless stated), the derived outputs 3/4 table,
# and the derived rank0 example. E_tot is quoted from the spec for cases 6/7 (15, 22) and the rank-0
# example; for the others it is (#unique ids) * 2 by hand (all dims are 2).
SPEC_CASES = (
    LiteralCase(
        name="case1_one_table",
        ids_list=((0, 1, 2, 2, 3, 5),),
        num_of_shards=3,
        dim_sizes=(2,),
        rank0_empty=False,
        unique_ids=(0, 3, 1, 2, 5),
        shard_sizes=(2, 1, 2),
        sharded_slot_sizes=(2, 1, 2),
        slot_sizes=(6,),
        fused_embedding_offsets=(0, 4, 6, 6, 2, 8),
        fused_embedding_size=10,
    ),
    LiteralCase(
        name="case2_second_table_empty",
        ids_list=((0, 1, 2, 2, 3, 5), ()),
        num_of_shards=3,
        dim_sizes=(2, 2),
        rank0_empty=False,
        unique_ids=(0, 3, 1, 2, 5),
        shard_sizes=(2, 1, 2),
        sharded_slot_sizes=(2, 0, 1, 0, 2, 0),
        slot_sizes=(6, 0),
        fused_embedding_offsets=(0, 4, 6, 6, 2, 8),
        fused_embedding_size=10,
    ),
    LiteralCase(
        name="case3_two_tables",
        ids_list=((0, 1, 2, 2, 3, 5), (6, 7, 8, 8, 9, 11)),
        num_of_shards=3,
        dim_sizes=(2, 2),
        rank0_empty=False,
        unique_ids=(0, 3, 6, 9, 1, 7, 2, 5, 8, 11),
        shard_sizes=(4, 2, 4),
        sharded_slot_sizes=(2, 2, 1, 1, 2, 2),
        slot_sizes=(6, 6),
        fused_embedding_offsets=(0, 8, 12, 12, 2, 14, 4, 10, 16, 16, 6, 18),
        fused_embedding_size=20,
    ),
    LiteralCase(
        name="case4_all_empty",
        ids_list=((), ()),
        num_of_shards=2,
        dim_sizes=(2, 2),
        rank0_empty=False,
        unique_ids=(),
        shard_sizes=(0, 0),
        sharded_slot_sizes=(0, 0, 0, 0),
        slot_sizes=(0, 0),
        fused_embedding_offsets=(),
        fused_embedding_size=0,
    ),
    LiteralCase(
        name="case5_ragged_workflow",
        ids_list=((0, 1, 4, 5), (2, 3, 6, 7)),
        num_of_shards=2,
        dim_sizes=(2, 2),
        rank0_empty=False,
        unique_ids=(0, 4, 2, 6, 1, 5, 3, 7),
        shard_sizes=(4, 4),
        sharded_slot_sizes=(2, 2, 2, 2),
        slot_sizes=(4, 4),
        fused_embedding_offsets=(0, 8, 2, 10, 4, 12, 6, 14),
        fused_embedding_size=16,
    ),
    LiteralCase(
        name="case6_dims_1_2_3",
        ids_list=((0, 1, 0), (3, 2, 3), (5, 6, 7)),
        num_of_shards=2,
        dim_sizes=(1, 2, 3),
        rank0_empty=False,
        unique_ids=(0, 2, 6, 1, 3, 5, 7),
        shard_sizes=(3, 4),
        sharded_slot_sizes=(1, 1, 1, 1, 1, 2),
        slot_sizes=(3, 3, 3),
        fused_embedding_offsets=(0, 6, 0, 7, 1, 7, 9, 3, 12),
        fused_embedding_size=15,
    ),
    LiteralCase(
        name="case7_dims_3_2",
        ids_list=((2, 3, 1, 2, 7, 2), (5, 8, 4, 4, 5, 11, 6)),
        num_of_shards=3,
        dim_sizes=(3, 2),
        rank0_empty=False,
        unique_ids=(3, 6, 1, 7, 4, 2, 5, 8, 11),
        shard_sizes=(2, 3, 4),
        sharded_slot_sizes=(1, 1, 2, 1, 1, 3),
        slot_sizes=(6, 7),
        fused_embedding_offsets=(13, 0, 5, 13, 8, 13, 16, 18, 11, 11, 16, 20, 3),
        fused_embedding_size=22,
    ),
    LiteralCase(
        name="rank0_example_S6",
        ids_list=(tuple(range(11)),),
        num_of_shards=6,
        dim_sizes=(1,),
        rank0_empty=True,
        unique_ids=(0, 5, 10, 1, 6, 2, 7, 3, 8, 4, 9),
        shard_sizes=(0, 3, 2, 2, 2, 2),
        sharded_slot_sizes=(0, 3, 2, 2, 2, 2),
        slot_sizes=(11,),
        fused_embedding_offsets=(0, 3, 5, 7, 9, 1, 4, 6, 8, 10, 2),
        fused_embedding_size=11,
    ),
)

# Hand-worked vectors beyond the spec's (jax_distops deviations and defaults).
EXTRA_CASES = (
    # Case 6 inputs with dim_sizes=None (all dims 1). Blocks as in case 6; bases (0,0)=0, (0,1)=1,
    # (0,2)=2, (1,0)=3, (1,1)=4, (1,2)=5; E_tot = 7.
    LiteralCase(
        name="case6_dims_none",
        ids_list=((0, 1, 0), (3, 2, 3), (5, 6, 7)),
        num_of_shards=2,
        dim_sizes=None,
        rank0_empty=False,
        unique_ids=(0, 2, 6, 1, 3, 5, 7),
        shard_sizes=(3, 4),
        sharded_slot_sizes=(1, 1, 1, 1, 1, 2),
        slot_sizes=(3, 3, 3),
        fused_embedding_offsets=(0, 3, 0, 4, 1, 4, 5, 2, 6),
        fused_embedding_size=7,
    ),
    # Appendix A5, floor-mod instead of truncation. S=3, no rank0:
    # -1 -> 2, -2 -> 1, -3 -> 0, 4 -> 1.
    # Blocks s0 [-3], s1 [-2, 4], s2 [-1]; bases 0, 1, 3.
    LiteralCase(
        name="negative_S3",
        ids_list=((-1, -2, -3, 4),),
        num_of_shards=3,
        dim_sizes=(1,),
        rank0_empty=False,
        unique_ids=(-3, -2, 4, -1),
        shard_sizes=(1, 2, 1),
        sharded_slot_sizes=(1, 2, 1),
        slot_sizes=(4,),
        fused_embedding_offsets=(3, 1, 0, 2),
        fused_embedding_size=4,
        dtypes=SIGNED_DTYPES,
    ),
    # Appendix A5 with rank0, S=8: shard = floormod(v, 7) + 1. -1 -> 7, -2 -> 6, -7 -> 1, 7 -> 1,
    # 0 -> 1. Blocks s1 [-7, 7, 0], s6 [-2], s7 [-1]; dim 3, bases s1=0, s6=9, s7=12.
    LiteralCase(
        name="negative_S8_rank0",
        ids_list=((-1, -2, -7, 7, 0, -1),),
        num_of_shards=8,
        dim_sizes=(3,),
        rank0_empty=True,
        unique_ids=(-7, 7, 0, -2, -1),
        shard_sizes=(0, 3, 0, 0, 0, 0, 1, 1),
        sharded_slot_sizes=(0, 3, 0, 0, 0, 0, 1, 1),
        slot_sizes=(6,),
        fused_embedding_offsets=(12, 9, 0, 3, 6, 12),
        fused_embedding_size=15,
        dtypes=SIGNED_DTYPES,
    ),
    # int64 extremes, S=3: 2**63 = 2 (mod 3), so 2**63-1 -> 1, -2**63 -> floormod(-2, 3) = 1,
    # -1 -> 2.
    # Blocks s0 [0], s1 [2**63-1, -2**63], s2 [-1]; bases 0, 1, 3.
    LiteralCase(
        name="int64_extremes_S3",
        ids_list=((2**63 - 1, -(2**63), -1, 0),),
        num_of_shards=3,
        dim_sizes=(1,),
        rank0_empty=False,
        unique_ids=(0, 2**63 - 1, -(2**63), -1),
        shard_sizes=(1, 2, 1),
        sharded_slot_sizes=(1, 2, 1),
        slot_sizes=(4,),
        fused_embedding_offsets=(1, 2, 3, 0),
        fused_embedding_size=4,
        dtypes=(np.int64,),
    ),
    # int32 extremes, S=3: 2**31 = 2 (mod 3), so -2**31 -> 1, 2**31-1 -> 1, -1 -> 2.
    LiteralCase(
        name="int32_extremes_S3",
        ids_list=((-(2**31), 2**31 - 1, -1),),
        num_of_shards=3,
        dim_sizes=(1,),
        rank0_empty=False,
        unique_ids=(-(2**31), 2**31 - 1, -1),
        shard_sizes=(0, 2, 1),
        sharded_slot_sizes=(0, 2, 1),
        slot_sizes=(3,),
        fused_embedding_offsets=(0, 1, 2),
        fused_embedding_size=3,
        dtypes=(np.int32,),
    ),
    # uint64 with the top bit set is plain mod: 2**64-1 -> 0, 2**63 -> 2, 5 -> 2. (Read as int64
    # they would be -1 -> 2 and -2**63 -> 1.) Blocks s0 [2**64-1], s2 [2**63, 5]; bases 0, 1, 1.
    LiteralCase(
        name="uint64_top_bit_S3",
        ids_list=((2**64 - 1, 2**63, 5),),
        num_of_shards=3,
        dim_sizes=(1,),
        rank0_empty=False,
        unique_ids=(2**64 - 1, 2**63, 5),
        shard_sizes=(1, 0, 2),
        sharded_slot_sizes=(1, 0, 2),
        slot_sizes=(3,),
        fused_embedding_offsets=(0, 1, 2),
        fused_embedding_size=3,
        dtypes=(np.uint64,),
    ),
    # uint32 with the top bit set: 2**32-1 -> 0, 2**31 -> 2 (as int32: -1 -> 2, -2**31 -> 1).
    # Blocks s0 [2**32-1], s2 [2**31]; dim 2, bases 0, 2, 2.
    LiteralCase(
        name="uint32_top_bit_S3",
        ids_list=((2**32 - 1, 2**31, 2**31),),
        num_of_shards=3,
        dim_sizes=(2,),
        rank0_empty=False,
        unique_ids=(2**32 - 1, 2**31),
        shard_sizes=(1, 0, 1),
        sharded_slot_sizes=(1, 0, 1),
        slot_sizes=(3,),
        fused_embedding_offsets=(0, 2, 2),
        fused_embedding_size=4,
        dtypes=(np.uint32,),
    ),
)
LITERAL_CASES = SPEC_CASES + EXTRA_CASES


def _literal_inputs(case: LiteralCase, dtype) -> list:
    return [np.array(table, dtype=dtype) for table in case.ids_list]


def _literal_expected(case: LiteralCase, dtype) -> oracle.FusedReorderExpected:
    """The literal vectors of `case` in the op's padded layout."""
    total_ids = sum(len(t) for t in case.ids_list)
    num_unique = len(case.unique_ids)
    assert sum(case.shard_sizes) == num_unique, "transcription error"
    ids = np.zeros(total_ids, dtype=dtype)
    ids[:num_unique] = np.array(case.unique_ids, dtype=dtype)
    return oracle.FusedReorderExpected(
        ids=ids,
        shard_sizes=np.array(case.shard_sizes, dtype=np.int32),
        sharded_slot_sizes=np.array(case.sharded_slot_sizes, dtype=np.int32),
        slot_sizes=np.array(case.slot_sizes, dtype=np.int32),
        fused_embedding_offsets=np.array(case.fused_embedding_offsets, dtype=np.int32),
        num_unique=np.array(num_unique, dtype=np.int32),
        fused_embedding_size=np.array(case.fused_embedding_size, dtype=np.int32),
    )


def _literal_params(cases=LITERAL_CASES):
    return [
        dict(testcase_name=f"{case.name}_{np.dtype(dtype).name}", case=case, dtype=dtype)
        for case in cases
        for dtype in case.dtypes
    ]


def _literal_pytest_params(cases=LITERAL_CASES):
    return [
        pytest.param(case, dtype, id=f"{case.name}-{np.dtype(dtype).name}")
        for case in cases
        for dtype in case.dtypes
    ]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_result_equal(got, want: oracle.FusedReorderExpected, id_dtype) -> None:
    """Exact equality of every field, with shapes and dtypes (ids: `id_dtype`, others: int32)."""
    assert isinstance(got, jax_distops.FusedReorderResult), type(got)
    assert got._fields == FIELDS
    for name in FIELDS:
        got_field, want_field = getattr(got, name), getattr(want, name)
        want_dtype = np.dtype(id_dtype) if name == "ids" else np.dtype(np.int32)
        assert want_field.dtype == want_dtype, f"test bug: {name} built as {want_field.dtype}"
        assert got_field.dtype == want_dtype, f"{name}: dtype {got_field.dtype}, want {want_dtype}"
        assert got_field.shape == want_field.shape, (
            f"{name}: shape {got_field.shape}, want {want_field.shape}"
        )
        np.testing.assert_array_equal(
            np.asarray(got_field), want_field, err_msg=f"field {name}", strict=True
        )
    chex.assert_trees_all_equal(got, jax_distops.FusedReorderResult(*want), strict=True)


def _stack(expected: Sequence[oracle.FusedReorderExpected]) -> oracle.FusedReorderExpected:
    """Stacks per-example expected results along a new leading batch axis."""
    return oracle.FusedReorderExpected(*[np.stack(fields) for fields in zip(*expected)])


def _random_table(rng: np.random.Generator, dtype, length: int) -> np.ndarray:
    """Random ids mixing a tiny range (many duplicates), the full dtype range and the extremes."""
    info = np.iinfo(dtype)
    small_lo = -6 if info.min < 0 else 0
    small = rng.integers(small_lo, small_lo + 13, size=length).astype(dtype)
    full = rng.integers(info.min, info.max, size=length, dtype=dtype, endpoint=True)
    extremes = np.array([info.min, info.min + 1, 0, info.max - 1, info.max], dtype=dtype)
    extreme = extremes[rng.integers(0, len(extremes), size=length)]
    pick = rng.choice(3, size=length, p=[0.5, 0.4, 0.1])
    table = np.where(pick == 0, small, np.where(pick == 1, full, extreme)).astype(dtype)
    if length:
        # Repeat some values (including full-range ones) later in the table.
        table = np.concatenate([table, rng.choice(table, size=length // 3)])
        rng.shuffle(table)
    return table


# (S, rank0) pairs for the random sweep; rank0 with S=1 is an error, tested separately.
RANDOM_SHARDINGS = (
    (1, False), (2, False), (2, True), (7, False), (7, True), (256, False), (256, True)
)


def _random_params():
    params = []
    for seed, ((num_of_shards, rank0), dtype) in enumerate(
        (sharding, dtype) for sharding in RANDOM_SHARDINGS for dtype in ID_DTYPES
    ):
        name = f"S{num_of_shards}_{'rank0' if rank0 else 'norank0'}_{np.dtype(dtype).name}"
        params.append(
            dict(
                testcase_name=name,
                seed=seed,
                num_of_shards=num_of_shards,
                rank0=rank0,
                dtype=dtype,
            )
        )
    return params


def _random_inputs(seed: int, dtype):
    """A random ids_list (1-5 tables, some possibly empty) and dims (None for every third seed)."""
    rng = np.random.default_rng(1000 + seed)
    num_tables = int(rng.integers(1, 6))
    lengths = rng.integers(0, 40, size=num_tables)
    if num_tables > 1 and seed % 2 == 0:
        lengths[rng.integers(num_tables)] = 0
    ids_list = [_random_table(rng, dtype, int(n)) for n in lengths]
    dims = None if seed % 3 == 0 else [int(d) for d in rng.integers(1, 9, size=num_tables)]
    return ids_list, dims


# Special inputs vs the oracle: (name, ids_list, S, dims, rank0).
SPECIAL_CASES = (
    ("all_empty_S256_rank0", [np.zeros(0, np.int64)] * 3, 256, [4, 5, 6], True),
    ("all_empty_one_table_S1", [np.zeros(0, np.int64)], 1, None, False),
    ("one_id_repeated_S7_rank0", [np.full(30, -5, np.int64)], 7, [3], True),
    ("same_ids_every_table_S3", [np.array([4, -4, 4, 9, -9], np.int64)] * 4, 3, [1, 2, 3, 4],
     False),
    ("rank0_S2_all_in_shard1", [np.array([5, -3, 0, 5, 2], np.int64), np.array([1], np.int64)], 2,
     [2, 7], True),
    ("many_tables_S5", [np.arange(-k, k, dtype=np.int64) for k in range(40)], 5, None, False),
    ("single_id_S256", [np.array([-(2**63)], np.int64)], 256, [16], True),
)


def _spec_env_default(num_of_shards: int, env_value: Optional[str]) -> bool:
    """Spec 3.1 / DESIGN.md 2: env (default "1") == "1" and num_of_shards > 4."""
    value = "1" if env_value is None else env_value
    return value == "1" and num_of_shards > 4


# --------------------------------------------------------------------------------------------------
# The oracle itself, anchored to the literal vectors (no jax_distops involved)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, dtype", _literal_pytest_params())
def test_oracle_matches_literal_vectors(case, dtype):
    want = _literal_expected(case, dtype)
    got = oracle.fused_reorder_by_indices(
        _literal_inputs(case, dtype), case.num_of_shards, case.dim_sizes, case.rank0_empty
    )
    for name in FIELDS:
        np.testing.assert_array_equal(
            getattr(got, name), getattr(want, name), err_msg=name, strict=True
        )


# --------------------------------------------------------------------------------------------------
# Forward, jit and no-jit
# --------------------------------------------------------------------------------------------------


class FusedReorderVariantsTest(chex.TestCase):
    """Forward checks, each run with and without jit; static arguments are closed over."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_literal_params())
    def test_literal_vectors(self, case, dtype):
        fn = self.variant(
            lambda ids_list: OP(
                ids_list,
                case.num_of_shards,
                None if case.dim_sizes is None else list(case.dim_sizes),
                rank0_empty_shard=case.rank0_empty,
            )
        )
        res = fn(_literal_inputs(case, dtype))
        assert_result_equal(res, _literal_expected(case, dtype), dtype)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(_random_params())
    def test_random_vs_oracle(self, seed, num_of_shards, rank0, dtype):
        ids_list, dims = _random_inputs(seed, dtype)
        fn = self.variant(
            functools.partial(
                OP, num_of_shards=num_of_shards, dim_sizes=dims, rank0_empty_shard=rank0
            )
        )
        res = fn(ids_list)
        want = oracle.fused_reorder_by_indices(ids_list, num_of_shards, dims, rank0)
        assert_result_equal(res, want, dtype)
        if rank0:
            # Spec 3.7 (with floor-mod it holds for negative ids too): shard 0 receives nothing.
            self.assertEqual(int(res.shard_sizes[0]), 0)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=name, ids_list=ids_list, num_of_shards=s, dims=dims, rank0=rank0)
        for name, ids_list, s, dims, rank0 in SPECIAL_CASES
    )
    def test_special_vs_oracle(self, ids_list, num_of_shards, dims, rank0):
        fn = self.variant(
            lambda ids: OP(ids, num_of_shards, dims, rank0_empty_shard=rank0)
        )
        res = fn(ids_list)
        want = oracle.fused_reorder_by_indices(ids_list, num_of_shards, dims, rank0)
        assert_result_equal(res, want, np.int64)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        dict(testcase_name=f"S{s}_{'rank0' if r else 'norank0'}", num_of_shards=s, rank0=r)
        for s, r in ((3, False), (8, True), (256, True), (2, False))
    )
    def test_random_negative_ids_vs_oracle(self, num_of_shards, rank0):
        rng = np.random.default_rng(7 + num_of_shards)
        info = np.iinfo(np.int64)
        ids_list = [
            rng.integers(-50, 0, size=60),  # negatives only, many duplicates
            rng.integers(info.min, 0, size=40),  # large negatives
            np.array([info.min, info.min + 1, -1, info.max, info.max - 1, info.min], np.int64),
        ]
        fn = self.variant(
            lambda ids: OP(ids, num_of_shards, [3, 1, 2], rank0_empty_shard=rank0)
        )
        res = fn(ids_list)
        want = oracle.fused_reorder_by_indices(ids_list, num_of_shards, [3, 1, 2], rank0)
        assert_result_equal(res, want, np.int64)
        if rank0:
            self.assertEqual(int(res.shard_sizes[0]), 0)


@pytest.mark.parametrize("case", SPEC_CASES[:7], ids=lambda c: c.name)
def test_spec_cases_with_default_rank0(case, monkeypatch):
    """Cases 1-7 have S <= 4, so the default (None) means no rank-0 shard whatever the env says."""
    monkeypatch.setenv(ENV_VAR, "1")
    res = OP(_literal_inputs(case, np.int64), case.num_of_shards, list(case.dim_sizes))
    assert_result_equal(res, _literal_expected(case, np.int64), np.int64)


@pytest.mark.parametrize("kind", ["numpy", "jax", "python_lists", "tuple_of_numpy"])
def test_input_kinds(kind):
    case = SPEC_CASES[6]  # case 7
    want_dtype = np.int64
    if kind == "numpy":
        ids_list = _literal_inputs(case, np.int64)
    elif kind == "jax":
        ids_list = [jnp.asarray(t, dtype=jnp.int64) for t in case.ids_list]
    elif kind == "python_lists":
        ids_list = [list(t) for t in case.ids_list]
        # Python ints become JAX's default integer type (int64 with x64 on).
        want_dtype = jax.dtypes.canonicalize_dtype(np.int64)
    else:
        ids_list = tuple(_literal_inputs(case, np.int64))
    res = OP(ids_list, case.num_of_shards, list(case.dim_sizes), rank0_empty_shard=False)
    assert_result_equal(res, _literal_expected(case, want_dtype), want_dtype)


@pytest.mark.parametrize("dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
def test_eval_shape(dtype):
    """Static output shapes: ids/offsets [N_tot], [S], [S*M], [M], and two scalars."""
    out = jax.eval_shape(
        lambda a, b: OP([a, b], 5, [2, 3], rank0_empty_shard=True),
        jax.ShapeDtypeStruct((7,), dtype),
        jax.ShapeDtypeStruct((0,), dtype),
    )
    assert isinstance(out, jax_distops.FusedReorderResult)
    want = {
        "ids": ((7,), dtype),
        "shard_sizes": ((5,), np.int32),
        "sharded_slot_sizes": ((10,), np.int32),
        "slot_sizes": ((2,), np.int32),
        "fused_embedding_offsets": ((7,), np.int32),
        "num_unique": ((), np.int32),
        "fused_embedding_size": ((), np.int32),
    }
    for name in FIELDS:
        shape, field_dtype = want[name]
        assert getattr(out, name).shape == shape, name
        assert getattr(out, name).dtype == np.dtype(field_dtype), name


def test_x64_off_accepts_32_bit_ids():
    """With x64 off, 32-bit ids still work (only 64-bit ones are rejected)."""
    case = SPEC_CASES[6]
    with jax.enable_x64(False):
        for dtype in (np.int32, np.uint32):
            res = OP(_literal_inputs(case, dtype), 3, [3, 2], rank0_empty_shard=False)
            assert_result_equal(res, _literal_expected(case, dtype), dtype)


# --------------------------------------------------------------------------------------------------
# vmap vs a Python loop
# --------------------------------------------------------------------------------------------------

_VMAP_BATCH = 3
_VMAP_MODES = (
    "in_axes_0",
    "in_axes_1",
    "in_axes_neg1_0",
    "in_axes_1_0",
    "batched_unbatched",
    "unbatched_batched",
    "list_in_axes_0_none",
    "all_unbatched_axis_size",
)


def _vmap_tables(dtype, seed):
    """Per-example tables a[i] (length 9) and b[i] (length 5), with many duplicates."""
    rng = np.random.default_rng(seed)
    lo = -5 if np.iinfo(dtype).min < 0 else 0
    a = rng.integers(lo, lo + 12, size=(_VMAP_BATCH, 9)).astype(dtype)
    b = rng.integers(lo, lo + 12, size=(_VMAP_BATCH, 5)).astype(dtype)
    b[1, 2] = np.iinfo(dtype).max
    return a, b


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "dtype, num_of_shards, rank0",
    [(np.int64, 7, True), (np.uint32, 3, False)],
    ids=["int64_S7_rank0", "uint32_S3_norank0"],
)
@pytest.mark.parametrize("mode", _VMAP_MODES)
def test_vmap_matches_loop(mode, dtype, num_of_shards, rank0, use_jit):
    dims = [2, 3]
    a, b = _vmap_tables(dtype, seed=num_of_shards)

    def f(x, y):
        return OP([x, y], num_of_shards, dims, rank0_empty_shard=rank0)

    if mode == "in_axes_0":
        batched, args, examples = jax.vmap(f), (a, b), [(a[i], b[i]) for i in range(_VMAP_BATCH)]
    elif mode == "in_axes_1":
        batched = jax.vmap(f, in_axes=(1, 1))
        args, examples = (a.T, b.T), [(a[i], b[i]) for i in range(_VMAP_BATCH)]
    elif mode == "in_axes_neg1_0":
        batched = jax.vmap(f, in_axes=(-1, 0))
        args, examples = (a.T, b), [(a[i], b[i]) for i in range(_VMAP_BATCH)]
    elif mode == "in_axes_1_0":
        batched = jax.vmap(f, in_axes=(1, 0))
        args, examples = (a.T, b), [(a[i], b[i]) for i in range(_VMAP_BATCH)]
    elif mode == "batched_unbatched":
        batched = jax.vmap(f, in_axes=(0, None))
        args, examples = (a, b[1]), [(a[i], b[1]) for i in range(_VMAP_BATCH)]
    elif mode == "unbatched_batched":
        batched = jax.vmap(f, in_axes=(None, 0))
        args, examples = (a[2], b), [(a[2], b[i]) for i in range(_VMAP_BATCH)]
    elif mode == "list_in_axes_0_none":
        batched = jax.vmap(
            lambda ids: OP(ids, num_of_shards, dims, rank0_empty_shard=rank0), in_axes=([0, None],)
        )
        args, examples = ([a, b[0]],), [(a[i], b[0]) for i in range(_VMAP_BATCH)]
    elif mode == "all_unbatched_axis_size":
        batched = jax.vmap(f, in_axes=(None, None), axis_size=_VMAP_BATCH)
        args, examples = (a[0], b[0]), [(a[0], b[0])] * _VMAP_BATCH
    else:
        raise AssertionError(mode)
    if use_jit:
        batched = jax.jit(batched)
    res = batched(*args)
    want = _stack(
        [oracle.fused_reorder_by_indices(list(ex), num_of_shards, dims, rank0) for ex in examples]
    )
    assert_result_equal(res, want, dtype)
    # slot_sizes is batched like every other field, and identical per example.
    np.testing.assert_array_equal(
        np.asarray(res.slot_sizes), np.tile(np.array([9, 5], np.int32), (_VMAP_BATCH, 1))
    )


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_nested_vmap(use_jit):
    """Two batch levels: inner over a's axis 0 with b unbatched, outer over both."""
    rng = np.random.default_rng(3)
    a = rng.integers(-20, 20, size=(2, 4, 8)).astype(np.int64)  # [outer, inner, n]
    b = rng.integers(-20, 20, size=(2, 6)).astype(np.int64)  # [outer, n]

    def f(x, y):
        return OP([x, y], 8, [4, 1], rank0_empty_shard=True)

    batched = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, 0))
    if use_jit:
        batched = jax.jit(batched)
    res = batched(a, b)
    want = _stack(
        [
            _stack([
                oracle.fused_reorder_by_indices([a[i, j], b[i]], 8, [4, 1], True)
                for j in range(4)
            ])
            for i in range(2)
        ]
    )
    assert_result_equal(res, want, np.int64)


def test_nested_vmap_outer_axis1_inner_unbatched_b():
    """Outer vmap maps a's axis 1 and leaves b unbatched; inner maps a's axis 0."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 30, size=(3, 2, 7)).astype(np.uint64)  # [inner, outer, n]
    b = rng.integers(0, 30, size=(5,)).astype(np.uint64)

    def f(x, y):
        return OP([x, y], 4, None, rank0_empty_shard=False)

    res = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(1, None))(a, b)
    want = _stack(
        [
            _stack(
                [oracle.fused_reorder_by_indices([a[j, i], b], 4, None, False) for j in range(3)]
            )
            for i in range(2)
        ]
    )
    assert_result_equal(res, want, np.uint64)


# --------------------------------------------------------------------------------------------------
# Rank-0-empty rule: environment variable and explicit argument
# --------------------------------------------------------------------------------------------------

_ENV_IDS = [np.arange(-5, 20, dtype=np.int64), np.array([3, 3, -3, 40], np.int64)]


@pytest.mark.parametrize("explicit", [None, True, False], ids=["arg_none", "arg_true", "arg_false"])
@pytest.mark.parametrize("num_of_shards", [4, 8], ids=["S4", "S8"])
@pytest.mark.parametrize(
    "env_value", [None, "1", "0", "true"], ids=["env_unset", "env_1", "env_0", "env_true"]
)
def test_rank0_env_rule(env_value, num_of_shards, explicit, monkeypatch):
    if env_value is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env_value)
    rank0 = explicit if explicit is not None else _spec_env_default(num_of_shards, env_value)
    want = oracle.fused_reorder_by_indices(_ENV_IDS, num_of_shards, [2, 1], rank0)

    eager = OP(_ENV_IDS, num_of_shards, [2, 1], rank0_empty_shard=explicit)
    assert_result_equal(eager, want, np.int64)
    # A fresh jit per setting: the env var is read at trace time.
    fresh = jax.jit(lambda ids: OP(ids, num_of_shards, [2, 1], rank0_empty_shard=explicit))
    jitted = fresh(_ENV_IDS)
    assert_result_equal(jitted, want, np.int64)
    # The ids cover every residue, so shard 0 is empty exactly when rank0 is in effect.
    assert (int(eager.shard_sizes[0]) == 0) == rank0


def test_rank0_env_read_per_call(monkeypatch):
    """Eager calls pick up an env change between calls (no value cached at import or first call)."""
    monkeypatch.setenv(ENV_VAR, "1")
    first = OP(_ENV_IDS, 8, [2, 1])
    monkeypatch.setenv(ENV_VAR, "0")
    second = OP(_ENV_IDS, 8, [2, 1])
    monkeypatch.setenv(ENV_VAR, "1")
    third = OP(_ENV_IDS, 8, [2, 1])
    with_rank0 = oracle.fused_reorder_by_indices(_ENV_IDS, 8, [2, 1], True)
    without_rank0 = oracle.fused_reorder_by_indices(_ENV_IDS, 8, [2, 1], False)
    assert_result_equal(first, with_rank0, np.int64)
    assert_result_equal(second, without_rank0, np.int64)
    assert_result_equal(third, with_rank0, np.int64)


def test_explicit_rank0_true_with_small_S(monkeypatch):
    """An explicit True applies even when S <= 4 (here S=2: every id goes to shard 1)."""
    monkeypatch.setenv(ENV_VAR, "1")
    ids = [np.array([0, 1, 2, 3, -1, 0], np.int64)]
    res = OP(ids, 2, [5], rank0_empty_shard=True)
    # Hand-worked: modulus 1, all ids in shard 1 in first-occurrence order, dim 5.
    want = oracle.FusedReorderExpected(
        ids=np.array([0, 1, 2, 3, -1, 0], np.int64),
        shard_sizes=np.array([0, 5], np.int32),
        sharded_slot_sizes=np.array([0, 5], np.int32),
        slot_sizes=np.array([6], np.int32),
        fused_embedding_offsets=np.array([0, 5, 10, 15, 20, 0], np.int32),
        num_unique=np.array(5, np.int32),
        fused_embedding_size=np.array(25, np.int32),
    )
    assert_result_equal(res, want, np.int64)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

_GOOD_IDS = [np.array([1, 2, 3], np.int64), np.array([4, 5], np.int64)]


def _names_op_and(arg: str) -> str:
    """Regex: the message names both the op and the argument, in either order."""
    return rf"(?s)(fused_reorder_by_indices.*\b{arg}\b|\b{arg}\b.*fused_reorder_by_indices)"


def _call_maybe_jit(use_jit, ids_list, *args, **kwargs):
    if use_jit:
        return jax.jit(lambda ids: OP(ids, *args, **kwargs))(ids_list)
    return OP(ids_list, *args, **kwargs)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize("num_of_shards", [0, -1], ids=["zero", "negative"])
def test_error_num_of_shards_below_one(num_of_shards, use_jit):
    with pytest.raises(ValueError, match=_names_op_and("num_of_shards")):
        _call_maybe_jit(use_jit, _GOOD_IDS, num_of_shards, [1, 1], rank0_empty_shard=False)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_error_rank0_leaves_no_shard(use_jit):
    """Appendix A6: S=1 with rank0 would divide by zero in Monolith."""
    with pytest.raises(ValueError, match=_names_op_and("rank0_empty_shard")):
        _call_maybe_jit(use_jit, _GOOD_IDS, 1, [1, 1], rank0_empty_shard=True)


@pytest.mark.parametrize(
    "dims",
    [[2], [2, 2, 2], [0, 1], [1, -3], []],
    ids=["too_short_A7", "too_long", "zero_dim", "negative_dim", "empty"],
)
def test_error_bad_dim_sizes(dims):
    with pytest.raises(ValueError, match=_names_op_and("dim_sizes")):
        OP(_GOOD_IDS, 3, dims)


@pytest.mark.parametrize(
    "ids_list",
    [
        [np.zeros((2, 3), np.int64)],
        [np.array([1, 2], np.int64), np.zeros((1, 1), np.int64)],
        [np.array(3, np.int64)],
        [],
    ],
    ids=["2d", "second_table_2d", "0d", "empty_list"],
)
def test_error_bad_ids_shape(ids_list):
    with pytest.raises(ValueError, match=_names_op_and("ids_list")):
        OP(ids_list, 3)


@pytest.mark.parametrize(
    "ids_list",
    [
        [np.array([1.0, 2.0], np.float32)],
        [np.array([True, False])],
        [np.array([1, 2], np.int32), np.array([3], np.int64)],
        [np.array([1, 2], np.uint64), np.array([3], np.int64)],
    ],
    ids=["float32", "bool", "mixed_int32_int64", "mixed_uint64_int64"],
)
def test_error_bad_ids_dtype(ids_list):
    with pytest.raises(TypeError, match=_names_op_and("ids_list")):
        OP(ids_list, 3)


@pytest.mark.parametrize("num_of_shards", [2.5, "3"], ids=["float", "str"])
def test_error_num_of_shards_not_int(num_of_shards):
    with pytest.raises(TypeError, match=_names_op_and("num_of_shards")):
        OP(_GOOD_IDS, num_of_shards)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64], ids=["int64", "uint64"])
def test_error_64bit_ids_without_x64(dtype):
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match="jax_enable_x64"):
            OP([np.array([1, 2, 3], dtype)], 3)


@pytest.mark.parametrize(
    "shapes",
    [[(2**31,)], [(2**30,), (2**30,)], [(2**31 - 5,), (3,), (3,)]],
    ids=["one_table", "two_tables", "three_tables"],
)
def test_error_total_ids_overflow_int32(shapes):
    """Σ N_m > 2**31-1 is rejected at trace time (checked without allocating via eval_shape)."""
    structs = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in shapes]
    with pytest.raises(ValueError, match="fused_reorder_by_indices"):
        jax.eval_shape(lambda ids: OP(ids, 2, rank0_empty_shard=False), structs)


def test_total_ids_at_int32_max_is_accepted():
    structs = [jax.ShapeDtypeStruct((2**31 - 2,), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32)]
    out = jax.eval_shape(lambda ids: OP(ids, 2, rank0_empty_shard=False), structs)
    assert out.ids.shape == (2**31 - 1,)
    assert out.fused_embedding_offsets.shape == (2**31 - 1,)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
@pytest.mark.parametrize(
    "ids_list, dims",
    [
        ([np.array([1, 2, 3], np.int64)], [2**30]),  # E_tot = 3 * 2**30
        ([np.array([1, 2], np.int64)], [2**30]),  # E_tot = 2**31, one past the limit
        ([np.array([1], np.int64), np.array([2], np.int64)], [2**30, 2**30]),  # summed over tables
    ],
    ids=["three_ids", "just_over", "across_tables"],
)
def test_error_fused_embedding_size_overflow(ids_list, dims, use_jit):
    with pytest.raises(jax.errors.JaxRuntimeError, match="fused_reorder_by_indices"):
        res = _call_maybe_jit(use_jit, ids_list, 2, dims, rank0_empty_shard=False)
        jax.block_until_ready(res)
        np.asarray(res.fused_embedding_size)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_fused_embedding_size_at_int32_max_is_accepted(use_jit):
    """E_tot = 2**31-1 exactly fits; duplicates do not count (the static bound N*dim overflows)."""
    ids_list = [np.array([7, 7, 7], np.int64)]
    res = _call_maybe_jit(use_jit, ids_list, 2, [INT32_MAX], rank0_empty_shard=False)
    want = oracle.FusedReorderExpected(
        ids=np.array([7, 0, 0], np.int64),
        shard_sizes=np.array([0, 1], np.int32),
        sharded_slot_sizes=np.array([0, 1], np.int32),
        slot_sizes=np.array([3], np.int32),
        fused_embedding_offsets=np.array([0, 0, 0], np.int32),
        num_unique=np.array(1, np.int32),
        fused_embedding_size=np.array(INT32_MAX, np.int32),
    )
    assert_result_equal(res, want, np.int64)


# --------------------------------------------------------------------------------------------------
# Reduced benchmark workloads
# --------------------------------------------------------------------------------------------------


def test_benchmark_workload_reduced(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)  # default env: rank0 because 256 > 4
    # The benchmark's own workload builder (Monolith's distribution_ops_fused_benchmark.py), at a
    # tenth of its size, plus one empty slot (cut points drawn with replacement allow those).
    slots = make_monolith_bench(100_000, 29, seed=2024) + [np.zeros(0, np.int64)]
    num_of_shards, num_slots = 256, len(slots)
    dims = [16] * num_slots

    res = jax.jit(lambda ids: OP(ids, num_of_shards, dims))(slots)
    want = oracle.fused_reorder_by_indices(slots, num_of_shards, dims, rank0_empty=True)
    assert_result_equal(res, want, np.int64)
    # Spec properties independent of the oracle: each slot holds every id exactly twice, so its
    # unique count is half its length; rank-0 shard is empty; E_tot = 16 * num_unique.
    per_slot_unique = np.asarray(res.sharded_slot_sizes).reshape(num_of_shards, num_slots).sum(0)
    np.testing.assert_array_equal(per_slot_unique, [len(s) // 2 for s in slots])
    assert int(res.shard_sizes[0]) == 0
    assert int(res.fused_embedding_size) == 16 * int(res.num_unique)


def test_monolith_fused_test_workload_reduced(monkeypatch):
    """distribution_ops_fused_test.py test_benchmark (spec 3.6), reduced to 16 x 2048 ids, S=8."""
    monkeypatch.delenv(ENV_VAR, raising=False)  # default env: rank0 because 8 > 4
    ids_list = make_fused_test(num_slots=16, ids_per_slot=2048, seed=11)
    dims = [16] * 16
    res = OP(ids_list, 8, dims)
    assert_result_equal(res, oracle.fused_reorder_by_indices(ids_list, 8, dims, True), np.int64)
    assert int(res.shard_sizes[0]) == 0


@pytest.mark.parametrize(
    "num_of_shards, rank0, dtype",
    [(7, True, np.int64), (256, False, np.int64), (3, False, np.uint32), (2, True, np.int32)],
)
def test_one_large_table_vs_oracle(num_of_shards, rank0, dtype):
    """One table far above the kernel's split threshold (2**16 ids): with >= 2 threads the kernel
    splits it over shard ranges, one task per range, so every shard range must still come out in
    first-occurrence order. Also mixes heavy duplicates with distinct ids."""
    rng = np.random.default_rng(num_of_shards)
    info = np.iinfo(dtype)
    table = np.concatenate([
        rng.integers(info.min, info.max, size=150_000, dtype=dtype, endpoint=True),
        rng.integers(0, 5_000, size=150_000).astype(dtype),
    ])
    rng.shuffle(table)
    small = rng.integers(0, 100, size=50).astype(dtype)
    dims = [8, 3]
    res = jax.jit(lambda a, b: OP([a, b], num_of_shards, dims, rank0_empty_shard=rank0))(table, small)
    want = oracle.fused_reorder_by_indices([table, small], num_of_shards, dims, rank0)
    assert_result_equal(res, want, dtype)


@pytest.mark.parametrize("num_of_shards", [1, 5])
def test_index_growth_after_unrepresentative_prefix_vs_oracle(num_of_shards):
    """The kernel sizes a large table's hash index from the distinct fraction of its first few
    thousand ids. Here that prefix is one id repeated, then 60,000 distinct ids follow: the index
    must grow several times mid-table (moving its keys) and keep every id's number and order."""
    rng = np.random.default_rng(7)
    table = np.concatenate([
        np.full(8_192, 42, np.int64),
        rng.integers(-(2**62), 2**62, size=60_000, dtype=np.int64),
    ])
    table = np.concatenate([table, table[::-3]])  # repeats after the growth, in another order
    dims = [4]
    res = jax.jit(lambda a: OP([a], num_of_shards, dims, rank0_empty_shard=False))(table)
    want = oracle.fused_reorder_by_indices([table], num_of_shards, dims, False)
    assert_result_equal(res, want, np.int64)


@pytest.mark.parametrize("wrap", [False, True], ids=["any_group", "last_group"])
def test_ids_of_one_hash_group_vs_oracle(wrap):
    """300 distinct ids whose hashes share their top 40 bits (testing.colliding_ids), each twice,
    among ordinary ids: the kernel's hash index holds them in one chain of full groups in which
    every tag matches, so each of their probes takes the slow path. With `wrap` the chain starts
    at the index's last group and wraps around to the first, where ordinary ids live too."""
    rng = np.random.default_rng(21)
    crowd = colliding_ids(rng, 300, 2**40 - 1 if wrap else None)
    filler = rng.integers(-(2**62), 2**62, size=1_500, dtype=np.int64)
    table = np.concatenate([crowd, crowd, filler, filler[:500]])
    rng.shuffle(table)
    small = crowd[::7].copy()
    res = jax.jit(lambda a, b: OP([a, b], 4, [2, 3], rank0_empty_shard=False))(table, small)
    want = oracle.fused_reorder_by_indices([table, small], 4, [2, 3], False)
    assert_result_equal(res, want, np.int64)


def test_vmap_of_large_tables_vs_oracle():
    """A batch of large tables in one call: tasks of different batch elements run concurrently."""
    rng = np.random.default_rng(5)
    batch = rng.integers(-(2**40), 2**40, size=(3, 40_000), dtype=np.int64)
    batch[:, 20_000:] = batch[:, :20_000]  # every id twice
    shared = rng.integers(0, 1_000, size=30_000, dtype=np.int64)
    res = jax.vmap(lambda a, b: OP([a, b], 16, [4, 2], rank0_empty_shard=False), in_axes=(0, None))(
        batch, shared
    )
    want = _stack([oracle.fused_reorder_by_indices([row, shared], 16, [4, 2]) for row in batch])
    assert_result_equal(res, want, np.int64)


@pytest.mark.parametrize("use_vmap", [False, True])
def test_table_split_over_shard_ranges_next_to_whole_tables_vs_oracle(use_vmap):
    """One table holds more than a worker's share of all ids (with 2 threads: over half), so the
    kernel splits it into shard-range tasks, which keep their ids and distinct ids apart from the
    whole-table tasks running beside them. With vmap, the same as a batch of one."""
    rng = np.random.default_rng(12)
    distinct = rng.integers(-(2**62), 2**62, size=90_000, dtype=np.int64)
    big = np.concatenate([distinct, distinct[::3], rng.integers(0, 50, 20_000)])
    rng.shuffle(big)
    whole = [rng.integers(0, 30_000, size=40_000, dtype=np.int64), np.arange(-500, 500, dtype=np.int64)]
    dims = [3, 5, 2]

    def op(a, b, c):
        return OP([a, b, c], 64, dims, rank0_empty_shard=True)

    if use_vmap:
        res = jax.vmap(op)(big[None], whole[0][None], whole[1][None])
        res = type(res)(*(np.asarray(x)[0] for x in res))
    else:
        res = op(big, *whole)
    want = oracle.fused_reorder_by_indices([big, *whole], 64, dims, True)
    assert_result_equal(res, want, np.int64)


def _large_table(rng, n, dtype):
    """n ids of dtype: a third drawn from the whole range, a third from few values (heavy
    duplicates), a third repeating earlier ids in another order; shuffled."""
    info = np.iinfo(dtype)
    wide = rng.integers(info.min, info.max, size=n // 3, dtype=dtype, endpoint=True)
    few = rng.integers(0, 3_000, size=n // 3).astype(dtype)
    table = np.concatenate([wide, few, wide[: n - 2 * (n // 3)][::-1]])
    rng.shuffle(table)
    return table


@pytest.mark.parametrize(
    "num_of_shards, rank0, dtype",
    [(256, True, np.int64), (40, False, np.uint32), (3, True, np.int32), (2, True, np.uint64)],
)
def test_partitioned_table_vs_oracle(num_of_shards, rank0, dtype):
    """A table above the kernel's partition threshold (2**19 ids) is partitioned into shard ranges
    of ~2**16 ids whatever the number of threads (fewer ranges when fewer shards are usable; with
    one usable shard, none), each deduped on its own, and its offsets gathered back: every range
    must keep first-occurrence order, and every raw id its own offset."""
    rng = np.random.default_rng(num_of_shards)
    table = _large_table(rng, 600_000, dtype)
    small = rng.integers(0, 100, size=70).astype(dtype)
    dims = [8, 3]
    res = jax.jit(lambda a, b: OP([a, b], num_of_shards, dims, rank0_empty_shard=rank0))(table, small)
    want = oracle.fused_reorder_by_indices([table, small], num_of_shards, dims, rank0)
    assert_result_equal(res, want, dtype)


def test_vmap_of_partitioned_tables_vs_oracle():
    """Two batch elements, each with a partitioned table next to a whole one, and a shared
    partitioned table: their partitions live side by side in one call."""
    rng = np.random.default_rng(8)
    batch = np.stack([_large_table(rng, 540_000, np.int64) for _ in range(2)])
    whole = rng.integers(-50, 50, size=(2, 1_000), dtype=np.int64)
    shared = _large_table(rng, 530_000, np.int64)
    dims = [4, 2, 1]
    res = jax.vmap(lambda a, b, c: OP([a, b, c], 32, dims, rank0_empty_shard=False),
                   in_axes=(0, 0, None))(batch, whole, shared)
    want = _stack([oracle.fused_reorder_by_indices([row, w, shared], 32, dims)
                   for row, w in zip(batch, whole)])
    assert_result_equal(res, want, np.int64)


# --------------------------------------------------------------------------------------------------
# Gradients through the integer outputs
# --------------------------------------------------------------------------------------------------

_GRAD_CASE = SPEC_CASES[6]  # case 7: offsets [13,0,5,13,8,13,16,18,11,11,16,20,3]


def test_grad_with_closed_over_ids():
    ids_list = _literal_inputs(_GRAD_CASE, np.int64)
    offsets = np.array(_GRAD_CASE.fused_embedding_offsets, np.float32)

    def loss(x):
        res = OP(ids_list, 3, [3, 2], rank0_empty_shard=False)
        return jnp.sum(x * res.fused_embedding_offsets.astype(x.dtype))

    x = jnp.ones(len(offsets), jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.grad(loss)(x)), offsets)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(loss))(x)), offsets)


@pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])
def test_grad_with_ids_derived_from_input(use_jit):
    """ids = astype(x): their tangents are symbolic zeros; the integer outputs are constants."""
    flat_ids = np.concatenate(_literal_inputs(_GRAD_CASE, np.int64)).astype(np.float64)
    split = len(_GRAD_CASE.ids_list[0])
    offsets = np.array(_GRAD_CASE.fused_embedding_offsets, np.float64)

    def loss(x):
        ids = jnp.floor(x).astype(jnp.int64)
        res = OP([ids[:split], ids[split:]], 3, [3, 2], rank0_empty_shard=False)
        scale = (res.num_unique + res.fused_embedding_size).astype(x.dtype)  # 9 + 22 = 31
        return jnp.sum(x * res.fused_embedding_offsets.astype(x.dtype)) + scale * jnp.sum(x)

    grad_fn = jax.grad(loss)
    if use_jit:
        grad_fn = jax.jit(grad_fn)
    value, grad = jax.value_and_grad(loss)(jnp.asarray(flat_ids))
    np.testing.assert_allclose(float(value), float(flat_ids @ offsets + 31 * flat_ids.sum()))
    np.testing.assert_array_equal(np.asarray(grad_fn(jnp.asarray(flat_ids))), offsets + 31.0)
    np.testing.assert_array_equal(np.asarray(grad), offsets + 31.0)
