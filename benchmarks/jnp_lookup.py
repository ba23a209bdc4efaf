"""Pure-``jax.numpy`` baselines for ``jax_distops``' lookup ops, and numpy references.

Semantics (spec sections 8, 9, 10; DESIGN.md section 2), static-shape versions. Missing ids are
*not* detected here (the ops raise; a baseline may return any row for them):

* ``map_id_to_embedding(ids_list, embeddings_list, input)``: the map ``id -> (s, j)`` scans the
  S tables in order, first occurrence wins; ``out[idx] = embeddings_list[s][j]``, shape
  ``[*input.shape, D]``. Gradient ``(ids_list, input, grads) -> [S x [K_s, D]]``: the rows of
  ``grads`` scatter-added (ascending input order) into the mapped rows.
* ``gather_embeddings_by_input(ids, embeddings, input) -> (output, index_mapping)``:
  ``index_mapping[idx]`` = first ``j`` with ``ids[j] == input[idx]`` (int64 under x64, else
  int32), ``output = embeddings[index_mapping]``. Gradient ``(ids, grads, index_mapping) ->
  [M, D]``: ``out[index_mapping[k]] += grads[k]``.
* ``fused_gather_embeddings_by_input(flat, offsets, dims)``: ``out_m[j] = flat[off_m[j] :
  off_m[j] + dims[m]]``. Gradient ``(size, grads, offsets, dims, scale) -> [size]``: the rows of
  every ``grads_m`` added (table order, then row order) at their offsets, then times ``scale``.

Public functions (jit-compiled, static options select the alternatives measured below; defaults
are the fastest): :func:`first_index_jnp` (the id -> first position lookup the two hash-map
baselines share), :func:`map_id_to_embedding_jnp`, :func:`map_id_to_embedding_gradient_jnp`,
:func:`gather_embeddings_jnp`, :func:`gather_embeddings_gradient_jnp`,
:func:`fused_gather_jnp`, :func:`fused_gather_gradient_jnp`; numpy references with the same
names ending in ``_np`` (dict / loop based, for small inputs) and :func:`first_index_np`
(vectorized, for building benchmark inputs); :func:`self_check` (every jnp variant against the
references and the spec's test vectors; ``python benchmarks/jnp_lookup.py`` runs it). All need
``jax_enable_x64`` for int64 ids (the lookup packs uint64 sort keys).

DESIGN (project VM: 2 cores, jax 0.10.2 CPU, ids int64 uniform over the full range, float32
rows; median ms; this VM is shared and whole runs drift by 10-30%, so only the interleaved
comparisons within one table are tight)

1. The id -> first position lookup (:func:`first_index_jnp`, shared by map and gather). XLA:CPU
   sorts one integer operand ~5x faster than several (1e6 int64: ``lax.sort(x)`` 41 ms;
   ``lax.sort((x, iota), num_keys=1)`` 220; ``jnp.argsort(stable=True)`` 228), and
   ``jnp.searchsorted`` of 1e6 queries in 1e6 sorted keys costs 50 ms with method "scan" (the
   default; "scan_unrolled" 164, "sort" 385; 21 ms in 5e5 keys). Default, ``method="bucket"``:
   one single-operand sort of packed uint64 keys ``mix64(id) << pb | position`` (the id's hash
   truncated to 64 - pb bits, then its position: equal ids end up adjacent, first occurrence
   first); a directory over the top ``pb`` hash bits (bucket counts by a scatter-add, then
   ``lax.associative_scan``: 2.4 ms for 2**21 buckets vs 7.6 ms for ``jnp.cumsum``); each query
   reads its bucket's range and binary-searches only that (bit_length(largest bucket) ~ 4 steps,
   a ``fori_loop`` with a traced trip count, instead of 20). Exactness: if two different ids
   share a truncated hash (adjacent equal hashes with different ids after the sort; probability
   ~K**2 / 2**(65 - pb), ~3% at K = 1e6), a ``lax.cond`` redoes the whole lookup with the exact
   two-sort path (method "twopass"). The lookup alone, 1e6 queries (two runs, load 0.4-1.1):

   ==================================================================  =========  =========
   method                                                              K = 1e6    K = 5e5
   ==================================================================  =========  =========
   **"bucket"**: hashed sort + bucket directory + short binary search  53 / 68    32 / 39
   "bucket", chunks=2 (two position halves sorted/searched apart)      46-52      35
   "bucket", chunks=4                                                  68-70      49-52
   "bucket", bucket bits = position bits -1 / +1                       52 / 54    31 / 32
   "hash": hashed sort + ``jnp.searchsorted``                          66 / 74    41 / 68
   "sortrank": sort ids, first position per rank by a scatter-min,     99         50
   two searchsorted
   "twopass": exact two-sort LSD (id order) + searchsorted             116        67
   "argsort": ``jnp.argsort(stable=True)`` + searchsorted              248        132
   open addressing built by scatter-min rounds (4x slots, rehash per   93-113     48-62
   round, 6-10 rounds; dropped)
   ==================================================================  =========  =========

   Not pursued: partitioning the keys by their top hash bits and sorting the groups
   independently (so XLA runs the sorts on both cores, cf. jnp_routing): the sort is ~40 of the
   ~53 ms, the partition itself costs ~10-15 ms, and the chunks=2/4 rows above show little gain
   from concurrency here. A "merge" of the sorted keys and sorted queries needs a 2e6-key sort
   (~85 ms), more than sort + directory.

2. Moving rows. A row gather of 1e6 rows costs 24 ms at D=16 and 110 ms at D=64 (``jnp.copy`` of
   the same 256 MB: 63 ms), identical for modes "clip", "fill", "promise_in_bounds" and for
   ``unique_indices``; gathering 64-float rows as 32 uint64 is slower (138 ms). map_id_to_embedding
   has S tables and XLA has no multi-operand gather, so the tables are concatenated first (1e6 x 16:
   27 ms, x 64: 99 ms; XLA does not fuse the concatenate into the gather). Gradients: a
   scatter-add of 1e6 rows costs 24 ms (D=16) / 91-94 ms (D=64), the same as ``segment_sum``;
   sorting the indices first (sorted segment_sum) costs more than it saves. For the map gradient,
   one scatter-add into the concatenated tables + S slices (copies) vs S masked scatter-adds
   (``mode="drop"``) straight into the S outputs: D=16 31 vs 36 ms, D=64 131 vs 95 ms, hence
   ``scatter="auto"`` (per_table from 32-float rows on).

3. The fused gather: per table one windowed ``lax.gather`` (``slice_sizes=(d,)`` at start
   ``offset``) beats index arithmetic + scalar take except around d = 64 (1e6 lookups, 30 tables
   of one dim, window / take / copy floor ms: d8 3.9 / 6.4 / 1.3, d16 5.6 / 13.9 / 3.1, d32
   20.7 / 28.8 / 5.9, d64 39.8 / 34.3 / 12.4, d128 68.8 / 75.3 / 61.5); one take over all tables
   then a split is 4-10x slower. Gradient: one windowed ``lax.scatter_add`` per table, chained
   in table order (the op's summation order, so bit-exact), then times ``scale``; scaling the
   rows first is 2-3x slower (the multiply is not fused into the scatter), scalar scatter-adds
   4-8x slower, two independent chains (tables 0-14, 15-29) added at the end 2-3x slower.

Alternatives at benchmark level (``python benchmarks/lookup.py --jnp-variants``, timed
interleaved with the default; run of 2026-11-28 14:23, load 0.9-1.8; default first, ms):

============================  =========================================================
workload                      default; then the alternatives
============================  =========================================================
map 1e6/1e6 d16 fwd           110; hash 122, sortrank 148, twopass 163, argsort 302,
                              chunks=2 105, bucket bits +1 111 / -2 109, take fill 109 /
                              promise 110
map 1e6/1e6 d64 fwd           246; hash 268, sortrank 288, twopass 318, argsort 466,
                              chunks=2 232, +1 255 / -2 252, fill 254 / promise 255
map 1e6/5e5 d16 fwd           90; hash 114, sortrank 112, twopass 112, argsort 173,
                              chunks=2 105, +1 84 / -2 92, fill 87 / promise 90
gather 1e6/1e6 d16 fwd        100; hash 105, sortrank 148, twopass 157, argsort 301,
                              chunks=2 93, +1 101 / -2 103, fill 87 / promise 91
gather 1e6/5e5 d16 fwd        54; hash 66, sortrank 79, twopass 88, argsort 146,
                              chunks=2 53, +1 54 / -2 55, fill 54 / promise 54
map 1e6/1e6 d16 grad          88 (auto = split); split 91, per_table 89, hash lookup 97
map 1e6/1e6 d64 grad          110 (auto = per_table); split 159, per_table 116, hash 124
gather 1e6/1e6 d16 grad       22 (scatter); int32 indices 23, promise_in_bounds 14.5,
                              segment_sum 15, sort + sorted segment_sum 96
gather 1e6/1e6 d64 grad       97; int32 98, promise 98, segment_sum 98, sorted 221
fused 30x d16 fwd / grad      5.3 / 7.5; mode fill 6.0 / 7.3, promise 5.2 / 7.1, take
                              13.3 / 60, concat 58 / 81, grad prescale 25
fused 30x d64 fwd / grad      40 / 51; fill 41 / 52, promise 41 / 52, take 32 / 182,
                              concat 200 / 264, grad prescale 92
fused 30x mixed fwd / grad    16 / 25; fill 16 / 25, promise 16 / 26, take 18 / 91,
                              concat 105 / 129, grad prescale 48
============================  =========================================================

(The D=64 rows are dominated by the row gather / scatter and page faults on the fresh 256 MB
output, and vary most; differences under ~10% are noise.)
"""

