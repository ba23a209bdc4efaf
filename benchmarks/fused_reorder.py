"""Benchmark of ``jax_distops.fused_reorder_by_indices`` (the headline op).

Compares, on the same inputs and in the same run:

* ``jax_distops``  — ``jax.jit(lambda *xs: jax_distops.fused_reorder_by_indices(list(xs), S, dims))``;
* ``jnp``          — the best pure-``jax.numpy`` formulation (``jnp_fused_reorder.fused_reorder_jnp``,
  same jit wrapping);
* ``numpy``        — the vectorized numpy version (``jnp_fused_reorder.fused_reorder_np``) on host
  arrays;
* ``jnp (one global sort)`` — the plain sort-based jnp formulation: one multi-operand
  ``lax.sort`` over all tables (``fused_reorder_jnp(sort1="multi", chunk_min=huge)``), for
  comparison with the ~430 ms "strong sort-based" jnp version the foundation issue quotes;
* floors (small workload only): ``copy floor`` — a jitted function that only copies its inputs
  (``[jnp.copy(x) for x in xs]``, one output per input), and ``concat floor`` — a jitted
  ``jnp.concatenate(xs)`` (one dispatch + one copy of all inputs into a single output), the least
  any jitted op on these inputs costs.

Workloads (fixed seeds; ids int64; x64 enabled):

1. ``monolith-bench`` — Monolith's ``distribution_ops_fused_benchmark.py``: 1e6 distinct ids uniform
   over the full int64 range (negatives included), cut into 30 slots at sorted random cut points
   drawn with replacement (a slot may be empty), each slot concatenated with itself and shuffled
   (~2e6 ids); S = 256, dim 16 everywhere, rank0 default (True since 256 > 4).
2. ``fused-test`` — Monolith's ``test_benchmark``: 128 slots x 10240 ids uniform in [0, 2**31);
   S = 8, dims 16, rank0 default (True).
3. ``one-table`` — as monolith-bench in a single slot (1e6 distinct full-range ids, each twice,
   shuffled): one table above a thread's share of the ids, which the kernel splits into shard-range
   tasks; S = 256, dim 16.
4. ``small`` — 30 slots x 100 ids (uniform over the full int64 range); S = 256, dims 16.

Timing: inputs already on device, warm-up calls excluded, ``block_until_ready`` on every result,
median of per-call times; the repeats of the implementations of one workload are interleaved in
5 rounds so machine drift affects all rows alike (see ``time_interleaved``).

Before timing, every implementation's 7 outputs are checked for exact equality (shapes, dtypes,
values) against the jnp version on every workload; a mismatch aborts the run.

Usage::

    python benchmarks/fused_reorder.py                 # full sizes
    python benchmarks/fused_reorder.py --quick         # ~10x smaller, few repeats (smoke run)
    python benchmarks/fused_reorder.py --repeats 50    # same repeat count for every row
    python benchmarks/fused_reorder.py --jnp-variants  # also time the jnp design alternatives

If ``import jax_distops`` fails, its rows are replaced by a note and ratios are taken against the
jnp row instead.

The workload builders (``make_monolith_bench``, ``make_fused_test``, ``make_small``) take sizes and
seeds and return lists of numpy int64 arrays, so tests can import them at reduced size; importing
this module does not change ``jax_enable_x64`` (running it, or calling ``main()``, enables it).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np

import jax

if __name__ == "__main__":
    # x64 before any array is created: the ids are int64 and the jnp version packs uint64 keys.
    # (Only when run as a script: importing this module for its workload builders must not flip
    # x64 for a whole test session. main() enables it too.)
    jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jnp_fused_reorder import (  # noqa: E402
    assert_same,
    fused_reorder_jnp,
    fused_reorder_np,
)

try:
    import jax_distops  # noqa: E402

    _DISTOPS_ERROR = None
except Exception as e:  # not built yet, or a broken build: run the other rows anyway
    jax_distops = None
    _DISTOPS_ERROR = f"{type(e).__name__}: {e}"


def distops_op(name: str):
    """``jax_distops.<name>``, or None when jax_distops or the op is not importable (the other
    benchmark scripts share this guarded import)."""
    return getattr(jax_distops, name, None) if jax_distops is not None else None


# ----------------------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------------------


def make_monolith_bench(
    num_unique: int = 1_000_000, num_slots: int = 30, seed: int = 0
) -> list[np.ndarray]:
    """Monolith's fused benchmark input: ``num_unique`` distinct full-range int64 ids (deduped,
    in random order) cut into ``num_slots`` slots at sorted cut points drawn with replacement
    (slots may be empty); each slot is concatenated with itself and shuffled. ~2*num_unique ids.
    """
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.int64)
    raw = rng.integers(info.min, info.max, size=num_unique, dtype=np.int64, endpoint=True)
    _, first = np.unique(raw, return_index=True)  # dedup (Monolith: a Python set)
    uniq = raw[np.sort(first)]  # keep the random order
    cuts = np.sort(rng.integers(0, uniq.shape[0] + 1, size=num_slots - 1))
    slots = []
    for piece in np.split(uniq, cuts):
        doubled = np.concatenate([piece, piece])
        rng.shuffle(doubled)
        slots.append(doubled)
    return slots


def make_fused_test(
    num_slots: int = 128, ids_per_slot: int = 10240, seed: int = 1
) -> list[np.ndarray]:
    """Monolith's ``test_benchmark`` input: ids uniform in [0, 2**31), int64."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2**31, size=ids_per_slot, dtype=np.int64) for _ in range(num_slots)]


