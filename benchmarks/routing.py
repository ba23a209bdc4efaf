"""Benchmark of ``jax_distops``' routing ops: ``split_by_indices`` (+ gradient),
``reorder_by_indices`` and ``ragged_split_by_indices``.

Compares, on the same inputs and in the same run:

* ``jax_distops`` — the op, wrapped as ``jax.jit(lambda *xs: op(*xs, S))``;
* ``jnp``         — the best pure-``jax.numpy`` formulation (``jnp_routing.py``: chunked
  packed-key sorts, see its docstring), same jit wrapping;
* ``numpy``       — the vectorized numpy version (``jnp_routing.*_np``) on host arrays;
* ``copy floor``  (split workloads) — ``jax.jit(jnp.copy)`` of the rows: one dispatch plus one
  copy of the bytes the op moves, the least a jitted op that writes a fresh output costs.

Workloads (fixed seeds; x64 enabled; ids int64, rows float32, indices int32):

1. ``split 1e6x1``    — ``split_by_indices``: 1e6 rows of 1 float32 (tensor shape [1e6]), S = 64,
   indices uniform in [0, 64).
2. ``split 1e6x64``   — the same with 1e6 x 64 float32 rows (256 MB).
3. ``split-grad 1e6x64`` — ``split_by_indices_gradient(indices, grads, 64)`` (the inverse
   permutation of the rows) at 1e6 x 64.
4. ``reorder 1e6``    — ``reorder_by_indices``: 1e6 int64 ids drawn uniformly from 5e5 distinct
   full-range int64 values (~432k unique: ~57% of the rows are duplicates);
   ``shard_ids = floormod(ids, 64)`` as int32, S = 64.
5. ``ragged 1e6/1e4`` — ``ragged_split_by_indices``: 1e6 full-range int64 values in 1e4 rows of
   random lengths (cut at 9999 sorted uniform positions, drawn with replacement: lengths ~
   exponential, mean 100, some empty), int64 row_splits; ``indices = floormod(values, 16)`` as
   int32, S = 16.

Targets (checked at the end): jax_distops at least 5x faster than jnp on every workload, and
``split 1e6x64`` within 3x of its copy floor.

Timing: ``fused_reorder.py``'s helpers (imported from it): inputs already on device, warm-up calls
excluded, ``block_until_ready`` on every result, median of per-call times, the repeats of the
implementations of one workload interleaved in 5 rounds.

Before timing, every implementation's outputs are checked for exact equality (shapes, dtypes,
values; floats bit for bit) against the jnp version on every workload; a mismatch, or a failing
jax_distops call, aborts the run.

Usage::

    python benchmarks/routing.py                 # full sizes
    python benchmarks/routing.py --quick         # 10x smaller, few repeats (smoke run)
    python benchmarks/routing.py --repeats 50    # same repeat count for every row
    python benchmarks/routing.py --jnp-variants  # also time the jnp design alternatives

An op missing from ``jax_distops`` (or a failing ``import jax_distops``) gets an empty jax_distops
row; unless all four ops are there, ratios are taken against the jnp row.

The workload builders (``make_split``, ``make_reorder``, ``make_ragged``) take sizes and seeds and
return numpy arrays, so tests can import them at reduced size; importing this module does not
change ``jax_enable_x64`` (running it, or calling ``main()``, enables it).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

import jax

if __name__ == "__main__":
    # x64 before any array is created (int64 ids). Only when run as a script: importing this
    # module for its workload builders must not flip x64 for a whole test session.
    jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fused_reorder import (  # noqa: E402
    Row,
    _abort,
    distops_op,
    format_table,
    jax_distops,
    start,
    time_call,
    time_interleaved,
)
from jnp_routing import (  # noqa: E402
    RaggedSplitResult,
    ReorderResult,
    SplitResult,
    assert_same,
    ragged_split_jnp,
    ragged_split_np,
    reorder_jnp,
    reorder_np,
    split_gradient_jnp,
    split_gradient_np,
    split_jnp,
    split_np,
)


OPS = ("split_by_indices", "split_by_indices_gradient", "reorder_by_indices",
       "ragged_split_by_indices")



# ----------------------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------------------


def make_split(num_rows: int = 1_000_000, width: int | None = None, num_splits: int = 64,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, tensor)``: int32 indices uniform in [0, num_splits); float32 rows, shape
    ``[num_rows]`` when ``width`` is None, else ``[num_rows, width]``."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, num_splits, size=num_rows, dtype=np.int32)
    shape = (num_rows,) if width is None else (num_rows, width)
    return indices, rng.standard_normal(shape, dtype=np.float32)


def make_reorder(num_ids: int = 1_000_000, num_distinct: int = 500_000, num_of_shards: int = 64,
                 seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, shard_ids)``: ``num_ids`` int64 ids drawn uniformly (with replacement) from
    ``num_distinct`` distinct full-range int64 values; ``shard_ids = floormod(ids, S)`` int32."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.int64)
    pool = np.unique(rng.integers(info.min, info.max, size=num_distinct, dtype=np.int64,
                                  endpoint=True))
    rng.shuffle(pool)
    ids = pool[rng.integers(0, pool.shape[0], size=num_ids)]
    return ids, np.mod(ids, num_of_shards).astype(np.int32)


def make_ragged(num_values: int = 1_000_000, num_rows: int = 10_000, num_splits: int = 16,
                seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, values, row_splits)``: full-range int64 values in ``num_rows`` rows cut at
    sorted uniform positions (drawn with replacement: random lengths, some rows empty), int64
    row_splits; ``indices = floormod(values, num_splits)`` int32."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.int64)
    values = rng.integers(info.min, info.max, size=num_values, dtype=np.int64, endpoint=True)
    cuts = np.sort(rng.integers(0, num_values + 1, size=num_rows - 1))
    row_splits = np.concatenate([[0], cuts, [num_values]]).astype(np.int64)
    return np.mod(values, num_splits).astype(np.int32), values, row_splits


class Workload(NamedTuple):
    name: str
    op: str  # the jax_distops op
    args: tuple  # host (numpy) arrays, positional
    num_splits: int
    num_rows: int
    repeats_jax: int
    repeats_np: int
    copy_floor: bool  # add a copy-floor row (copies the rows argument)


def build_workloads(quick: bool) -> list[Workload]:
    # The jitted calls take ~1-150 ms: 20 repeats (a few seconds per row) give a stable median;
    # numpy is slower on the big rows and steadier, so fewer.
    n = 100_000 if quick else 1_000_000
    r_jax, r_np = (5, 3) if quick else (20, 7)
    i1, t1 = make_split(n, None, 64, seed=0)
    i64, t64 = make_split(n, 64, 64, seed=0)
    _, g64 = make_split(n, 64, 64, seed=3)  # upstream gradient rows (split-major), any values
    ids, sid = make_reorder(n, n // 2, 64, seed=1)
    ri, rv, rs = make_ragged(n, n // 100, 16, seed=2)
    e = lambda v: f"{v:.0e}".replace("e+0", "e")  # 1000000 -> "1e6"
    return [
        Workload(f"split {e(n)}x1", "split_by_indices", (i1, t1), 64, n, r_jax, r_np, True),
        Workload(f"split {e(n)}x64", "split_by_indices", (i64, t64), 64, n, r_jax, r_np, True),
        Workload(f"split-grad {e(n)}x64", "split_by_indices_gradient", (i64, g64), 64, n,
                 r_jax, r_np, True),
        Workload(f"reorder {e(n)}", "reorder_by_indices", (ids, sid), 64, n, r_jax, r_np, False),
        Workload(f"ragged {e(n)}/{e(n // 100)}", "ragged_split_by_indices", (ri, rv, rs), 16, n,
                 r_jax, r_np, False),
    ]


# ----------------------------------------------------------------------------------------------
# implementations: (jitted jnp, numpy, jitted jax_distops, output normalization) per op
# ----------------------------------------------------------------------------------------------


def _jnp_fn(op: str, S: int, **kw) -> Callable:
    # Wrapped in the same kind of outer jit as jax_distops, so both rows pay the same dispatch
    # path (the inner jit is inlined while tracing).
    if op == "split_by_indices":
        return jax.jit(lambda i, t: split_jnp(i, t, S, **kw))
    if op == "split_by_indices_gradient":
        return jax.jit(lambda i, g: split_gradient_jnp(i, g, S, **kw))
    if op == "reorder_by_indices":
        return jax.jit(lambda x, s: reorder_jnp(x, s, S, **kw))
    if op == "ragged_split_by_indices":
        return jax.jit(lambda i, v, rs: ragged_split_jnp(i, (v, rs), S, **kw))
    raise ValueError(op)


def _np_fn(op: str, S: int) -> Callable:
    if op == "split_by_indices":
        return lambda i, t: split_np(i, t, S)
    if op == "split_by_indices_gradient":
        return lambda i, g: split_gradient_np(i, g, S)
    if op == "reorder_by_indices":
        return lambda x, s: reorder_np(x, s, S)
    if op == "ragged_split_by_indices":
        return lambda i, v, rs: ragged_split_np(i, (v, rs), S)
    raise ValueError(op)


def _distops_fn(op: str, S: int) -> Callable:
    f = distops_op(op)
    if op == "ragged_split_by_indices":
        return jax.jit(lambda i, v, rs: f(i, jax_distops.Ragged(v, rs), S))
    return jax.jit(lambda *xs: f(*xs, S))


def _normalize(op: str, out):
    """Any implementation's result as the jnp_routing result type (compared field by field)."""
    if op == "split_by_indices":
        return SplitResult(*out)
    if op == "reorder_by_indices":
        return ReorderResult(*out)
    if op == "ragged_split_by_indices":
        return RaggedSplitResult(*out)
    return out  # split_by_indices_gradient: one array