from __future__ import annotations

import functools
import os
import sys
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jnp_fused_reorder import _as_u64, _group_sort, _mix64  # noqa: E402

__all__ = [
    "GatherResult",
    "first_index_jnp",
    "map_id_to_embedding_jnp",
    "map_id_to_embedding_gradient_jnp",
    "gather_embeddings_jnp",
    "gather_embeddings_gradient_jnp",
    "fused_gather_jnp",
    "fused_gather_gradient_jnp",
    "first_index_np",
    "map_id_to_embedding_np",
    "map_id_to_embedding_gradient_np",
    "gather_embeddings_np",
    "gather_embeddings_gradient_np",
    "fused_gather_np",
    "fused_gather_gradient_np",
    "self_check",
]


class GatherResult(NamedTuple):
    """Same fields and order as ``jax_distops.GatherResult``."""

    output: object
    index_mapping: object


# gather / scatter index modes of the options: lax, .at[].get, .at[].add spellings
_MODES = {"clip": lax.GatherScatterMode.CLIP, "fill": lax.GatherScatterMode.FILL_OR_DROP,
          "promise": lax.GatherScatterMode.PROMISE_IN_BOUNDS}
_TAKE_MODES = {"clip": "clip", "fill": "fill", "promise": "promise_in_bounds"}  # .at[].get
_ADD_MODES = {"clip": "clip", "fill": "drop", "promise": "promise_in_bounds"}  # .at[].add