def make_small(num_slots: int = 30, ids_per_slot: int = 100, seed: int = 2) -> list[np.ndarray]:
    """A small call (dispatch-bound): ids uniform over the full int64 range."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.int64)
    return [
        rng.integers(info.min, info.max, size=ids_per_slot, dtype=np.int64, endpoint=True)
        for _ in range(num_slots)
    ]


def default_rank0(num_of_shards: int) -> bool:
    """The op's ``rank0_empty_shard=None`` rule (DESIGN.md section 2), for the jnp/numpy rows."""
    env = os.environ.get("MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD", "1") == "1"
    return env and num_of_shards > 4


class Workload(NamedTuple):
    name: str
    slots: list  # list of numpy int64 arrays
    num_of_shards: int
    dims: tuple
    repeats_jax: int  # repeats for the jitted rows
    repeats_np: int  # repeats for the numpy row
    small: bool  # add the dispatch-floor row


def build_workloads(quick: bool) -> list[Workload]:
    # Repeat counts: enough for a stable median. The big jitted calls take 10-500 ms, so 20
    # repeats (a few seconds per row) suffice; numpy on the big inputs is slower and steadier, so
    # fewer. The small call takes tens of microseconds and its distribution has a long tail
    # (thread wake-ups, GC, page faults), so it gets thousands of repeats.
    num_unique = 100_000 if quick else 1_000_000
    if quick:
        fused = make_fused_test(16, 10240, seed=1)
        r_big, r_np, r_small = 5, 3, 200
    else:
        fused = make_fused_test(128, 10240, seed=1)
        r_big, r_np, r_small = 20, 5, 2000
    mono = make_monolith_bench(num_unique, 30, seed=0)
    one = make_monolith_bench(num_unique, 1, seed=3)  # a single slot
    small = make_small(30, 100, seed=2)
    return [
        Workload("monolith-bench", mono, 256, (16,) * len(mono), r_big, r_np, False),
        Workload("fused-test", fused, 8, (16,) * len(fused), r_big, r_np, False),
        Workload("one-table", one, 256, (16,), r_big, r_np, False),
        Workload("small", small, 256, (16,) * len(small), r_small, r_small, True),
    ]


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def _samples(fn: Callable, args: Sequence, n: int) -> list[float]:
    """``n`` wall times (seconds) of ``jax.block_until_ready(fn(*args))``, one per call.

    * ``block_until_ready`` on every result: JAX dispatch is asynchronous, and without it we
      would time only the dispatch. (A no-op for numpy results.)
    * One ``perf_counter`` pair per call, not a total over a loop, so a median can be taken:
      the median ignores occasional outliers (scheduler, other tenants of the VM) that a mean
      would absorb.
    * The garbage collector is paused while timing (as ``timeit`` does), so a collection
      triggered by earlier allocations does not land in a random sample.
    """
    out = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def time_interleaved(entries: list, rounds: int = 5) -> list[float]:
    """Median seconds per call for each ``(fn, args, repeats, warmup)`` entry.

    * Warm-up calls first (``warmup`` each: 3 for jitted functions, so compilation, first-touch
      page faults and allocator growth are excluded; we measure the steady state of a training
      step, not the first call).
    * The repeats of all entries are interleaved in ``rounds`` rounds (round k times a slice of
      every entry in turn), so slow drift of the machine (this is a shared 2-core VM; whole runs
      vary by 10-30%) hits every implementation alike and the ratios stay meaningful. Each
      slice starts with one untimed call.
    """
    for fn, args, _, warmup in entries:
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    samples = [[] for _ in entries]
    for k in range(rounds):
        for j, (fn, args, repeats, _) in enumerate(entries):
            # slice k of this entry's repeats (slices differ by at most one call)
            n = repeats * (k + 1) // rounds - repeats * k // rounds
            if n:
                # one untimed call first: the previous entry left other data in the caches
                # (and possibly idle worker threads), which the steady state would not see
                jax.block_until_ready(fn(*args))
                samples[j] += _samples(fn, args, n)
    return [float(np.median(x)) for x in samples]


