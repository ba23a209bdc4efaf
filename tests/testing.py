"""Assertions shared by the op tests (importable as `testing` through tests/conftest.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np


def bits(x: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns (NaN and -0.0 compare exactly); other dtypes unchanged."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))
    return x


def assert_array_bits_equal(got, want: np.ndarray, what: str) -> None:
    """Same dtype, same shape, same bits."""
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, want {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    np.testing.assert_array_equal(bits(got), bits(want), err_msg=what, strict=True)


def runtime_errors(use_jit: bool):
    """The exception types a bad-data call may raise.

    The contract is `jax.errors.JaxRuntimeError`. A fresh `jax.jit` function fails on its first
    call, so it takes JAX's Python dispatch path and raises exactly that. Eager calls reuse the
    primitive's cached executable, and once an executable has run successfully, JAX's C++ fast path
    reports a failed status as a plain `ValueError` with the same message (jax 0.10.2;
    jax-ml/jax#34083, fix pending in jax-ml/jax#39898), so the eager variants accept both.
    """
    return jax.errors.JaxRuntimeError if use_jit else (jax.errors.JaxRuntimeError, ValueError)


# Awkward ids per dtype for the lookup tests.
ID_SPECIALS = {
    np.dtype(np.int32): [-(2**31), 2**31 - 1, -1, 0, 1, -(2**31) + 1],
    np.dtype(np.uint32): [0, 1, 2**32 - 1, 2**31, 2**31 - 1],
    # 5, 2**32 + 5 and -(2**32) + 5 share their low 32 bits; so do 0, 2**32 and -(2**32).
    np.dtype(np.int64): [-(2**63), 2**63 - 1, -1, 0, 5, 2**32 + 5, -(2**32) + 5, 2**32, -(2**32),
                         2**40, -(2**31) - 1, 2**31],
    np.dtype(np.uint64): [0, 5, 2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 + 5, 2**40,
                          2**64 - 2**32],
}


def id_pool(rng: np.random.Generator, id_dtype, size: int) -> np.ndarray:
    """`size` distinct ids of `id_dtype` in random order: the awkward values, small values and
    values drawn from the whole range."""
    info = np.iinfo(id_dtype)
    values = list(ID_SPECIALS[np.dtype(id_dtype)])[:size]
    seen = set(values)
    while len(values) < size:
        if rng.random() < 0.5:
            v = int(rng.integers(max(info.min, -50), 50))
        else:
            v = int(rng.integers(info.min, info.max, dtype=id_dtype, endpoint=True))
        if v not in seen:
            seen.add(v)
            values.append(v)
    return np.array(values, dtype=id_dtype)[rng.permutation(len(values))]


# HashId of csrc/sharding.h, which every CPU hash index and partition of the kernels is keyed by.
_HASH_MUL = 0x9E3779B97F4A7C15
_MASK64 = 2**64 - 1


def kernel_hash(x: int) -> int:
    """HashId(x) of csrc/sharding.h for a 64-bit id (as an unsigned int), transcribed."""
    x &= _MASK64
    return ((x ^ (x >> 31)) * _HASH_MUL) & _MASK64


def colliding_ids(rng: np.random.Generator, n: int, prefix: int | None = None) -> np.ndarray:
    """`n` distinct int64 ids whose kernel hash (`kernel_hash`) has the same top 40 bits, `prefix`
    (random if None). Built by inverting the hash, so they exist at any size: the CPU kernels pick
    an id's hash-index group from the top bits of its hash, its 7-bit tag from bits 40-46 and its
    join / dedup partition from bits 24-35 (csrc/id_index.h), so these ids share all three in any
    index of up to 2**20 groups: one long chain of full groups whose every tag matches. With
    `prefix` = 2**40 - 1 their home is the index's last group, so the chain wraps around to the
    first."""
    inverse = pow(_HASH_MUL, -1, 2**64)
    if prefix is None:
        prefix = int(rng.integers(0, 2**40))
    low = rng.choice(2**24, size=n, replace=False)
    ids = []
    for lo in low.tolist():
        h = (prefix << 24) | lo
        y = (h * inverse) & _MASK64  # undo the multiply, then the xor-shift
        x = y ^ (y >> 31) ^ (y >> 62)
        assert kernel_hash(x) == h, "test bug: hash inverse"
        ids.append(x - 2**64 if x >= 2**63 else x)
    return np.array(ids, dtype=np.int64)


def quarters(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 multiples of 1/4 in [-2, 2]: sums of a few of them are exact in float32 whatever
    the order, so gradients can be compared bit for bit."""
    return (rng.integers(-8, 9, size=shape) / 4).astype(np.float32)


def random_floats(rng: np.random.Generator, dtype, shape, special: bool) -> np.ndarray:
    """Values spread over many magnitudes (so the summation order shows in the last bits); with
    `special`, NaN / +-0.0 / +-inf mixed in (forward only: rows are just moved)."""
    base = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, size=shape)
    if special:
        specials = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0])
        pick = rng.random(size=shape) < 0.15
        base = np.where(pick, specials[rng.integers(0, len(specials), size=shape)], base)
    return base.astype(dtype)


def literal_params(cases, float_dtypes) -> list:
    """Named parameters for the lookup tests' literal cases: every case with every float dtype,
    the id dtype rotating through the case's allowed ones (`case.id_dtypes`)."""
    params = []
    for c, case in enumerate(cases):
        for k, dtype in enumerate(float_dtypes):
            id_dtype = case.id_dtypes[(c + k) % len(case.id_dtypes)]
            params.append(
                dict(
                    testcase_name=(
                        f"{case.name}_{np.dtype(dtype).name}_ids{np.dtype(id_dtype).name}"
                    ),
                    case=case,
                    id_dtype=id_dtype,
                    dtype=dtype,
                )
            )
    return params


def dtype_name(dtype) -> str:
    """The numpy name of a dtype ("float32", "bfloat16"): test ids."""
    return np.dtype(dtype).name


def rows_array(data, width: int, dtype) -> np.ndarray:
    """A spec vector's flat row list as a `[len(data), width]` array."""
    return np.array(data, dtype=dtype).reshape(len(data), width)


def batch_leaf(per_example: list, axis, fixed: int):
    """For a vmap-vs-loop test: (the batched argument, the per-example values the loop sees). With
    axis None the argument is unbatched: example `fixed` for every iteration."""
    if axis is None:
        return per_example[fixed], [per_example[fixed]] * len(per_example)
    return np.stack(per_example, axis=axis), list(per_example)


def starts_with_op_names(op: str, *args: str) -> str:
    """Regex: the message starts with the op's name and then names (any of) the argument(s)."""
    arg = "|".join(args)
    return rf"^{op}(?![A-Za-z0-9_])(?s:.*)\b({arg})\b"


def assert_unable_to_map(excinfo, op: str, value: int) -> None:
    """The error names the op and carries Monolith's "Unable to map id <value>"."""
    message = str(excinfo.value)
    assert op in message, message
    assert re.search(rf"Unable to map id {re.escape(str(value))}(?!\d)", message), message