def _bits(v: int) -> int:
    return max(1, int(v).bit_length())


def _index_dtype():
    """JAX's default int: int64 under x64, else int32 (the op's index_mapping dtype)."""
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


# ----------------------------------------------------------------------------------------------
# id -> first position
# ----------------------------------------------------------------------------------------------

LOOKUP_METHODS = ("bucket", "hash", "sortrank", "twopass", "argsort")


def _first_index_exact(keys, q):
    """Exact: ``_group_sort(.., "twopass")`` orders the ids by their unsigned 64-bit value, ties
    in position order (two packed single-operand sorts), then one binary search per query."""
    K = keys.shape[0]
    xs, ps = _group_sort(keys, "twopass")
    r = jnp.searchsorted(_as_u64(xs), _as_u64(q), side="left")
    return ps[jnp.minimum(r, K - 1)]


def _hashed_chunk(keys, q, qh, search: str, bucket_extra: int, weak: bool):
    """One chunk of the hashed lookup. Returns ``(collision, pos)``: ``pos`` (int32, local) is the
    first position whose truncated hash equals the query's (the first occurrence of the query's
    id unless ``collision``: two different ids of the chunk share a truncated hash)."""
    k = keys.shape[0]
    pb = _bits(k - 1)
    pmask = jnp.uint64((1 << pb) - 1)
    # key = low (64 - pb) bits of the 64-bit mix, then the position: sorting it groups equal ids
    # with their positions ascending. One single-operand sort (see the module docstring).
    h = _mix64(_as_u64(keys))
    if weak:  # tests only: 2 hash bits, so different ids collide and the fallback runs
        h, qh = h & jnp.uint64(3), qh & jnp.uint64(3)
    sk = lax.sort((h << jnp.uint64(pb)) | lax.iota(jnp.uint64, k))
    qk = qh << jnp.uint64(pb)  # the query's hash with position bits 0: lower bound = first pos
    if search == "searchsorted":
        r = jnp.searchsorted(sk, qk, side="left")
    else:  # "bucket": directory of the top bb hash bits, then a short binary search
        bb = max(1, min(pb + bucket_extra, 64 - pb, 28))
        sh = jnp.uint64(64 - bb)
        counts = jnp.zeros((1 << bb,), jnp.int32).at[(sk >> sh).astype(jnp.int32)].add(
            1, indices_are_sorted=True)
        start = jnp.concatenate([jnp.zeros((1,), jnp.int32), lax.associative_scan(jnp.add, counts)])
        nsteps = 32 - lax.clz(jnp.max(counts))  # bit length of the largest bucket
        bq = (qk >> sh).astype(jnp.int32)

        def step(_, c):
            lo, hi = c
            mid = (lo + hi) >> 1
            right = sk[jnp.minimum(mid, k - 1)] < qk
            return jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)

        r, _ = lax.fori_loop(0, nsteps, step, (start[bq], start[bq + 1]))
    ps = (sk & pmask).astype(jnp.int32)
    hk = sk >> jnp.uint64(pb)
    xs = keys[ps]
    collision = jnp.any((hk[1:] == hk[:-1]) & (xs[1:] != xs[:-1]))
    return collision, ps[jnp.minimum(r, k - 1)]