def time_call(fn: Callable, args: Sequence, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call of one function (see :func:`time_interleaved`)."""
    return time_interleaved([(fn, args, repeats, warmup)], rounds=1)[0]


class Row(NamedTuple):
    workload: str
    impl: str
    median_s: float | None  # None: not run
    num_ids: int
    note: str = ""


def _jnp_fn(S: int, dims: tuple, rank0: bool, **kw) -> Callable:
    # Wrapped in the same kind of outer jit as jax_distops, so both rows pay the same dispatch
    # path (the inner jit is inlined while tracing).
    return jax.jit(lambda *xs: fused_reorder_jnp(list(xs), S, dims, rank0, **kw))


def _distops_fn(S: int, dims: tuple) -> Callable:
    # rank0_empty_shard left at its default (None -> env rule), as a user would call it.
    return jax.jit(lambda *xs: jax_distops.fused_reorder_by_indices(list(xs), S, dims))


def _concat_floor_fn() -> Callable:
    # jnp.concatenate(xs) is one real copy of all inputs into a fresh buffer that XLA cannot
    # elide (an identity like x + 0 could be simplified to an aliased output).
    return jax.jit(lambda *xs: jnp.concatenate(xs))


def _copy_floor_fn() -> Callable:
    # "A jitted function that only copies its inputs": one fresh output per input (the inputs are
    # not donated, so XLA must copy); it pays per-output dispatch like an op with many outputs.
    return jax.jit(lambda *xs: [jnp.copy(x) for x in xs])


def _abort(msg: str) -> None:
    print("\n" + "!" * 100, file=sys.stderr)
    print(f"ABORTING before timing (outputs must agree exactly): {msg}", file=sys.stderr)
    print("!" * 100, file=sys.stderr)
    sys.exit(2)


def run_workload(w: Workload, repeats: int | None, jnp_variants: bool) -> list[Row]:
    S, dims = w.num_of_shards, w.dims
    rank0 = default_rank0(S)
    num_ids = sum(int(s.shape[0]) for s in w.slots)
    # Inputs already on the device, so host-to-device copies are not timed (the op's inputs
    # live on device in a training step). The numpy row gets host arrays.
    dev = [jax.device_put(s) for s in w.slots]
    jax.block_until_ready(dev)
    rep_jax = repeats or w.repeats_jax
    rep_np = repeats or w.repeats_np

    jnp_fn = _jnp_fn(S, dims, rank0)
    t0 = time.perf_counter()
    ref = jax.block_until_ready(jnp_fn(*dev))
    first_call = {"jnp": time.perf_counter() - t0}
    print(
        f"[{w.name}] M={len(w.slots)} N_tot={num_ids} S={S} dims={dims[0]}x{len(dims)} "
        f"rank0={rank0} num_unique={int(ref.num_unique)} E_tot={int(ref.fused_embedding_size)}",
        flush=True,
    )

    # Correctness gate: every implementation must agree exactly before anything is timed.
    np_out = fused_reorder_np(w.slots, S, dims, rank0)
    try:
        assert_same(np_out, ref, f"{w.name}: MISMATCH numpy vs jnp")
    except AssertionError as e:
        _abort(str(e))
    distops_fn = None
    if jax_distops is not None:
        distops_fn = _distops_fn(S, dims)
        try:
            t0 = time.perf_counter()
            got = jax.block_until_ready(distops_fn(*dev))
            first_call["jax_distops"] = time.perf_counter() - t0
        except Exception as e:
            _abort(f"{w.name}: jax_distops call failed: {type(e).__name__}: {e}")
        try:
            assert_same(tuple(got), ref, f"{w.name}: MISMATCH jax_distops vs jnp")
        except AssertionError as e:
            _abort(str(e))
    print(f"[{w.name}] outputs agree exactly (jnp, numpy"
          f"{', jax_distops' if distops_fn else ''}); first call incl. compile: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in first_call.items()), flush=True)

    # (impl, fn, args, repeats, warm-up, note). numpy: host arrays in and out; one warm-up call
    # is enough (nothing to compile, it only warms caches and the allocator).
    plan = []
    if distops_fn is not None:
        plan.append(("jax_distops", distops_fn, dev, rep_jax, 3, ""))
    plan.append(("jnp", jnp_fn, dev, rep_jax, 3, ""))
    plain_fn = _jnp_fn(S, dims, rank0, sort1="multi", chunk_min=1 << 62)
    try:
        assert_same(jax.block_until_ready(plain_fn(*dev)), ref, f"{w.name}: jnp one global sort")
    except AssertionError as e:
        _abort(str(e))
    # Fewer repeats: this row only gives context (it is 5-50x slower than the others).
    plan.append(("jnp (one global sort)", plain_fn, dev, max(3, rep_jax // 4), 1, ""))
    plan.append(("numpy", lambda *a: fused_reorder_np(a, S, dims, rank0), w.slots, rep_np, 1, ""))
    if w.small:
        plan.append(("copy floor", _copy_floor_fn(), dev, rep_jax, 3,
                     "jit([jnp.copy(x) for x in xs])"))
        plan.append(("concat floor", _concat_floor_fn(), dev, rep_jax, 3,
                     "jit(jnp.concatenate(xs))"))
    medians = time_interleaved([(fn, args, rep, wu) for _, fn, args, rep, wu, _ in plan])
    rows = []
    if distops_fn is None:
        rows.append(Row(w.name, "jax_distops", None, num_ids, "not importable"))
    for (impl, *_, note), med in zip(plan, medians):
        rows.append(Row(w.name, impl, med, num_ids, note))
    if jnp_variants:
        rows += run_jnp_variants(w, dev, ref, rank0, rep_jax, num_ids)
    for r in rows:
        if r.median_s is not None:
            print(f"  {r.impl:<34} {r.median_s * 1e3:10.3f} ms", flush=True)
    return rows


def run_jnp_variants(w, dev, ref, rank0, repeats, num_ids) -> list[Row]:
    """The design alternatives kept as options of fused_reorder_jnp (see its module docstring)."""
    S, dims = w.num_of_shards, w.dims
    rows = []
    for sort1 in ("auto", "hash", "twopass", "multi"):
        for chunk_name, chunk_min in (("per-table", 1), ("default", None), ("global", 1 << 62)):
            if sort1 == "auto" and chunk_min is None:
                continue  # that is the "jnp" row
            fn = _jnp_fn(S, dims, rank0, sort1=sort1, chunk_min=chunk_min)
            try:
                assert_same(jax.block_until_ready(fn(*dev)), ref, f"{w.name}: jnp variant")
            except AssertionError as e:
                _abort(str(e))
            rows.append(Row(w.name, f"jnp sort1={sort1} chunks={chunk_name}",
                            time_call(fn, dev, repeats), num_ids))
            jax.clear_caches()  # many big executables otherwise exhaust the LLVM JIT mappings
    return rows


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def format_table(rows: list[Row], base_impl: str | None = None, unit: str = "id") -> str:
    """The results table. ``base_impl``: the row the ratios are taken against (default:
    "jax_distops", or "jnp" when jax_distops is not importable); ``unit``: what ``Row.num_ids``
    counts, for the ns/<unit> column (``benchmarks/routing.py`` passes "row")."""
    if base_impl is None:
        base_impl = "jax_distops" if jax_distops is not None else "jnp"
    ref = {r.workload: r.median_s for r in rows if r.impl == base_impl}
    header = ["workload", "implementation", "median ms", f"ns/{unit}", f"vs {base_impl}", "note"]
    body = []
    for r in rows:
        if r.median_s is None:
            body.append([r.workload, r.impl, "-", "-", "-", r.note])
            continue
        ratio = r.median_s / ref[r.workload] if ref.get(r.workload) else float("nan")
        body.append([
            r.workload, r.impl, f"{r.median_s * 1e3:.3f}",
            f"{r.median_s * 1e9 / r.num_ids:.1f}", f"{ratio:.2f}", r.note,
        ])
    widths = [max(len(str(x[i])) for x in [header] + body) for i in range(len(header))]
    right = {2, 3, 4}

    def fmt(cells):
        return "  ".join(
            str(c).rjust(wd) if i in right else str(c).ljust(wd)
            for i, (c, wd) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [fmt(header), fmt(["-" * wd for wd in widths])]
    prev = None
    for cells in body:
        if prev is not None and cells[0] != prev:
            lines.append("")
        lines.append(fmt(cells))
        prev = cells[0]
    lines.append("")
    per = "total raw ids" if unit == "id" else f"{unit}s"
    lines.append(f"ratio = median / median of {base_impl} on the same workload "
                 f"(>1: slower than {base_impl}); ns/{unit} = median / {per} of the call.")
    return "\n".join(lines)


def start(title: str, description: str, repeats_help: str, argv=None) -> argparse.Namespace:
    """Parses the benchmarks' common flags, turns x64 on and prints the run's header lines."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and repeats (smoke run)")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed repeats for every row (default: {repeats_help})")
    ap.add_argument("--jnp-variants", action="store_true",
                    help="also time the jnp design alternatives (slow to compile)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be >= 1")
    jax.config.update("jax_enable_x64", True)

    dev = jax.devices()[0]
    print(
        f"# {title}  {datetime.datetime.now().isoformat(timespec='seconds')}"
        f"  jax {jax.__version__}  jaxlib {jax.lib.__version__}  numpy {np.__version__}"
        f"  python {platform.python_version()}"
    )
    print(
        f"# device {dev.platform}:{dev.device_kind}  os.cpu_count()={os.cpu_count()}"
        f"  jax_enable_x64={jax.config.jax_enable_x64}"
        f"  {'quick' if args.quick else 'full'} sizes"
    )
    if jax_distops is None:
        print(f"# NOTE: jax_distops is not importable ({_DISTOPS_ERROR}); its rows are skipped "
              "and ratios are vs the jnp row.")
    else:
        print(f"# jax_distops from {os.path.dirname(jax_distops.__file__)}")
    return args


def main(argv=None) -> int:
    args = start("fused_reorder_by_indices benchmark", __doc__.splitlines()[0],
                 "20 big jitted, 5 big numpy, 2000 small", argv)
    rows = []
    for w in build_workloads(args.quick):
        rows += run_workload(w, args.repeats, args.jnp_variants)
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
