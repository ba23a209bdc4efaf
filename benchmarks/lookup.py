"""Benchmark of ``jax_distops``' lookup ops (map_id_to_embedding, gather_embeddings_by_input,
fused_gather_embeddings_by_input) and their gradients.

Compares, on the same inputs and in the same run:

* ``jax_distops`` — the op, wrapped as ``jax.jit(lambda *xs: op(*xs, ...))`` (map: default
  ``use_multi_threads=True``; gather: ``use_multi_threads=True``; fused gradient: ``scale=0.5``);
* ``jnp``         — the best pure-``jax.numpy`` formulation (``jnp_lookup.py``: hashed
  single-operand sort + bucket directory for the id lookups, windowed ``lax.gather`` /
  ``lax.scatter_add`` for the fused op; alternatives measured in its docstring), same jit
  wrapping;
* ``copy floor``  — ``jax.jit(lambda *xs: [jnp.copy(x) for x in xs])`` of arrays holding the bytes
  the op must move: forward = its outputs; gradient = its ``grads`` input plus its outputs. One
  dispatch plus reading and writing those bytes once, the least a jitted op that writes fresh
  outputs costs. (For a gradient this copies more than the op's minimum traffic, reading grads and
  writing the outputs once. One fresh 256 MB output is slow to copy, ~60 ms, mostly page faults;
  30 smaller outputs are copied concurrently from reused allocations, ~4x faster per byte.)

Workloads (fixed seeds; x64 enabled; ids int64 uniform over the full int64 range; float32 rows;
"a/b" in a name = lookups / distinct ids):

1. ``map``    — Monolith's ``distribution_ops_benchmark.py`` shape: ``b`` distinct ids split into
   10 tables by ``floormod(id, 10)`` (order kept), embeddings ``[K_s, D]``, D = 16 and 64;
   input = the ids shuffled (``1e6/1e6``) or 1e6 draws with replacement from 5e5 ids
   (``1e6/5e5``, duplicates). ``fwd`` = ``map_id_to_embedding``; ``grad`` =
   ``map_id_to_embedding_gradient_back_prop(ids_list, input, grads)`` (hashes again).
2. ``gather`` — ``gather_embeddings_by_input(ids, embeddings, input)``: the same kinds of id sets
   (other seeds) as one table ``[M, D]``; ``grad`` =
   ``gather_embeddings_by_ids_gradient_back_prop(ids, grads, index_mapping)`` (no hashing: a
   scatter-add by index_mapping).
3. ``fused``  — 30 tables, offsets as ``fused_reorder_by_indices`` produces them (computed by
   ``jnp_fused_reorder.fused_reorder_np``, which matches the op exactly) for Monolith's fused
   benchmark input (``fused_reorder.make_monolith_bench(5e5, 30)``: 1e6 ids, each slot's
   ids twice, so 50% unique; S = 256), dims 16 everywhere, 64 everywhere, and ``mixed`` =
   16, 32, 64, 8 cycling; ``fwd`` = ``fused_gather_embeddings_by_input(flat, offsets, dims)``,
   ``grad`` = ``fused_gather_embeddings_by_input_gradient(E, grads, offsets, dims, 0.5)``.

Targets (checked at the end; the issue's): ``map`` and ``gather`` forward >= 5x faster than jnp;
``fused`` forward and gradient at least as fast as jnp and within 2x of the copy floor. The
``map``/``gather`` gradients get their ratios printed without a target.

Timing: ``fused_reorder.py``'s helpers (imported from it): inputs already on device, warm-up
calls excluded, ``block_until_ready`` on every result, median of per-call times, the repeats of
the implementations of one workload interleaved in 5 rounds. The load average is printed before
and after (a shared 2-core VM).

Checks before timing: at startup, the default jnp baselines against the numpy references on small
inputs (``jnp_lookup.self_check(variants=False)``; ``python benchmarks/jnp_lookup.py`` checks
every variant); per workload, the forward outputs of jnp and jax_distops are compared bit for bit
with each other and with a vectorized numpy lookup, gradients bit for bit with jnp (a float
mismatch within 1e-5 relative is reported, not fatal: summation order). A failing jax_distops call
or a mismatch aborts the run.

Usage::

    python benchmarks/lookup.py                  # full sizes
    python benchmarks/lookup.py --quick          # 10x smaller, few repeats (smoke run)
    python benchmarks/lookup.py --only fused     # one family (map, gather, fused; repeatable)
    python benchmarks/lookup.py --repeats 50     # same repeat count for every row
    python benchmarks/lookup.py --jnp-variants   # also time the jnp design alternatives

An op missing from ``jax_distops`` (or a failing ``import jax_distops``) gets an empty
jax_distops row and its family's ratios are taken against the jnp row.

The workload builders (``make_map``, ``make_gather``, ``make_fused``, ``make_grads``) take sizes
and seeds and return numpy arrays, so tests can import them at reduced size; importing this module
does not change ``jax_enable_x64`` (running it, or calling ``main()``, enables it).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Callable, Iterator, NamedTuple, Sequence

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
    make_monolith_bench,
    start,
    time_interleaved,
)
from jnp_fused_reorder import fused_reorder_np  # noqa: E402
from jnp_lookup import (  # noqa: E402
    first_index_np,
    fused_gather_gradient_jnp,
    fused_gather_jnp,
    gather_embeddings_gradient_jnp,
    gather_embeddings_jnp,
    map_id_to_embedding_gradient_jnp,
    map_id_to_embedding_jnp,
    self_check,
)


FAMILIES = {
    "map": ("map_id_to_embedding", "map_id_to_embedding_gradient_back_prop"),
    "gather": ("gather_embeddings_by_input", "gather_embeddings_by_ids_gradient_back_prop"),
    "fused": ("fused_gather_embeddings_by_input", "fused_gather_embeddings_by_input_gradient"),
}
FUSED_SCALE = 0.5
MIXED_DIMS = (16, 32, 64, 8)



# ----------------------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------------------


def _distinct_ids(rng, n: int) -> np.ndarray:
    """``n`` distinct int64 ids uniform over the full int64 range, in random order (``n`` minus
    the rare duplicates, ~n**2 / 2**65)."""
    info = np.iinfo(np.int64)
    ids = np.unique(rng.integers(info.min, info.max, size=n, dtype=np.int64, endpoint=True))
    rng.shuffle(ids)
    return ids


def _lookups(rng, ids: np.ndarray, num_lookups: int | None) -> np.ndarray:
    if num_lookups is None or num_lookups == ids.shape[0]:
        return rng.permutation(ids)  # every id once, shuffled
    return ids[rng.integers(0, ids.shape[0], size=num_lookups)]  # draws with replacement


def make_map(num_distinct: int = 1_000_000, num_lookups: int | None = None,
             num_tables: int = 10, dim: int = 16, seed: int = 0):
    """``(ids_list, embeddings_list, input)`` for ``map_id_to_embedding``: ``num_distinct``
    distinct full-range int64 ids split into ``num_tables`` tables by ``floormod(id,
    num_tables)`` (order kept), float32 embeddings ``[K_s, dim]``; ``input`` = the ids shuffled
    (``num_lookups`` None) or ``num_lookups`` draws with replacement."""
    rng = np.random.default_rng(seed)
    ids = _distinct_ids(rng, num_distinct)
    t = np.mod(ids, num_tables)
    ids_list = [ids[t == s] for s in range(num_tables)]
    embs = [rng.standard_normal((a.shape[0], dim), dtype=np.float32) for a in ids_list]
    return ids_list, embs, _lookups(rng, ids, num_lookups)


def make_gather(num_distinct: int = 1_000_000, num_lookups: int | None = None, dim: int = 16,
                seed: int = 1):
    """``(ids, embeddings, input)`` for ``gather_embeddings_by_input``: distinct full-range int64
    ids, float32 ``[M, dim]`` embeddings, input as in :func:`make_map`."""
    rng = np.random.default_rng(seed)
    ids = _distinct_ids(rng, num_distinct)
    emb = rng.standard_normal((ids.shape[0], dim), dtype=np.float32)
    return ids, emb, _lookups(rng, ids, num_lookups)


def make_fused(num_unique: int = 500_000, num_slots: int = 30, dims=16,
               num_of_shards: int = 256, seed: int = 2):
    """``(flat, offsets_list, dims)`` for ``fused_gather_embeddings_by_input``: the offsets
    ``fused_reorder_by_indices`` gives for ``make_monolith_bench(num_unique, num_slots)`` (each
    slot's ids twice, shuffled: ~2 * num_unique lookups, 50% unique), split per table (int32);
    ``flat``: float32 ``[fused_embedding_size]``. ``dims``: an int (all tables) or a sequence
    cycled over the tables."""
    slots = make_monolith_bench(num_unique, num_slots, seed=seed)
    cyc = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(int(cyc[m % len(cyc)]) for m in range(num_slots))
    r = fused_reorder_np(slots, num_of_shards, dims, rank0_empty=num_of_shards > 4)
    ends = np.cumsum([s.shape[0] for s in slots])[:-1]
    offsets = [np.ascontiguousarray(o) for o in np.split(np.asarray(r.fused_embedding_offsets),
                                                          ends)]
    rng = np.random.default_rng(seed + 100)
    flat = rng.standard_normal(int(r.fused_embedding_size), dtype=np.float32)
    return flat, offsets, dims


def make_grads(shapes: Sequence[tuple], seed: int = 3) -> list[np.ndarray]:
    """Upstream gradients (float32 standard normal) of the given shapes."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


class Workload(NamedTuple):
    name: str
    family: str  # "map", "gather", "fused"
    op: str  # the jax_distops function
    args: tuple  # positional arguments (numpy arrays or lists of them)
    static: dict  # dims / size of the fused ops
    num_rows: int  # lookups
    repeats: int
    floor_inputs: tuple  # indices into args of the inputs the copy floor copies (grads)
    expected: object  # numpy forward result (or None): checked bit for bit


def _e(v: int) -> str:
    return f"{v:.0e}".replace("e+0", "e")  # 1000000 -> "1e6"


def build_workloads(quick: bool, only: Sequence[str]) -> Iterator[Workload]:
    # The jitted calls take ~5-300 ms: 20 repeats (10 for the 64-wide rows) per row give a
    # stable median. Workloads are made one at a time (a generator), so that only the inputs of
    # the one being timed (up to ~0.5 GiB) are alive.
    n = 100_000 if quick else 1_000_000
    rep = (lambda d: 3) if quick else (lambda d: 10 if d == 64 else 20)
    for fam in ("map", "gather"):
        if fam not in only:
            continue
        for distinct in (n, n // 2):
            for D in (16, 64):
                tag = f"{_e(n)}/{_e(distinct)} d{D}"
                if fam == "map":
                    il, el, inp = make_map(distinct, n, 10, D, seed=0)
                    keys = np.concatenate(il)
                    want = np.concatenate(el)[first_index_np(keys, inp)]
                    (g,) = make_grads([(n, D)], seed=3)
                    yield Workload(f"map {tag} fwd", "map", FAMILIES["map"][0],
                                   (il, el, inp), {}, n, rep(D), (), (want,))
                    yield Workload(f"map {tag} grad", "map", FAMILIES["map"][1],
                                   (il, inp, g), {}, n, rep(D), (2,), None)
                else:
                    ids, emb, inp = make_gather(distinct, n, D, seed=1)
                    im = first_index_np(ids, inp)
                    (g,) = make_grads([(n, D)], seed=4)
                    yield Workload(f"gather {tag} fwd", "gather", FAMILIES["gather"][0],
                                   (ids, emb, inp), {}, n, rep(D), (), (emb[im], im))
                    yield Workload(f"gather {tag} grad", "gather", FAMILIES["gather"][1],
                                   (ids, g, im), {}, n, rep(D), (1,), None)
    if "fused" in only:
        for dims, tag in ((16, "d16"), (64, "d64"), (MIXED_DIMS, "mixed")):
            flat, offs, dd = make_fused(n // 2, 30, dims, 256, seed=2)
            L = sum(o.shape[0] for o in offs)
            name = f"fused 30x {tag}"
            want = [flat[o[:, None] + np.arange(d)] for o, d in zip(offs, dd)]
            grads = make_grads([(o.shape[0], d) for o, d in zip(offs, dd)], seed=5)
            r = rep(64 if tag == "d64" else 16)
            st = dict(dims=dd, size=int(flat.shape[0]))
            yield Workload(f"{name} fwd", "fused", FAMILIES["fused"][0], (flat, offs), st,
                           L, r, (), tuple(want))
            yield Workload(f"{name} grad", "fused", FAMILIES["fused"][1], (grads, offs), st,
                           L, r, (0,), None)


# ----------------------------------------------------------------------------------------------
# implementations
# ----------------------------------------------------------------------------------------------


def _jnp_fn(w: Workload, **kw) -> Callable:
    # Wrapped in the same kind of outer jit as jax_distops, so both rows pay the same dispatch
    # path (the inner jit is inlined while tracing).
    op, st = w.op, w.static
    if op == "map_id_to_embedding":
        return jax.jit(lambda il, el, x: map_id_to_embedding_jnp(il, el, x, **kw))
    if op == "map_id_to_embedding_gradient_back_prop":
        return jax.jit(lambda il, x, g: map_id_to_embedding_gradient_jnp(il, x, g, **kw))
    if op == "gather_embeddings_by_input":
        return jax.jit(lambda ids, e, x: tuple(gather_embeddings_jnp(ids, e, x, **kw)))
    if op == "gather_embeddings_by_ids_gradient_back_prop":
        return jax.jit(lambda ids, g, im: gather_embeddings_gradient_jnp(ids, g, im, **kw))
    if op == "fused_gather_embeddings_by_input":
        return jax.jit(lambda f, offs: fused_gather_jnp(f, offs, st["dims"], **kw))
    if op == "fused_gather_embeddings_by_input_gradient":
        return jax.jit(lambda gs, offs: fused_gather_gradient_jnp(
            st["size"], gs, offs, st["dims"], FUSED_SCALE, **kw))
    raise ValueError(op)


def _distops_fn(w: Workload) -> Callable:
    f, st = distops_op(w.op), w.static
    if w.op == "map_id_to_embedding":
        return jax.jit(lambda il, el, x: f(il, el, x))  # use_multi_threads default: True
    if w.op == "gather_embeddings_by_input":
        return jax.jit(lambda ids, e, x: tuple(f(ids, e, x, use_multi_threads=True)))
    if w.op == "fused_gather_embeddings_by_input":
        return jax.jit(lambda fl, offs: f(fl, offs, st["dims"]))
    if w.op == "fused_gather_embeddings_by_input_gradient":
        return jax.jit(lambda gs, offs: f(st["size"], gs, offs, st["dims"], FUSED_SCALE))
    return jax.jit(lambda *xs: f(*xs))


def _copy_floor_fn() -> Callable:
    # One fresh copy of each array (inputs are not donated, so XLA must copy).
    return jax.jit(lambda *xs: [jnp.copy(x) for x in xs])


def _leaves(out) -> list:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]


def _describe(arrays) -> str:
    arrays = list(arrays)
    mb = sum(a.size * a.dtype.itemsize for a in arrays) / 2**20
    if len(arrays) == 1:
        return f"{arrays[0].dtype}{list(arrays[0].shape)}, {mb:.0f} MiB"
    return f"{len(arrays)} arrays, {mb:.0f} MiB"


def _compare(got, want, what: str, exact: bool) -> str:
    """Bit-for-bit comparison; with ``exact`` False a float difference within rtol 1e-5 is
    returned as a note instead of aborting."""
    got, want = _leaves(got), _leaves(want)
    if len(got) != len(want):
        _abort(f"{what}: {len(got)} vs {len(want)} outputs")
    notes = []
    for i, (x, y) in enumerate(zip(got, want)):
        if x.shape != y.shape or x.dtype != y.dtype:
            _abort(f"{what}: output {i}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        xb, yb = x, y
        if x.dtype.kind == "f":
            xb, yb = x.view(f"u{x.dtype.itemsize}"), y.view(f"u{y.dtype.itemsize}")
        if np.array_equal(xb, yb):
            continue
        bad = int(np.count_nonzero(xb != yb))
        if not exact and x.dtype.kind == "f" and np.allclose(x, y, rtol=1e-5, atol=1e-6):
            notes.append(f"output {i}: {bad} floats differ in rounding "
                         f"(max abs diff {float(np.max(np.abs(x - y))):.2e})")
            continue
        first = np.argwhere(xb != yb)[0].tolist()
        _abort(f"{what}: output {i}: {bad} elements differ, first at {first}: "
               f"{x[tuple(first)]} vs {y[tuple(first)]}")
    return "; ".join(notes)


# jnp design alternatives (--jnp-variants), see jnp_lookup's docstring.
_LOOKUP_KW = [dict(method="hash"), dict(method="sortrank"), dict(method="twopass"),
              dict(method="argsort"), dict(chunks=2), dict(bucket_extra=1),
              dict(bucket_extra=-2), dict(take_mode="fill"), dict(take_mode="promise")]
JNP_VARIANTS = {
    "map_id_to_embedding": _LOOKUP_KW,
    "gather_embeddings_by_input": _LOOKUP_KW,
    "map_id_to_embedding_gradient_back_prop": [
        dict(scatter="split"), dict(scatter="per_table"), dict(method="hash")],
    "gather_embeddings_by_ids_gradient_back_prop": [
        dict(how="scatter32"), dict(how="promise"), dict(how="segment_sum"), dict(how="sorted")],
    "fused_gather_embeddings_by_input": [
        dict(how="window", mode="fill"), dict(how="window", mode="promise"), dict(how="take"),
        dict(how="concat")],
    "fused_gather_embeddings_by_input_gradient": [
        dict(how="window", mode="fill"), dict(how="window", mode="promise"),
        dict(prescale=True), dict(how="take"), dict(how="concat")],
}


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def _to_device(a):
    if isinstance(a, (list, tuple)):
        return [jax.device_put(x) for x in a]
    return jax.device_put(a)


def run_workload(w: Workload, repeats: int | None, jnp_variants: bool) -> list[Row]:
    # Inputs already on the device, so host-to-device copies are not timed.
    dev = [_to_device(a) for a in w.args]
    jax.block_until_ready(dev)
    rep = repeats or w.repeats

    jnp_fn = _jnp_fn(w)
    t0 = time.perf_counter()
    ref = jax.block_until_ready(jnp_fn(*dev))
    first_call = {"jnp": time.perf_counter() - t0}
    print(f"[{w.name}] {w.op}: {w.num_rows} lookups; outputs {_describe(_leaves(ref))}",
          flush=True)
    if w.expected is not None:  # forward: numpy (vectorized lookup + indexing) vs jnp
        _compare(ref, list(w.expected), f"{w.name}: MISMATCH jnp vs numpy", exact=True)
    notes = []
    distops_fn = None
    if distops_op(w.op) is not None:
        distops_fn = _distops_fn(w)
        try:
            t0 = time.perf_counter()
            got = jax.block_until_ready(distops_fn(*dev))
            first_call["jax_distops"] = time.perf_counter() - t0
        except Exception as e:
            _abort(f"{w.name}: jax_distops.{w.op} failed: {type(e).__name__}: {e}")
        note = _compare(got, ref, f"{w.name}: MISMATCH jax_distops vs jnp",
                        exact=w.expected is not None)
        if note:
            notes.append(note)
            print(f"[{w.name}] NOTE jax_distops vs jnp: {note}", flush=True)
        del got
    print(f"[{w.name}] outputs agree ({'bit for bit' if not notes else 'within rounding'}: jnp"
          f"{', numpy' if w.expected is not None else ''}"
          f"{', jax_distops' if distops_fn else ''}); first call incl. compile: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in first_call.items()), flush=True)

    # copy floor: the grads inputs (gradients) and the outputs
    floor_args = []
    for i in w.floor_inputs:
        floor_args += dev[i] if isinstance(dev[i], list) else [dev[i]]
    floor_args += jax.tree_util.tree_leaves(ref)
    del ref
    gc.collect()

    plan = []
    if distops_fn is not None:
        plan.append(("jax_distops", distops_fn, dev, rep, 3, ""))
    plan.append(("jnp", jnp_fn, dev, rep, 3, ""))
    plan.append(("copy floor", _copy_floor_fn(), floor_args, rep, 3,
                 f"copy of {_describe(np.asarray(x) for x in floor_args)}"))
    if jnp_variants:
        plan += jnp_variant_plan(w, dev, rep)
    medians = time_interleaved([(fn, args, r, wu) for _, fn, args, r, wu, _ in plan])
    rows = []
    if distops_fn is None:
        why = "jax_distops not importable" if jax_distops is None else f"no jax_distops.{w.op}"
        rows.append(Row(w.name, "jax_distops", None, w.num_rows, why))
    for (impl, *_, note), med in zip(plan, medians):
        rows.append(Row(w.name, impl, med, w.num_rows, note))
    for r in rows:
        if r.median_s is not None:
            print(f"  {r.impl:<44} {r.median_s * 1e3:10.3f} ms", flush=True)
    if jnp_variants:
        jax.clear_caches()  # many big executables otherwise exhaust the LLVM JIT mappings
    return rows


def jnp_variant_plan(w: Workload, dev: list, repeats: int) -> list:
    """Plan entries for the design alternatives kept as options of the jnp functions, each
    checked against the default jnp version first; timed interleaved with the other rows (the
    differences between variants are often smaller than this VM's drift between runs)."""
    ref = jax.block_until_ready(_jnp_fn(w)(*dev))
    plan = []
    for kw in JNP_VARIANTS[w.op]:
        fn = _jnp_fn(w, **kw)
        _compare(jax.block_until_ready(fn(*dev)), ref, f"{w.name}: jnp variant {kw}",
                 exact=w.expected is not None)
        name = "jnp " + " ".join(f"{k}={v}" for k, v in kw.items())
        plan.append((name, fn, dev, repeats, 3, ""))
    return plan


def format_targets(rows: list[Row]) -> str:
    """The issue's targets: map / gather forward >= 5x faster than jnp; fused forward and
    gradient at least as fast as jnp (jnp / jax_distops >= 1) and within 2x of the copy floor.
    Other ratios are printed for reference."""
    med = {(r.workload, r.impl): r.median_s for r in rows}
    lines = ["Targets:"]
    for wl in dict.fromkeys(r.workload for r in rows):
        d, j, c = (med.get((wl, k)) for k in ("jax_distops", "jnp", "copy floor"))
        fam, fwd = wl.split()[0], wl.endswith("fwd")
        speed_t = 5.0 if fam in ("map", "gather") and fwd else (1.0 if fam == "fused" else None)
        copy_t = 2.0 if fam == "fused" else None

        def line(label, val, target, le):
            if val is None:
                return f"  {wl:<24} {label:<20}: -      jax_distops not run"
            if target is None:
                return f"  {wl:<24} {label:<20}: {val:6.2f} (no target)"
            ok = (val <= target) if le else (val >= target)
            return (f"  {wl:<24} {label:<20}: {val:6.2f} (target {'<=' if le else '>='} "
                    f"{target:g})  {'met' if ok else 'MISSED'}")

        lines.append(line("jnp / jax_distops", j / d if d else None, speed_t, False))
        if copy_t is not None:
            lines.append(line("jax_distops / copy", d / c if d and c else None, copy_t, True))
    return "\n".join(lines)


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--only", action="append", choices=sorted(FAMILIES))
    ns, rest = pre.parse_known_args(argv)
    only = ns.only or list(FAMILIES)
    args = start("lookup ops benchmark",
                 "Benchmark of jax_distops' lookup ops and their gradients against pure-jnp "
                 "baselines. --only map|gather|fused runs one family (repeatable).",
                 "20, 10 for the 64-wide rows", rest)
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    missing = [op for fam in only for op in FAMILIES[fam] if distops_op(op) is None]
    if jax_distops is not None and missing:
        print(f"# NOTE: jax_distops lacks {', '.join(missing)}; those rows are skipped and "
              "ratios of their family are vs the jnp row.")
    t0 = time.perf_counter()
    self_check(num_random=4, variants=False, verbose=False)
    print(f"# jnp baselines == numpy references on small inputs "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    rows = []
    for w in build_workloads(args.quick, only):
        rows += run_workload(w, args.repeats, args.jnp_variants)
        gc.collect()
    print()
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for fam in only:
        fam_rows = [r for r in rows if r.workload.split()[0] == fam]
        base = "jnp" if any(distops_op(op) is None for op in FAMILIES[fam]) else "jax_distops"
        print()
        print(format_table(fam_rows, base_impl=base, unit="lookup"))
    print()
    print(format_targets(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