@functools.partial(jax.jit, static_argnames=("method", "chunks", "bucket_extra", "weak"))
def _first_index_jit(keys, q, method, chunks, bucket_extra, weak=False):
    K = keys.shape[0]
    if K == 0:
        return jnp.zeros(q.shape, jnp.int32)
    if method == "argsort":  # the textbook formulation: stable argsort + searchsorted
        perm = jnp.argsort(keys, stable=True).astype(jnp.int32)
        r = jnp.searchsorted(keys[perm], q, side="left")
        return perm[jnp.minimum(r, K - 1)]
    if method == "sortrank":  # sort the ids alone; first position per rank by a scatter-min
        sk = lax.sort(keys)
        rk = jnp.searchsorted(sk, keys, side="left")
        first = jnp.full((K,), K - 1, jnp.int32).at[rk].min(lax.iota(jnp.int32, K))
        return first[jnp.minimum(jnp.searchsorted(sk, q, side="left"), K - 1)]
    if method == "twopass":
        return _first_index_exact(keys, q)
    if method not in ("bucket", "hash"):
        raise ValueError(f"unknown lookup method {method!r}")
    search = "bucket" if method == "bucket" else "searchsorted"
    qh = _mix64(_as_u64(q))
    bounds = [K * c // chunks for c in range(chunks + 1)]
    res, collision = None, jnp.zeros((), bool)
    # chunks of consecutive positions, each sorted and searched on its own (independent ops,
    # so XLA may run them concurrently); the lowest chunk holding the id wins
    for c in reversed(range(chunks)):
        a, b = bounds[c], bounds[c + 1]
        if a == b:
            continue
        coll, pos = _hashed_chunk(keys[a:b], q, qh, search, bucket_extra, weak)
        collision = collision | coll
        pos = pos + a
        if res is None:
            res = pos
        else:  # exact id check: a truncated-hash match in a lower chunk may be another id
            res = jnp.where(keys[pos] == q, pos, res)
    # A truncated-hash collision (~K**2 / 2**(65 - pb) for random ids: ~3% at K = 1e6) sends the
    # whole lookup to the exact two-sort path, so the result is always exact.
    return lax.cond(collision, lambda: _first_index_exact(keys, q), lambda: res)


def first_index_jnp(keys, queries, *, method: str = "bucket", chunks: int = 1,
                    bucket_extra: int = 0):
    """For every query id, the first position ``j`` with ``keys[j] == query`` (int32, shape of
    ``queries``); any in-range position for a missing id. ``keys`` 1-D; same dtype as queries.

    ``method``: "bucket" (default; hashed single-operand sort + bucket directory + short binary
    search, exact fallback), "hash" (hashed sort + ``jnp.searchsorted``), "sortrank" (sort of the
    ids + scatter-min of positions per rank + 2 searchsorted), "twopass" (exact two-sort LSD +
    searchsorted), "argsort" (``jnp.argsort(stable=True)`` + searchsorted). ``chunks``: the
    hashed methods sort and search that many position chunks independently. ``bucket_extra``:
    bucket bits = position bits + this."""
    keys, queries = jnp.asarray(keys), jnp.asarray(queries)
    shape = queries.shape
    out = _first_index_jit(keys.reshape(-1), queries.reshape(-1).astype(keys.dtype), method,
                           int(chunks), int(bucket_extra))
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------------
# map_id_to_embedding
# ----------------------------------------------------------------------------------------------


def _cat(xs):
    return xs[0] if len(xs) == 1 else jnp.concatenate(xs)


@functools.partial(jax.jit, static_argnames=("method", "chunks", "bucket_extra", "take_mode"))
def _map_fwd_jit(ids_list, embeddings_list, inp, method, chunks, bucket_extra, take_mode):
    keys = _cat([a.reshape(-1) for a in ids_list])
    emb = _cat(list(embeddings_list))  # no multi-operand gather in XLA: one copy of the tables
    pos = _first_index_jit(keys, inp.reshape(-1).astype(keys.dtype), method, chunks,
                           bucket_extra)
    out = emb.at[pos].get(mode=_TAKE_MODES[take_mode])
    return out.reshape(inp.shape + (emb.shape[1],))


def map_id_to_embedding_jnp(ids_list, embeddings_list, input, *, method: str = "bucket",
                            chunks: int = 1, bucket_extra: int = 0, take_mode: str = "clip"):
    """Pure-jnp ``map_id_to_embedding``: concatenated ids -> first position (see
    :func:`first_index_jnp`), then one row gather from the concatenated tables."""
    return _map_fwd_jit([jnp.asarray(a) for a in ids_list],
                        [jnp.asarray(e) for e in embeddings_list], jnp.asarray(input),
                        method, int(chunks), int(bucket_extra), take_mode)


@functools.partial(jax.jit, static_argnames=("method", "chunks", "bucket_extra", "scatter"))
def _map_grad_jit(ids_list, inp, grads, method, chunks, bucket_extra, scatter):
    lens = [int(a.size) for a in ids_list]
    keys = _cat([a.reshape(-1) for a in ids_list])
    D = grads.shape[-1]
    g = grads.reshape(-1, D)
    pos = _first_index_jit(keys, inp.reshape(-1).astype(keys.dtype), method, chunks,
                           bucket_extra)
    starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if scatter == "split":  # one scatter-add into [K, D], then S slices (copies)
        acc = jnp.zeros((int(starts[-1]), D), g.dtype).at[pos].add(g)
        return [acc[int(a):int(b)] for a, b in zip(starts[:-1], starts[1:])]
    if scatter == "per_table":  # S scatter-adds over all rows, out-of-table rows dropped
        outs = []
        for s, n in enumerate(lens):
            local = pos - int(starts[s])
            local = jnp.where((local >= 0) & (local < n), local, n)  # n: dropped
            outs.append(jnp.zeros((n, D), g.dtype).at[local].add(g, mode="drop"))
        return outs
    raise ValueError(f"unknown scatter {scatter!r}")


def map_id_to_embedding_gradient_jnp(ids_list, input, grads, *, method: str = "bucket",
                                     chunks: int = 1, bucket_extra: int = 0,
                                     scatter: str = "auto"):
    """Pure-jnp ``map_id_to_embedding_gradient_back_prop``: the same lookup as the forward, then
    ``scatter``: "split" (one scatter-add into the concatenated tables, then slices),
    "per_table" (one masked scatter-add per table), "auto" (per_table for rows of >= 32
    elements, else split; see the module docstring)."""
    grads = jnp.asarray(grads)
    if scatter == "auto":
        scatter = "per_table" if grads.shape[-1] >= 32 else "split"
    return _map_grad_jit([jnp.asarray(a) for a in ids_list], jnp.asarray(input), grads,
                         method, int(chunks), int(bucket_extra), scatter)


# ----------------------------------------------------------------------------------------------
# gather_embeddings_by_input
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("method", "chunks", "bucket_extra", "take_mode"))
def _gather_fwd_jit(ids, embeddings, inp, method, chunks, bucket_extra, take_mode):
    pos = _first_index_jit(ids.reshape(-1), inp.reshape(-1).astype(ids.dtype), method, chunks,
                           bucket_extra)
    out = embeddings.at[pos].get(mode=_TAKE_MODES[take_mode])
    return GatherResult(out.reshape(inp.shape + (embeddings.shape[1],)),
                        pos.astype(_index_dtype()).reshape(inp.shape))