def _copy_floor_fn() -> Callable:
    # One fresh copy of the rows (the input is not donated, so XLA must copy): one dispatch plus
    # reading and writing the bytes the op moves.
    return jax.jit(lambda x: jnp.copy(x))


# jnp design alternatives (--jnp-variants), see jnp_routing's docstring.
JNP_VARIANTS = {
    "split_by_indices": [
        dict(method="chunked", move="gather"), dict(method="chunked", move="scatter"),
        dict(method="sort", move="gather"), dict(method="sort", move="scatter"),
        dict(method="argsort", move="gather"), dict(method="argsort", move="scatter"),
        dict(chunk=512), dict(chunk=4096), dict(groups=8), dict(groups=64),
    ],
    "split_by_indices_gradient": [
        dict(method="chunked", move="gather"), dict(method="chunked", move="scatter"),
        dict(method="sort", move="gather"), dict(method="sort", move="scatter"),
        dict(method="argsort", move="gather"), dict(method="argsort", move="scatter"),
    ],
    "reorder_by_indices": [
        dict(second="sort"), dict(sort1="hash"), dict(sort1="twopass"),
        dict(sort1="twopass", second="sort"), dict(sort1="multi"),
        dict(sort1="multi", second="sort"),
    ],
    "ragged_split_by_indices": [
        dict(method="sort"), dict(method="cumsum"), dict(chunk=512), dict(chunk=4096),
    ],
}


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def run_workload(w: Workload, repeats: int | None, jnp_variants: bool) -> list[Row]:
    S = w.num_splits
    # Inputs already on the device, so host-to-device copies are not timed (the op's inputs
    # live on device in a training step). The numpy row gets the host arrays.
    dev = [jax.device_put(a) for a in w.args]
    jax.block_until_ready(dev)
    rep_jax = repeats or w.repeats_jax
    rep_np = repeats or w.repeats_np

    jnp_fn = _jnp_fn(w.op, S)
    t0 = time.perf_counter()
    ref = _normalize(w.op, jax.block_until_ready(jnp_fn(*dev)))
    first_call = {"jnp": time.perf_counter() - t0}
    shapes = " ".join(f"{a.dtype}{list(a.shape)}" for a in w.args)
    extra = ""
    if w.op == "reorder_by_indices":
        extra = f" num_unique={int(ref.num_unique)}"
    print(f"[{w.name}] {w.op} S={S} args: {shapes}{extra}", flush=True)

    # Correctness gate: every implementation must agree exactly before anything is timed.
    np_fn = _np_fn(w.op, S)
    try:
        assert_same(_normalize(w.op, np_fn(*w.args)), ref, f"{w.name}: MISMATCH numpy vs jnp")
    except AssertionError as e:
        _abort(str(e))
    distops_fn = None
    if distops_op(w.op) is not None:
        distops_fn = _distops_fn(w.op, S)
        try:
            t0 = time.perf_counter()
            got = jax.block_until_ready(distops_fn(*dev))
            first_call["jax_distops"] = time.perf_counter() - t0
        except Exception as e:
            _abort(f"{w.name}: jax_distops.{w.op} failed: {type(e).__name__}: {e}")
        try:
            assert_same(_normalize(w.op, got), ref, f"{w.name}: MISMATCH jax_distops vs jnp")
        except AssertionError as e:
            _abort(str(e))
        del got
    print(f"[{w.name}] outputs agree exactly (jnp, numpy"
          f"{', jax_distops' if distops_fn else ''}); first call incl. compile: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in first_call.items()), flush=True)
    del ref
    gc.collect()

    # (impl, fn, args, repeats, warm-up, note). numpy: host arrays in and out; one warm-up call
    # (nothing to compile; it only warms caches and the allocator).
    plan = []
    if distops_fn is not None:
        plan.append(("jax_distops", distops_fn, dev, rep_jax, 3, ""))
    plan.append(("jnp", jnp_fn, dev, rep_jax, 3, ""))
    plan.append(("numpy", np_fn, list(w.args), rep_np, 1, ""))
    if w.copy_floor:
        rows_arg = dev[1]
        plan.append(("copy floor", _copy_floor_fn(), [rows_arg], rep_jax, 3,
                     f"jit(jnp.copy) of {rows_arg.dtype}{list(rows_arg.shape)}"))
    medians = time_interleaved([(fn, args, rep, wu) for _, fn, args, rep, wu, _ in plan])
    rows = []
    if distops_fn is None:
        why = "jax_distops not importable" if jax_distops is None else f"no jax_distops.{w.op}"
        rows.append(Row(w.name, "jax_distops", None, w.num_rows, why))
    for (impl, *_, note), med in zip(plan, medians):
        rows.append(Row(w.name, impl, med, w.num_rows, note))
    if jnp_variants:
        rows += run_jnp_variants(w, dev, rep_jax)
    for r in rows:
        if r.median_s is not None:
            print(f"  {r.impl:<44} {r.median_s * 1e3:10.3f} ms", flush=True)
    return rows


def run_jnp_variants(w: Workload, dev: list, repeats: int) -> list[Row]:
    """The design alternatives kept as options of the jnp functions, each checked against the
    default jnp version first."""
    ref = _normalize(w.op, jax.block_until_ready(_jnp_fn(w.op, w.num_splits)(*dev)))
    rows = []
    for kw in JNP_VARIANTS[w.op]:
        fn = _jnp_fn(w.op, w.num_splits, **kw)
        try:
            assert_same(_normalize(w.op, jax.block_until_ready(fn(*dev))), ref,
                        f"{w.name}: jnp variant {kw}")
        except AssertionError as e:
            _abort(str(e))
        name = "jnp " + " ".join(f"{k}={v}" for k, v in kw.items())
        rows.append(Row(w.name, name, time_call(fn, dev, repeats), w.num_rows))
        jax.clear_caches()
    return rows


def format_targets(rows: list[Row]) -> str:
    """Target lines: jax_distops >= 5x faster than jnp per workload; split NxW within 3x of its
    copy floor (checked on the 64-wide split)."""
    med = {(r.workload, r.impl): r.median_s for r in rows}
    lines = ["Targets:"]
    for wl in dict.fromkeys(r.workload for r in rows):
        d, j = med.get((wl, "jax_distops")), med.get((wl, "jnp"))
        if d is None:
            lines.append(f"  {wl:<22} jnp / jax_distops   : -     (target >= 5)  "
                         "jax_distops not run")
        else:
            ok = "met" if j / d >= 5 else "MISSED"
            lines.append(f"  {wl:<22} jnp / jax_distops   : {j / d:5.2f} (target >= 5)  {ok}")
        c = med.get((wl, "copy floor"))
        if wl.startswith("split ") and wl.endswith("x64") and c:
            if d is None:
                lines.append(f"  {wl:<22} jax_distops / copy  : -     (target <= 3)  "
                             f"jax_distops not run (jnp / copy: {j / c:.2f})")
            else:
                ok = "met" if d / c <= 3 else "MISSED"
                lines.append(f"  {wl:<22} jax_distops / copy  : {d / c:5.2f} (target <= 3)  {ok}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = start("routing ops benchmark", __doc__.splitlines()[0], "20 jitted, 7 numpy", argv)
    missing = [op for op in OPS if distops_op(op) is None]
    if jax_distops is not None and missing:
        print(f"# NOTE: jax_distops lacks {', '.join(missing)}; those rows are skipped and "
              "ratios are vs the jnp row.")
    rows = []
    for w in build_workloads(args.quick):
        rows += run_workload(w, args.repeats, args.jnp_variants)
        gc.collect()
    print()
    print(format_table(rows, base_impl="jnp" if missing else "jax_distops", unit="row"))
    print()
    print(format_targets(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