def gather_embeddings_jnp(ids, embeddings, input, *, method: str = "bucket", chunks: int = 1,
                          bucket_extra: int = 0, take_mode: str = "clip") -> GatherResult:
    """Pure-jnp ``gather_embeddings_by_input``: first position per id (:func:`first_index_jnp`)
    and a row gather."""
    return _gather_fwd_jit(jnp.asarray(ids), jnp.asarray(embeddings), jnp.asarray(input),
                           method, int(chunks), int(bucket_extra), take_mode)


@functools.partial(jax.jit, static_argnames=("M", "how"))
def _gather_grad_jit(grads, index_mapping, M, how):
    D = grads.shape[-1]
    g = grads.reshape(-1, D)
    idx = index_mapping.reshape(-1)
    if how == "scatter":
        return jnp.zeros((M, D), g.dtype).at[idx].add(g)
    if how == "scatter32":
        return jnp.zeros((M, D), g.dtype).at[idx.astype(jnp.int32)].add(g)
    if how == "promise":
        return jnp.zeros((M, D), g.dtype).at[idx].add(g, mode="promise_in_bounds")
    if how == "segment_sum":
        return jax.ops.segment_sum(g, idx, M)
    if how == "sorted":  # sort (index, position), permute the rows, sorted segment_sum
        n = idx.shape[0]
        pb = _bits(max(n - 1, 1))
        k = lax.sort((idx.astype(jnp.uint64) << jnp.uint64(pb)) | lax.iota(jnp.uint64, n))
        perm = (k & jnp.uint64((1 << pb) - 1)).astype(jnp.int32)
        return jax.ops.segment_sum(g[perm], (k >> jnp.uint64(pb)).astype(jnp.int32), M,
                                   indices_are_sorted=True)
    raise ValueError(f"unknown gradient formulation {how!r}")


def gather_embeddings_gradient_jnp(ids, grads, index_mapping, *, how: str = "scatter"):
    """Pure-jnp ``gather_embeddings_by_ids_gradient_back_prop`` (``ids`` gives only M):
    ``how``: "scatter" (``.at[index_mapping].add``), "scatter32" (int32 indices), "promise"
    (``mode="promise_in_bounds"``), "segment_sum", "sorted" (sort + sorted segment_sum)."""
    return _gather_grad_jit(jnp.asarray(grads), jnp.asarray(index_mapping), int(np.shape(ids)[0]),
                            how)


# ----------------------------------------------------------------------------------------------
# fused_gather_embeddings_by_input
# ----------------------------------------------------------------------------------------------

_WINDOW = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(),
                                     start_index_map=(0,))
_WINDOW_SCATTER = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(),
                                              scatter_dims_to_operand_dims=(0,))


@functools.partial(jax.jit, static_argnames=("dims", "how", "mode"))
def _fused_fwd_jit(flat, offsets, dims, how, mode):
    flat = flat.reshape(-1)
    if how == "window":  # one windowed gather per table: slice [off, off + d) per row
        return [lax.gather(flat, off.reshape(-1, 1), _WINDOW, (d,), mode=_MODES[mode])
                for off, d in zip(offsets, dims)]
    if how == "take":  # index arithmetic + scalar take per table
        return [flat.at[off[:, None] + jnp.arange(d, dtype=off.dtype)].get(
                    mode=_TAKE_MODES[mode]) for off, d in zip(offsets, dims)]
    if how == "concat":  # one scalar take over all tables, then split
        idx = _cat([(off[:, None] + jnp.arange(d, dtype=off.dtype)).reshape(-1)
                    for off, d in zip(offsets, dims)])
        vals = flat.at[idx].get(mode=_TAKE_MODES[mode])
        ends = np.cumsum([int(off.shape[0]) * d for off, d in zip(offsets, dims)])
        return [v.reshape(-1, d) for v, d in zip(jnp.split(vals, ends[:-1]), dims)]
    raise ValueError(f"unknown fused gather formulation {how!r}")


def fused_gather_jnp(fused_embeddings, offsets, dims, *, how: str = "window",
                     mode: str = "clip"):
    """Pure-jnp ``fused_gather_embeddings_by_input``. ``how``: "window" (``lax.gather`` with
    ``slice_sizes=(d,)`` per table), "take" (``flat[off[:, None] + arange(d)]``), "concat"
    (one take for all tables, split). ``mode``: "clip", "fill", "promise"."""
    return _fused_fwd_jit(jnp.asarray(fused_embeddings), [jnp.asarray(o) for o in offsets],
                          tuple(int(d) for d in dims), how, mode)


@functools.partial(jax.jit, static_argnames=("size", "dims", "how", "mode", "prescale"))
def _fused_grad_jit(grads, offsets, scale, size, dims, how, mode, prescale):
    dtype = grads[0].dtype if grads else jnp.float32
    scale = jnp.asarray(scale, dtype)
    if prescale:  # scale the rows first (equal to scaling after only for powers of 2)
        grads = [g * scale for g in grads]
    out = jnp.zeros((size,), dtype)
    if how == "window":  # one windowed scatter-add per table, chained (table order)
        for g, off in zip(grads, offsets):
            out = lax.scatter_add(out, off.reshape(-1, 1), g, _WINDOW_SCATTER,
                                  mode=_MODES[mode])
    elif how == "take":  # index arithmetic + scalar scatter-add per table
        for g, off, d in zip(grads, offsets, dims):
            idx = (off[:, None] + jnp.arange(d, dtype=off.dtype)).reshape(-1)
            out = out.at[idx].add(g.reshape(-1), mode=_ADD_MODES[mode])
    elif how == "concat":  # one scalar scatter-add of all tables
        idx = _cat([(off[:, None] + jnp.arange(d, dtype=off.dtype)).reshape(-1)
                    for off, d in zip(offsets, dims)])
        out = out.at[idx].add(_cat([g.reshape(-1) for g in grads]), mode=_ADD_MODES[mode])
    else:
        raise ValueError(f"unknown fused gradient formulation {how!r}")
    return out if prescale else out * scale


def fused_gather_gradient_jnp(fused_embeddings_size: int, grads, offsets, dims,
                              scale=1.0, *, how: str = "window", mode: str = "clip",
                              prescale: bool = False):
    """Pure-jnp ``fused_gather_embeddings_by_input_gradient``: ``how`` as in
    :func:`fused_gather_jnp` (scatter-adds instead of gathers), then times ``scale`` (or, with
    ``prescale``, the rows times ``scale`` before the scatter)."""
    return _fused_grad_jit([jnp.asarray(g) for g in grads], [jnp.asarray(o) for o in offsets],
                           scale, int(fused_embeddings_size), tuple(int(d) for d in dims), how,
                           mode, bool(prescale))


# ----------------------------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------------------------


def first_index_np(keys, queries):
    """Vectorized numpy first position of every query id (queries must all be present)."""
    keys, queries = np.asarray(keys).reshape(-1), np.asarray(queries)
    order = np.argsort(keys, kind="stable")
    r = np.searchsorted(keys[order], queries.reshape(-1), side="left")
    r = np.minimum(r, max(keys.shape[0] - 1, 0))
    if queries.size and not np.array_equal(keys[order[r]], queries.reshape(-1)):
        raise KeyError("first_index_np: a query id is not in keys")
    return order[r].reshape(queries.shape)


def _dict_map(ids_list):
    d = {}
    for s, ids in enumerate(ids_list):
        for j, v in enumerate(np.asarray(ids).reshape(-1).tolist()):
            d.setdefault(v, (s, j))
    return d


def map_id_to_embedding_np(ids_list, embeddings_list, input):
    """Plain-Python reference (a dict, first mapping wins)."""
    d = _dict_map(ids_list)
    inp = np.asarray(input)
    embs = [np.asarray(e) for e in embeddings_list]
    D = embs[0].shape[1]
    rows = [embs[s][j] for s, j in (d[v] for v in inp.reshape(-1).tolist())]
    out = np.stack(rows) if rows else np.zeros((0, D), embs[0].dtype)
    return out.reshape(inp.shape + (D,))


def map_id_to_embedding_gradient_np(ids_list, input, grads):
    d = _dict_map(ids_list)
    g = np.asarray(grads)
    D = g.shape[-1]
    outs = [np.zeros((np.asarray(a).size, D), g.dtype) for a in ids_list]
    for k, v in enumerate(np.asarray(input).reshape(-1).tolist()):
        s, j = d[v]
        outs[s][j] += g.reshape(-1, D)[k]
    return outs


def gather_embeddings_np(ids, embeddings, input):
    d = _dict_map([ids])
    inp = np.asarray(input)
    idx = np.asarray([d[v][1] for v in inp.reshape(-1).tolist()], np.int64).reshape(inp.shape)
    idt = np.int64 if jax.config.jax_enable_x64 else np.int32
    return GatherResult(np.asarray(embeddings)[idx], idx.astype(idt))


def gather_embeddings_gradient_np(ids, grads, index_mapping):
    g = np.asarray(grads)
    D = g.shape[-1]
    out = np.zeros((np.shape(ids)[0], D), g.dtype)
    for k, j in enumerate(np.asarray(index_mapping).reshape(-1).tolist()):
        out[j] += g.reshape(-1, D)[k]
    return out


def fused_gather_np(fused_embeddings, offsets, dims):
    flat = np.asarray(fused_embeddings).reshape(-1)
    return [np.stack([flat[o: o + d] for o in np.asarray(off).tolist()]).reshape(-1, d)
            if np.size(off) else np.zeros((0, d), flat.dtype)
            for off, d in zip(offsets, dims)]


def fused_gather_gradient_np(size, grads, offsets, dims, scale=1.0):
    dtype = np.asarray(grads[0]).dtype if len(grads) else np.float32
    out = np.zeros((size,), dtype)
    for g, off, d in zip(grads, offsets, dims):
        g = np.asarray(g)
        for j, o in enumerate(np.asarray(off).tolist()):
            out[o: o + d] += g[j]
    return out * dtype.type(scale)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def _same(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise AssertionError(f"{what}: {got.dtype}{list(got.shape)} vs "
                             f"{want.dtype}{list(want.shape)}")
    if want.dtype.kind == "f":
        got, want = got.view(f"u{got.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}")
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        raise AssertionError(f"{what}: {bad.shape[0]} elements differ, first at "
                             f"{bad[0].tolist()}")


_LOOKUP_VARIANTS = [dict(method=m) for m in LOOKUP_METHODS] + [
    dict(method="bucket", chunks=3), dict(method="hash", chunks=2),
    dict(method="bucket", bucket_extra=1), dict(method="bucket", bucket_extra=-2),
]
_FUSED_VARIANTS = [dict(how=h, mode=m) for h in ("window", "take", "concat")
                   for m in ("clip", "fill", "promise")]
_GRAD_HOWS = ("scatter", "scatter32", "promise", "segment_sum", "sorted")


def _random_ids(rng, n, dtype, narrow):
    if narrow:  # many duplicates
        return rng.integers(0, 6, n).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


def self_check(num_random: int = 12, seed: int = 0, verbose: bool = True,
               variants: bool = True) -> None:
    """Assert the jnp baselines == the numpy references == the spec's test vectors, on the spec
    cases and ``num_random`` random cases (S tables of int32/int64/uint32/uint64 ids with
    in-table and cross-table duplicates, empty tables, rank-0/1/2 and empty inputs; overlapping
    fused windows). ``variants``: every option of every function (slow: ~2 min of compiling),
    else only the defaults."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError('jnp_lookup needs jax.config.update("jax_enable_x64", True)')
    lookup_variants = _LOOKUP_VARIANTS if variants else [dict(method="bucket")]
    fused_variants = _FUSED_VARIANTS if variants else [dict()]
    map_scatters = ("split", "per_table") if variants else ("auto",)
    grad_hows = _GRAD_HOWS if variants else ("scatter",)
    f32 = np.float32
    # ---- spec vectors (8.6, 9.6, 10.2)
    map_cases = [  # (ids_list, embeddings_list, input, expected)
        ([[1], [2]], [[[1, 1]], [[2, 2]]], [[1], [2]], [[[1, 1]], [[2, 2]]]),
    ]
    ids = np.arange(1000, dtype=np.int64)
    emb = np.tile(np.arange(16, dtype=f32), (1000, 1))
    map_cases.append(([ids[ids % 10 == s] for s in range(10)],
                      [emb[ids % 10 == s] for s in range(10)], ids, emb))
    for k, (il, el, inp, want) in enumerate(map_cases):
        il = [np.asarray(a, np.int64) for a in il]
        el = [np.asarray(e, f32) for e in el]
        inp, want = np.asarray(inp, np.int64), np.asarray(want, f32)
        _same(map_id_to_embedding_np(il, el, inp), want, f"map reference, spec case {k}")
        for kw in lookup_variants:
            _same(map_id_to_embedding_jnp(il, el, inp, **kw), want, f"map jnp {kw}, case {k}")
    il, inp = [np.asarray([1]), np.asarray([2])], np.asarray([1, 1, 2])
    g = -np.ones((3, 2), f32)
    for got in [map_id_to_embedding_gradient_np(il, inp, g)] + [
            map_id_to_embedding_gradient_jnp(il, inp, g, scatter=s)
            for s in map_scatters]:
        _same(got[0], np.asarray([[-2, -2]], f32), "map gradient, spec case")
        _same(got[1], np.asarray([[-1, -1]], f32), "map gradient, spec case")
    idt = np.int64
    gather_cases = [([1, 2, 3], [[2], [1], [2]], [[[2, 2]], [[1, 1]], [[2, 2]]], [[1], [0], [1]]),
                    ([1, 2, 3], [1, 3, 2, 3], [[1, 1], [3, 3], [2, 2], [3, 3]], [0, 2, 1, 2])]
    emb3 = np.asarray([[1, 1], [2, 2], [3, 3]], f32)
    for k, (ids, inp, w_out, w_map) in enumerate(gather_cases):
        ids, inp = np.asarray(ids, np.int64), np.asarray(inp, np.int64)
        want = GatherResult(np.asarray(w_out, f32), np.asarray(w_map, idt))
        for got in [gather_embeddings_np(ids, emb3, inp)] + [
                gather_embeddings_jnp(ids, emb3, inp, **kw) for kw in lookup_variants]:
            _same(got.output, want.output, f"gather spec case {k}")
            _same(got.index_mapping, want.index_mapping, f"gather spec case {k}")
    g4 = np.asarray([[1, 1], [2, 2], [4, 4], [8, 8]], f32)
    m4 = np.asarray([1, 0, 1, 2], np.int64)
    for how in grad_hows:
        _same(gather_embeddings_gradient_jnp(np.asarray([2, 3, 1]), g4, m4, how=how),
              np.asarray([[2, 2], [5, 5], [8, 8]], f32), f"gather gradient {how}, spec case")
    # fused: the 22-float layout of spec 10.2
    flat = np.asarray([1.1, 1.2, 1.3, 2.1, 2.2, 3.1, 3.2, 3.3, 4.1, 4.2, 4.3, 5.1, 5.2, 6.1, 6.2,
                       6.3, 7.1, 7.2, 8.1, 8.2, 9.1, 9.2], f32)
    offs = [np.asarray([13, 0, 5, 13, 8, 13], np.int32), np.asarray([16, 18, 11, 11, 16, 20, 3],
                                                                  np.int32)]
    want0 = np.asarray([[6.1, 6.2, 6.3], [1.1, 1.2, 1.3], [3.1, 3.2, 3.3], [6.1, 6.2, 6.3],
                        [4.1, 4.2, 4.3], [6.1, 6.2, 6.3]], f32)
    want1 = np.asarray([[7.1, 7.2], [8.1, 8.2], [5.1, 5.2], [5.1, 5.2], [7.1, 7.2], [9.1, 9.2],
                        [2.1, 2.2]], f32)
    for kw in fused_variants:
        got = fused_gather_jnp(flat, offs, (3, 2), **kw)
        _same(got[0], want0, f"fused {kw}, spec case")
        _same(got[1], want1, f"fused {kw}, spec case")
    g0 = np.asarray([[1.1, 1.2, 1.3], [2.1, 2.2, 2.3], [3.1, 3.2, 3.3], [4.1, 4.2, 4.3],
                     [5.1, 5.2, 5.3], [6.1, 6.2, 6.3]], f32)
    g1 = np.asarray([[1.1, 1.2], [2.4, 2.5], [3.6, 3.7], [4.2, 4.3], [5.7, 5.8], [6.4, 6.5],
                     [7.4, 7.5]], f32)
    want = np.asarray([2.1, 2.2, 2.3, 7.4, 7.5, 3.1, 3.2, 3.3, 5.1, 5.2, 5.3, 7.8, 8.0, 11.3,
                       11.6, 11.9, 6.8, 7.0, 2.4, 2.5, 6.4, 6.5], f32)
    np.testing.assert_allclose(fused_gather_gradient_np(22, [g0, g1], offs, (3, 2)), want,
                               rtol=1e-6)
    for kw in fused_variants:
        np.testing.assert_allclose(fused_gather_gradient_jnp(22, [g0, g1], offs, (3, 2), **kw),
                                   want, rtol=1e-6, err_msg=f"fused gradient {kw}, spec case")

    # ---- random inputs
    rng = np.random.default_rng(seed)
    for k in range(num_random):
        dtype = [np.int64, np.int32, np.uint64, np.uint32][k % 4]
        narrow = k % 3 == 0
        S = 1 + k % 4
        D = [1, 3, 8][k % 3]
        lens = [int(rng.integers(0 if s else 1, 40)) for s in range(S)]
        il = [_random_ids(rng, n, dtype, narrow) for n in lens]
        if not narrow and sum(lens) > 4:  # cross-table and in-table duplicates
            allk = np.concatenate(il)
            il[-1][: min(2, lens[-1])] = allk[:min(2, lens[-1])]
        el = [rng.standard_normal((n, D)).astype(f32) for n in lens]
        keys = np.concatenate(il)
        shape = [(), (7,), (3, 5), (0,)][k % 4]
        inp = keys[rng.integers(0, keys.shape[0], shape)].astype(dtype)
        want = map_id_to_embedding_np(il, el, inp)
        for kw in lookup_variants:
            _same(map_id_to_embedding_jnp(il, el, inp, **kw), want, f"map {kw} random {k}")
        g = rng.standard_normal(shape + (D,)).astype(f32)
        want_g = map_id_to_embedding_gradient_np(il, inp, g)
        for sc in map_scatters:
            got = map_id_to_embedding_gradient_jnp(il, inp, g, scatter=sc)
            for s in range(S):
                _same(got[s], want_g[s], f"map gradient {sc} random {k} table {s}")
        want = gather_embeddings_np(keys, np.concatenate(el), inp)
        for kw in lookup_variants:
            got = gather_embeddings_jnp(keys, np.concatenate(el), inp, **kw)
            _same(got.output, want.output, f"gather {kw} random {k}")
            _same(got.index_mapping, want.index_mapping, f"gather {kw} random {k}")
        want_g = gather_embeddings_gradient_np(keys, g, want.index_mapping)
        for how in grad_hows:
            _same(gather_embeddings_gradient_jnp(keys, g, want.index_mapping, how=how), want_g,
                  f"gather gradient {how} random {k}")
        # fused: overlapping windows, one table empty
        dims = tuple(int(rng.integers(1, 5)) for _ in range(S))
        E = 30
        flat = rng.standard_normal(E).astype(f32)
        offs = [rng.integers(0, E - d + 1, int(rng.integers(0 if m else 1, 9))).astype(
            [np.int32, np.int64][k % 2]) for m, d in enumerate(dims)]
        want = fused_gather_np(flat, offs, dims)
        for kw in fused_variants:
            got = fused_gather_jnp(flat, offs, dims, **kw)
            for m in range(S):
                _same(got[m], want[m], f"fused {kw} random {k} table {m}")
        grads = [rng.standard_normal((o.shape[0], d)).astype(f32) for o, d in zip(offs, dims)]
        want = fused_gather_gradient_np(E, grads, offs, dims, 0.5)
        for kw in fused_variants:
            for pre in (False, True) if variants else (False,):
                _same(fused_gather_gradient_jnp(E, grads, offs, dims, 0.5, prescale=pre, **kw),
                      want, f"fused gradient {kw} prescale={pre} random {k}")
    # the exact fallback: ids that differ only in their high bits (and duplicates), with the
    # hash cut to 2 bits so that the hashed methods see collisions and take the exact path
    keys = (rng.integers(0, 40, 64).astype(np.int64) << np.int64(40)) | np.int64(7)
    q = keys[rng.integers(0, 64, 50)]
    want = first_index_np(keys, q).astype(np.int32)
    for kw in lookup_variants:
        _same(first_index_jnp(keys, q, **kw), want, f"first_index {kw}")
        if kw["method"] in ("bucket", "hash"):
            _same(_first_index_jit(jnp.asarray(keys), jnp.asarray(q), kw["method"],
                                   kw.get("chunks", 1), kw.get("bucket_extra", 0), weak=True),
                  want, f"first_index {kw}, forced collisions")
    if verbose:
        print(f"self_check: OK (spec cases and {num_random} random cases; "
              f"{len(lookup_variants)} lookup variants, {len(fused_variants)} fused variants)")


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    self_check()
