"""Pure-``jax.numpy`` and numpy baselines for ``jax_distops``' routing ops.

Semantics (spec sections 1, 2, 4; DESIGN.md section 3, static-shape versions):

* ``split_by_indices(indices, tensor, S) -> (values, split_sizes)``: ``values`` = the rows of
  ``tensor`` grouped by ``indices`` (split 0 first), stable; ``split_sizes`` int32 [S].
* ``split_by_indices_gradient(indices, grads, S)``: ``g_in[i] = grads[dest(i)]``, the inverse of
  the forward permutation (``grads`` in split-major order, as ``values``).
* ``reorder_by_indices(input, shard_ids, S) -> (output, shard_sizes, num_unique)``: dedup on
  ``input[i]`` (1-D) or ``input[i, 0]`` (2-D), keeping each key's first occurrence with that
  row's shard id; ``output`` = per shard, its kept rows in *reverse* first-occurrence order,
  padded with 0 to ``input``'s shape. Float keys: -0.0 == +0.0, every NaN row is kept.
* ``ragged_split_by_indices(indices, (values, row_splits), S) -> (values, positions,
  row_splits)``: values and positions (``i``, dtype of ``row_splits``) split-major stable;
  ``row_splits[s, r] = offset_s + #{i < in_row_splits[r] : indices[i] == s}`` ([S, R+1]).

Public functions: :func:`split_jnp`, :func:`split_gradient_jnp`, :func:`reorder_jnp`,
:func:`ragged_split_jnp` (jit-compiled, static shapes, the fastest pure-jnp formulations found;
options select the alternatives measured below); :func:`split_np`, :func:`split_gradient_np`,
:func:`reorder_np`, :func:`ragged_split_np` (vectorized numpy, no per-row Python loop);
:func:`self_check` (spec test vectors and random inputs against plain-Python references;
``python benchmarks/jnp_routing.py`` runs it). All need ``jax_enable_x64`` (int64 ids, uint64
dedup keys).

Design of the jnp versions (measured on the project VM: 2 cores, jax 0.10.2 CPU; workloads of
``benchmarks/routing.py``; median ms; that machine was shared with a test run, so +-15%):

1. All three ops are a *stable partition* of the positions by a small bucket id (split index;
   shard, with duplicates in an extra bucket, on the reversed positions for reorder). XLA:CPU
   sorts one integer operand ~5x faster than a multi-operand sort (``jnp.argsort(stable=True)``
   of 1e6 int32: 167 ms; one ``lax.sort`` of packed keys ``index << 20 | position``: 37 ms), and
   a 1e6-key sort is ~36 ns/key. So the partition (:func:`_partition`) cuts the positions into
   chunks of ``_CHUNK`` = 1024 and sorts the packed keys ``bucket << pb | local position``
   (int32 when they fit) of each chunk, as ``_GROUPS`` = 32 independent batched
   ``lax.sort(..., dimension=1)`` ops: XLA:CPU's thunk executor runs independent ops on both
   cores, and small rows sort faster. Sorting 1e6 keys: one sort 36 ms; 1024 rows of 1024 as one
   batched op 22 ms; as 8 ops 19 ms; as 16-32 ops 10-11 ms (with 8 or fewer ops no concurrency
   showed). A binary search of the bucket boundaries in every sorted row gives per-chunk
   counts, hence every key's output slot (``off[s] + earlier chunks' count + rank in chunk``);
   one int32 scatter turns that into the permutation (or its inverse).
2. Moving the rows: for 1e6 x 64 float32 a row gather ``tensor[perm]`` took 110-130 ms, a row
   scatter ``out.at[dest].set(tensor)`` 78-88 ms, ``jnp.copy`` of the same bytes 62-71 ms. So
   ``move="auto"`` scatters rows of >= 4 elements and gathers narrower ones (1e6 rows of 1:
   gather 0.8 ms, scatter 1.9; of 4: 4.4 vs 2.4; of 16: 24 vs 24). The gradient likewise
   scatters ``out.at[perm].set(grads)`` (99 ms) rather than gathering ``grads[dest]`` (110 ms).
   A jitted copy of 256 MB costs ~2.7x ``np.copy`` here (66 vs 25 ms; mostly kernel time for
   the fresh output's page faults), so on 64-wide rows every jitted version, the op included,
   sits near the copy floor.
3. reorder: equal keys are grouped by ``jnp_fused_reorder._group_sort`` (one sort of packed
   ``hash(id) << pb | position`` uint64 keys, exact fallback on a hash collision; 56 ms of the
   total), then the kept rows are partitioned by shard as in 1 on the reversed positions.
4. ragged split: the partition of 1, then ``row_splits[s, r]`` for all S x (R+1) (split, row
   start) pairs by a binary search of ``s << pb | local row start`` in the sorted row of the
   chunk holding the row start (:func:`_count_before`).

Alternatives (``python benchmarks/routing.py --jnp-variants``; median ms; the chosen default
first):

================================================  ===========  ============  ============
split (method / move)                             1e6 x 1      1e6 x 64      grad 1e6x64
================================================  ===========  ============  ============
**chunked** (gather for x1, scatter for x64)      14.5         100.9         99.1
chunked, the other move                           15.7         126.5         110.5
one global packed-key sort, gather / scatter      38.5 / 41.1  153.7 / 116.6 131.3 / 121.3
``jnp.argsort(stable=True)``, gather / scatter    162 / 170    283 / 258     259 / 248
chunked, chunk=512 / 4096                         14.9 / 15.7  98.9 / 100.8  -
chunked, groups=8 / 64                            23.1 / 15.7  108.9 / 96.7  -
(for reference: jax_distops / numpy / copy floor) 2.5 / 9.9    85 / 50 / 72  80 / 74 / 66
================================================  ===========  ============  ============

===============================================================  ==========
reorder, 1e6 ids (~432k unique), S = 64                          ms
===============================================================  ==========
**sort1="auto" (hash), second="chunked"**                        71.4
sort1="auto", second="sort" (one global (shard, -position) sort) 84.2
sort1="twopass" (always the exact 2-sort LSD), chunked / sort    98.1 / 111.0
sort1="multi" (``lax.sort((key, iota))``), chunked / sort        239 / 248
(for reference: jax_distops / numpy)                             32.0 / 40.3
===============================================================  ==========

===============================================================  ==========
ragged split, 1e6 values in 1e4 rows, S = 16                     ms
===============================================================  ==========
**chunked** (partition + per-chunk binary search)                16.6
chunk=512 / 4096                                                 16.6 / 19.7
"cumsum" (scatter-add counts per (split, row), then cumsum)      28.6
"sort" (one global packed sort + ``jnp.searchsorted``)           40.7
(for reference: jax_distops / numpy)                             5.2 / 14.4
===============================================================  ==========

Also tried and dropped: a counting sort (rank within split by a cumsum of the [N, S] one-hot
matrix: 423 ms for N = 1e6, S = 64); fusing the row gather into an elementwise select (no gain);
gathering 64-float rows as 32 uint64 (slower: 146 vs 109 ms); splitting the row gather or
scatter into 16 independent ops (slower in the same run: 320 vs 212, 232 vs 107 ms).

The numpy versions sort packed int64 keys with ``np.sort`` (numpy's SIMD sort; 1e6 int32
indices: 8 ms vs 35 ms for ``np.argsort(kind="stable")``) and use ``np.take`` / fancy
indexing; reorder reuses
``jnp_fused_reorder._group_sort_np``.
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
from jnp_fused_reorder import _group_sort, _group_sort_np  # noqa: E402

__all__ = [
    "SplitResult",
    "ReorderResult",
    "RaggedSplitResult",
    "split_jnp",
    "split_gradient_jnp",
    "reorder_jnp",
    "ragged_split_jnp",
    "split_np",
    "split_gradient_np",
    "reorder_np",
    "ragged_split_np",
    "assert_same",
    "self_check",
]


class SplitResult(NamedTuple):
    """Same fields, order and dtypes as ``jax_distops.SplitResult``."""

    values: object
    split_sizes: object


class ReorderResult(NamedTuple):
    """Same fields, order and dtypes as ``jax_distops.ReorderResult``."""

    output: object
    shard_sizes: object
    num_unique: object


class RaggedSplitResult(NamedTuple):
    """Same fields, order and dtypes as ``jax_distops.RaggedSplitResult``."""

    values: object
    positions: object
    row_splits: object


# Defaults of the chunked partition (see the module docstring): rows of ``_CHUNK`` keys, sorted
# in ``_GROUPS`` independent batched sort ops.
_CHUNK = 1024
_GROUPS = 32
# move="auto": rows of at least this many elements are moved by a scatter, narrower ones by a
# gather (see the module docstring).
_SCATTER_MIN = 4


# ----------------------------------------------------------------------------------------------
# jnp: the chunked stable partition all three ops share
# ----------------------------------------------------------------------------------------------


class _Part(NamedTuple):
    ks: object  # [C, L] sorted keys bucket << pb | local position (padding: bucket nb)
    pb: int  # position bits (positions 0..L fit)
    L: int  # keys per chunk
    nb: int  # number of buckets
    starts: object  # [C, nb + 1] first sorted index of each bucket in each chunk
    base: object  # [C, nb] dest of sorted element q of bucket s in chunk c = base[c, s] + q
    sizes: object  # [nb] int32 bucket sizes


def _bits(v: int) -> int:
    return max(1, int(v).bit_length())


def _partition(b, nb: int, chunk: int, groups: int) -> _Part:
    """Stable partition of positions by bucket ``b`` (ints in [0, nb)), in chunks.

    The N positions are cut into C chunks of L consecutive positions; each chunk's keys
    ``b << pb | local position`` are sorted (one batched ``lax.sort`` per group of chunks, so
    XLA:CPU runs the groups concurrently); chunk counts per bucket come from a binary search of
    the bucket boundaries. Then the stable global order of a chunk's sorted element q of bucket
    s is ``off[s] + (# of bucket s in earlier chunks) + (q - starts[c, s]) = base[c, s] + q``.
    """
    n = b.shape[0]
    L = max(1, min(chunk, n))
    C = -(-max(n, 1) // L)
    G = max(1, min(groups, C))
    per = -(-C // G)
    C = G * per
    pb = _bits(L)  # L itself must fit (ragged queries at the chunk end)
    kb = _bits(nb)  # nb is the padding bucket
    kdt = jnp.int32 if kb + pb <= 31 else jnp.int64
    bp = b.astype(kdt)
    if C * L > n:
        bp = jnp.concatenate([bp, jnp.full((C * L - n,), nb, kdt)])
    keys = (bp.reshape(C, L) << pb) | lax.iota(kdt, L)[None, :]
    parts = [lax.sort(keys[g * per:(g + 1) * per], dimension=1) for g in range(G)]
    ks = jnp.concatenate(parts) if G > 1 else parts[0]
    q = jnp.arange(nb + 1, dtype=kdt) << pb
    starts = jax.vmap(lambda k: jnp.searchsorted(k, q, side="left"))(ks).astype(jnp.int32)
    cnt = starts[:, 1:] - starts[:, :-1]  # [C, nb]
    sizes = jnp.sum(cnt, axis=0, dtype=jnp.int32)
    off = jnp.cumsum(sizes, dtype=jnp.int32) - sizes
    base = off[None, :] + (jnp.cumsum(cnt, axis=0, dtype=jnp.int32) - cnt) - starts[:, :-1]
    return _Part(ks, pb, L, nb, starts, base, sizes)


def _dest_src(p: _Part, n: int):
    """For every sorted key: its output slot (>= n for padding) and its source position."""
    C, L = p.ks.shape
    s = (p.ks >> p.pb).astype(jnp.int32)
    big = jnp.full((C, 1), n + C * L, jnp.int32)
    base = jnp.concatenate([p.base, big], axis=1)
    dest = jnp.take_along_axis(base, s, axis=1) + lax.iota(jnp.int32, L)[None, :]
    src = (p.ks & ((1 << p.pb) - 1)).astype(jnp.int32) + (lax.iota(jnp.int32, C) * L)[:, None]
    return dest.reshape(-1), src.reshape(-1)


def _perm(p: _Part, n: int):
    """perm[j] = source position of output slot j (int32 [n])."""
    dest, src = _dest_src(p, n)
    return jnp.zeros((n,), jnp.int32).at[dest].set(src, mode="drop", unique_indices=True)


def _dest_at(p: _Part, n: int):
    """dest_at[i] = output slot of position i (int32 [n]; the inverse of ``_perm``)."""
    dest, src = _dest_src(p, n)
    return jnp.zeros((n,), jnp.int32).at[src].set(dest, mode="drop", unique_indices=True)


def _count_before(p: _Part, s, pos):
    """``base[c, s] + #{keys in chunk c < s << pb | local}`` for global positions ``pos``
    (0 <= pos <= n) and buckets ``s``: the number of elements that the stable partition puts
    before the first element of bucket s at position >= pos. Vectorized binary search."""
    C, L = p.ks.shape
    pos = pos.astype(jnp.int32)
    c = jnp.minimum(pos // L, C - 1)
    local = pos - c * L
    kdt = p.ks.dtype
    target = (s.astype(kdt) << p.pb) | local.astype(kdt)
    flat = p.ks.reshape(-1)
    lo = jnp.zeros(target.shape, jnp.int32)  # number of keys < target in chunk c
    step = 1 << (L.bit_length() - 1)
    while step:
        cand = lo + step
        ok = cand <= L
        k = flat[c * L + jnp.minimum(cand, L) - 1]
        lo = jnp.where(ok & (k < target), cand, lo)
        step >>= 1
    return p.base[c, s] + lo


# ----------------------------------------------------------------------------------------------
# jnp ops
# ----------------------------------------------------------------------------------------------


def _split_perm(indices, num_splits: int, method: str, chunk: int, groups: int):
    """(perm, split_sizes) of the stable partition, by ``method``."""
    n = indices.shape[0]
    S = num_splits
    if method == "chunked":
        p = _partition(indices, S, chunk, groups)
        return p, p.sizes
    if method == "argsort":
        perm = jnp.argsort(indices, stable=True).astype(jnp.int32)
        sizes = jnp.zeros((S,), jnp.int32).at[indices].add(1, mode="drop")
        return perm, sizes
    if method == "sort":  # one global packed-key sort
        pb = _bits(n)
        kdt = jnp.int32 if _bits(S) + pb <= 31 else jnp.int64
        k = lax.sort((indices.astype(kdt) << pb) | lax.iota(kdt, n))
        perm = (k & ((1 << pb) - 1)).astype(jnp.int32)
        bounds = jnp.searchsorted(k, jnp.arange(S + 1, dtype=kdt) << pb, side="left")
        return perm, (bounds[1:] - bounds[:-1]).astype(jnp.int32)
    raise ValueError(f"unknown method {method!r}")


@functools.partial(jax.jit, static_argnames=("num_splits", "method", "move", "chunk", "groups"))
def _split_jit(indices, tensor, num_splits, method, move, chunk, groups):
    n = indices.shape[0]
    if n == 0:
        return SplitResult(tensor, jnp.zeros((num_splits,), jnp.int32))
    perm, sizes = _split_perm(indices, num_splits, method, chunk, groups)
    if move == "auto":
        move = "scatter" if tensor.size // n >= _SCATTER_MIN else "gather"
    if isinstance(perm, _Part):
        if move == "scatter":
            dest = _dest_at(perm, n)
            values = jnp.zeros_like(tensor).at[dest].set(
                tensor, mode="promise_in_bounds", unique_indices=True)
            return SplitResult(values, sizes)
        perm = _perm(perm, n)
    if move == "scatter":
        dest = jnp.zeros((n,), jnp.int32).at[perm].set(lax.iota(jnp.int32, n), unique_indices=True)
        values = jnp.zeros_like(tensor).at[dest].set(
            tensor, mode="promise_in_bounds", unique_indices=True)
    else:
        values = tensor.at[perm].get(mode="promise_in_bounds", unique_indices=True)
    return SplitResult(values, sizes)


def split_jnp(indices, tensor, num_splits: int, *, method: str = "chunked", move: str = "auto",
              chunk: int = _CHUNK, groups: int = _GROUPS) -> SplitResult:
    """Pure-jnp ``split_by_indices``: rows of ``tensor`` grouped by ``indices`` (stable).

    ``method``: "chunked" (default), "sort" (one global packed-key sort) or "argsort"
    (``jnp.argsort(stable=True)``). ``move``: "gather" (``tensor[perm]``), "scatter"
    (``out.at[dest].set(tensor)``) or "auto" (scatter for rows of >= 4 elements).
    Indices must lie in [0, num_splits).
    """
    return _split_jit(jnp.asarray(indices), jnp.asarray(tensor), int(num_splits), method, move,
                      int(chunk), int(groups))


@functools.partial(jax.jit, static_argnames=("num_splits", "method", "move", "chunk", "groups"))
def _split_grad_jit(indices, grads, num_splits, method, move, chunk, groups):
    n = indices.shape[0]
    if n == 0:
        return grads
    perm, _ = _split_perm(indices, num_splits, method, chunk, groups)
    if move == "auto":
        move = "scatter" if grads.size // n >= _SCATTER_MIN else "gather"
    if isinstance(perm, _Part):
        if move == "gather":
            dest = _dest_at(perm, n)
            return grads.at[dest].get(mode="promise_in_bounds", unique_indices=True)
        perm = _perm(perm, n)
    if move == "gather":
        dest = jnp.zeros((n,), jnp.int32).at[perm].set(lax.iota(jnp.int32, n), unique_indices=True)
        return grads.at[dest].get(mode="promise_in_bounds", unique_indices=True)
    return jnp.zeros_like(grads).at[perm].set(grads, mode="promise_in_bounds", unique_indices=True)


def split_gradient_jnp(indices, grads, num_splits: int, *, method: str = "chunked",
                       move: str = "auto", chunk: int = _CHUNK, groups: int = _GROUPS):
    """Pure-jnp ``split_by_indices_gradient``: ``g_in[i] = grads[dest(i)]``, the inverse of the
    forward permutation (``grads``: split-major rows, as ``split_jnp(...).values``).
    ``move``: "gather" (``grads[dest]``), "scatter" (``out.at[perm].set(grads)``) or "auto"."""
    return _split_grad_jit(jnp.asarray(indices), jnp.asarray(grads), int(num_splits), method,
                           move, int(chunk), int(groups))


def _key_bits(x):
    """Dedup key of a 1-D column: ints as they are; floats bitcast to same-width ints after
    mapping -0.0 to +0.0. Returns (key, is_nan or None)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
        k = lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros_like(x), x), itype)
        return k, jnp.isnan(x)
    return x, None


@functools.partial(jax.jit, static_argnames=("num_of_shards", "sort1", "second", "chunk",
                                             "groups"))
def _reorder_jit(inp, shard_ids, num_of_shards, sort1, second, chunk, groups):
    S = num_of_shards
    n = inp.shape[0]
    if n == 0:
        z = jnp.zeros((), jnp.int32)
        return ReorderResult(jnp.zeros_like(inp), jnp.zeros((S,), jnp.int32), z)
    col = inp if inp.ndim == 1 else inp[:, 0]
    key, isnan = _key_bits(col)
    if key.dtype.itemsize < 8 and sort1 != "multi":
        key = key.astype(jnp.int64)  # _group_sort packs 64-bit keys
    xs, ps = _group_sort(key, sort1)  # equal keys adjacent, by increasing position
    first = jnp.concatenate([jnp.ones((1,), bool), xs[1:] != xs[:-1]])
    if isnan is not None:
        first = first | isnan[ps]  # every NaN row is its own key
    num_unique = jnp.sum(first, dtype=jnp.int32)
    sh = shard_ids[ps].astype(jnp.int32)
    if second == "chunked":
        # stable partition of the reversed positions by shard; duplicates go to bucket S
        b_rev = jnp.zeros((n,), jnp.int32).at[n - 1 - ps].set(
            jnp.where(first, sh, S), unique_indices=True)
        p = _partition(b_rev, S + 1, chunk, groups)
        pos = (n - 1) - _perm(p, n)
        shard_sizes = p.sizes[:S]
    elif second == "sort":  # one global sort of (shard, reverse position) keys
        kdt = jnp.int32 if (S + 1) * n < 2**31 else jnp.int64
        k2 = lax.sort(jnp.where(first, sh.astype(kdt) * n + (n - 1 - ps).astype(kdt),
                                jnp.asarray(S * n, kdt)))
        pos = (n - 1 - (k2 % n)).astype(jnp.int32)
        bounds = jnp.searchsorted(k2, jnp.arange(S + 1, dtype=kdt) * n, side="left")
        shard_sizes = (bounds[1:] - bounds[:-1]).astype(jnp.int32)
    else:
        raise ValueError(f"unknown second {second!r}")
    out = inp.at[pos].get(mode="promise_in_bounds")
    valid = lax.iota(jnp.int32, n) < num_unique
    out = jnp.where(valid.reshape((n,) + (1,) * (inp.ndim - 1)), out, jnp.zeros((), inp.dtype))
    return ReorderResult(out, shard_sizes, num_unique)


def reorder_jnp(inp, shard_ids, num_of_shards: int, *, sort1: str = "auto",
                second: str = "chunked", chunk: int = _CHUNK,
                groups: int = _GROUPS) -> ReorderResult:
    """Pure-jnp ``reorder_by_indices`` (spec section 2; output padded with 0 to ``inp``'s shape).

    Dedup key ``inp[i]`` (1-D) or ``inp[i, 0]`` (2-D); floats: -0.0 == +0.0, NaN rows all kept.
    ``sort1``: the grouping sort of ``jnp_fused_reorder._group_sort`` ("auto" | "hash" |
    "twopass" | "multi"); ``second``: "chunked" (stable partition of the reversed kept rows) or
    "sort" (one global sort of packed (shard, reverse position) keys). Needs x64.
    """
    return _reorder_jit(jnp.asarray(inp), jnp.asarray(shard_ids), int(num_of_shards), sort1,
                        second, int(chunk), int(groups))


@functools.partial(jax.jit, static_argnames=("num_splits", "method", "chunk", "groups"))
def _ragged_split_jit(indices, values, row_splits, num_splits, method, chunk, groups):
    S = num_splits
    n = indices.shape[0]
    rdt = row_splits.dtype
    R1 = row_splits.shape[0]
    if n == 0:
        return RaggedSplitResult(values, jnp.zeros((0,), rdt), jnp.zeros((S, R1), rdt))
    s_grid = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32)[:, None], (S, R1))
    r_grid = jnp.broadcast_to(row_splits.astype(jnp.int32)[None, :], (S, R1))
    if method == "chunked":
        p = _partition(indices, S, chunk, groups)
        perm = _perm(p, n)
        rs = _count_before(p, s_grid, r_grid)
    elif method == "sort":
        pb = _bits(n)
        kdt = jnp.int32 if _bits(S) + pb <= 31 else jnp.int64
        k = lax.sort((indices.astype(kdt) << pb) | lax.iota(kdt, n))
        perm = (k & ((1 << pb) - 1)).astype(jnp.int32)
        q = (s_grid.astype(kdt) << pb) | r_grid.astype(kdt)
        rs = jnp.searchsorted(k, q.reshape(-1), side="left").reshape(S, R1)
    elif method == "cumsum":  # counts per (split, row) by a scatter-add, then a cumsum
        perm, sizes = _split_perm(indices, S, "chunked", chunk, groups)
        perm = _perm(perm, n)
        row = jnp.searchsorted(row_splits.astype(jnp.int32), lax.iota(jnp.int32, n),
                               side="right") - 1  # row of every value
        cnt = jnp.zeros((S, R1), jnp.int32).at[indices, row + 1].add(1, mode="drop")
        off = jnp.cumsum(sizes, dtype=jnp.int32) - sizes
        rs = off[:, None] + jnp.cumsum(cnt, axis=1, dtype=jnp.int32)
    else:
        raise ValueError(f"unknown method {method!r}")
    return RaggedSplitResult(values.at[perm].get(mode="promise_in_bounds"), perm.astype(rdt),
                             rs.astype(rdt))


def ragged_split_jnp(indices, num, num_splits: int, *, method: str = "chunked",
                     chunk: int = _CHUNK, groups: int = _GROUPS) -> RaggedSplitResult:
    """Pure-jnp ``ragged_split_by_indices``. ``num``: a ``(values, row_splits)`` pair (e.g.
    ``jax_distops.Ragged``). ``row_splits[s, r] = offset_s + #{i < num.row_splits[r] :
    indices[i] == s}``. ``method``: "chunked" (default), "sort" (one global packed sort and a
    binary search of the (split, row start) keys) or "cumsum" (scatter-add counts per (split,
    row), then a cumsum). Row splits must be valid (non-decreasing, last <= N)."""
    values, row_splits = num
    return _ragged_split_jit(jnp.asarray(indices), jnp.asarray(values), jnp.asarray(row_splits),
                             int(num_splits), method, int(chunk), int(groups))


# ----------------------------------------------------------------------------------------------
# numpy versions
# ----------------------------------------------------------------------------------------------


def _np_sorted_keys(indices: np.ndarray, num_splits: int):
    """Sorted packed keys ``index << pb | position`` (int64) and pb."""
    n = indices.shape[0]
    pb = _bits(n)
    k = (indices.astype(np.int64) << np.int64(pb)) | np.arange(n, dtype=np.int64)
    k.sort()
    return k, pb


def _np_perm(indices: np.ndarray, num_splits: int):
    k, pb = _np_sorted_keys(indices, num_splits)
    return (k & np.int64((1 << pb) - 1)).astype(np.intp)


def split_np(indices, tensor, num_splits: int) -> SplitResult:
    """Vectorized numpy ``split_by_indices`` (packed-key sort + take)."""
    indices, tensor = np.asarray(indices), np.asarray(tensor)
    perm = _np_perm(indices, num_splits)
    sizes = np.bincount(indices, minlength=num_splits).astype(np.int32)
    return SplitResult(np.take(tensor, perm, axis=0), sizes)


def split_gradient_np(indices, grads, num_splits: int):
    indices, grads = np.asarray(indices), np.asarray(grads)
    out = np.empty_like(grads)
    out[_np_perm(indices, num_splits)] = grads
    return out


def reorder_np(inp, shard_ids, num_of_shards: int) -> ReorderResult:
    """Vectorized numpy ``reorder_by_indices`` (group sort of packed keys, then one sort of
    (shard, reverse position) keys)."""
    inp, shard_ids = np.asarray(inp), np.asarray(shard_ids)
    S, n = int(num_of_shards), inp.shape[0]
    col = inp if inp.ndim == 1 else inp[:, 0]
    isnan = None
    if col.dtype.kind == "f":
        isnan = np.isnan(col)
        col = np.where(col == 0, np.zeros_like(col), col).view(f"i{col.dtype.itemsize}")
    if n == 0:
        return ReorderResult(np.zeros_like(inp), np.zeros(S, np.int32), np.int32(0))
    ps = _group_sort_np(col)
    xs = col[ps]
    first = np.empty(n, bool)
    first[0] = True
    np.not_equal(xs[1:], xs[:-1], out=first[1:])
    if isnan is not None:
        first |= isnan[ps]
    kp = ps[first].astype(np.int64)
    sh = shard_ids[kp].astype(np.int64)
    k2 = np.sort(sh * n + (n - 1 - kp))
    pos = n - 1 - (k2 % n)
    out = np.zeros_like(inp)
    out[: pos.shape[0]] = inp[pos]
    sizes = np.bincount(sh, minlength=S).astype(np.int32)
    return ReorderResult(out, sizes, np.int32(pos.shape[0]))


def ragged_split_np(indices, num, num_splits: int) -> RaggedSplitResult:
    """Vectorized numpy ``ragged_split_by_indices`` (one packed-key sort; the row splits are a
    binary search of the (split, row start) keys in the sorted keys)."""
    values, row_splits = (np.asarray(a) for a in num)
    indices = np.asarray(indices)
    S = int(num_splits)
    k, pb = _np_sorted_keys(indices, S)
    perm = (k & np.int64((1 << pb) - 1)).astype(np.intp)
    q = (np.arange(S, dtype=np.int64)[:, None] << np.int64(pb)) | row_splits.astype(np.int64)
    rs = np.searchsorted(k, q.reshape(-1), side="left").reshape(S, -1)
    rdt = row_splits.dtype
    return RaggedSplitResult(values[perm], perm.astype(rdt), rs.astype(rdt))


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def assert_same(a, b, what: str = "") -> None:
    """Exact equality of all fields (shapes, dtypes, values) of two results or arrays."""
    fields = getattr(type(a), "_fields", None) or getattr(type(b), "_fields", None)
    if not isinstance(a, tuple):
        a, b, fields = (a,), (b,), ("value",)
    if len(a) != len(b):
        raise AssertionError(f"{what}: {len(a)} vs {len(b)} outputs")
    for name, x, y in zip(fields, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype == y.dtype and x.dtype.kind == "f":  # bit patterns: -0.0 != 0.0, NaN == NaN
            x, y = x.view(f"u{x.dtype.itemsize}"), y.view(f"u{y.dtype.itemsize}")
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
            detail = ""
            if x.shape == y.shape:
                bad = np.argwhere(x != y)
                if bad.size:
                    i = tuple(int(v) for v in bad[0])
                    detail = (f"\n  {bad.shape[0]} elements differ, first at {list(i)}: "
                              f"{x[i]} vs {y[i]}")
            raise AssertionError(
                f"{what}: field {name!r} differs:\n  {x.dtype}{list(x.shape)} {x!r}"
                f"\n  {y.dtype}{list(y.shape)} {y!r}{detail}")


def split_ref(indices, tensor, num_splits):
    """Plain-Python ``split_by_indices`` (spec section 1.2; tests only)."""
    idx, t = np.asarray(indices).tolist(), np.asarray(tensor)
    order = [i for s in range(num_splits) for i in range(len(idx)) if idx[i] == s]
    return SplitResult(t[np.asarray(order, np.intp)].reshape(t.shape),
                       np.asarray([idx.count(s) for s in range(num_splits)], np.int32))


def split_gradient_ref(indices, grads, num_splits):
    """Plain-Python ``split_by_indices_gradient`` (spec section 1.3: ``g_in[i] =
    grads[indices[i]][r_i]`` on the concatenated splits; tests only)."""
    idx, g = np.asarray(indices).tolist(), np.asarray(grads)
    off = [sum(idx.count(t) for t in range(s)) for s in range(num_splits)]
    seen = [0] * num_splits
    rows = []
    for s in idx:
        rows.append(off[s] + seen[s])
        seen[s] += 1
    return g[np.asarray(rows, np.intp)].reshape(g.shape)


def reorder_ref(inp, shard_ids, num_of_shards):
    """Plain-Python ``reorder_by_indices`` (spec section 2.2, with a set; tests only)."""
    a = np.asarray(inp)
    sid = np.asarray(shard_ids).tolist()
    keys = (a if a.ndim == 1 else a[:, 0]).tolist()
    seen, kept = set(), [[] for _ in range(num_of_shards)]
    for i, v in enumerate(keys):
        if isinstance(v, float) and v != v:  # NaN: always a new key
            kept[sid[i]].append(i)
        elif v not in seen:  # Python: 0.0 == -0.0, same hash
            seen.add(v)
            kept[sid[i]].append(i)
    rows = [i for s in range(num_of_shards) for i in reversed(kept[s])]
    out = np.zeros_like(a)
    out[: len(rows)] = a[np.asarray(rows, np.intp)]
    return ReorderResult(out, np.asarray([len(k) for k in kept], np.int32), np.int32(len(rows)))


def ragged_split_ref(indices, num, num_splits):
    """Plain-Python ``ragged_split_by_indices`` (spec section 4.2 with absolute row splits;
    tests only)."""
    values, row_splits = (np.asarray(x) for x in num)
    idx = np.asarray(indices).tolist()
    order = [i for s in range(num_splits) for i in range(len(idx)) if idx[i] == s]
    off = [sum(idx.count(t) for t in range(s)) for s in range(num_splits)]
    rs = [[off[s] + sum(1 for i in range(int(r)) if idx[i] == s) for r in row_splits.tolist()]
          for s in range(num_splits)]
    rdt = row_splits.dtype
    return RaggedSplitResult(values[np.asarray(order, np.intp)], np.asarray(order, rdt),
                             np.asarray(rs, rdt).reshape(num_splits, row_splits.shape[0]))


# (indices, tensor, S, expected values, expected split_sizes), spec section 1.6
SPLIT_SPEC_CASES = [
    ([0, 1, 2, 2, 0], np.asarray([0, 1, 2, 2, 3], np.int64), 3, [0, 3, 1, 2, 2], [2, 1, 2]),
    (list(range(1000)), None, 10, None, [100] * 10),  # ids 0..999 mod 10 (filled in below)
]
# (indices, grads, S, expected), spec section 1.6: split 2 is empty; the empty case
SPLIT_GRAD_SPEC_CASES = [
    ([0, 1, 0], np.ones((3, 2), np.float32), 3, np.ones((3, 2), np.float32)),
    ([], np.zeros((0,), np.float32), 3, np.zeros((0,), np.float32)),
]
# (input, shard_ids, S, expected output, shard_sizes, num_unique), spec section 2.6
REORDER_SPEC_CASES = [
    ([0, 1, 2, 2, 3, 5], [0, 1, 2, 2, 0, 2], 3, [3, 0, 1, 5, 2, 0], [2, 1, 2], 5),
    ([1, 2, 3, 2], [1, 0, 1, 0], 2, [2, 3, 1, 0], [1, 2], 3),
]
# (values, row_splits, indices, S, expected values, positions, row_splits), spec section 4.6
RAGGED_SPEC_CASES = [
    ([4, 3, 2, 1], [0, 0, 0, 3, 4, 4, 4], [0, 1, 0, 1], 2, [4, 2, 3, 1], [0, 2, 1, 3],
     [[0, 0, 0, 2, 2, 2, 2], [2, 2, 2, 3, 4, 4, 4]]),
    ([4, 3, 2, 1], [0, 3, 4], [0, 1, 0, 1], 2, [4, 2, 3, 1], [0, 2, 1, 3], [[0, 2, 2], [2, 3, 4]]),
]

# variants exercised by self_check (chunk=3/5 with 2 groups: several chunks, padding)
_SPLIT_VARIANTS = [dict(), dict(chunk=3, groups=2), dict(chunk=5, groups=2, move="scatter"),
                   dict(move="gather"), dict(method="sort"), dict(method="sort", move="scatter"),
                   dict(method="argsort")]
_REORDER_VARIANTS = [dict(), dict(chunk=3, groups=2), dict(second="sort"), dict(sort1="hash"),
                     dict(sort1="twopass"), dict(sort1="multi", second="sort")]
_RAGGED_VARIANTS = [dict(), dict(chunk=3, groups=2), dict(chunk=4, groups=3), dict(method="sort"),
                    dict(method="cumsum"), dict(method="cumsum", chunk=3, groups=2)]


def _check_split(idx, t, S, want, what):
    assert_same(split_np(idx, t, S), want, f"split numpy, {what}")
    for kw in _SPLIT_VARIANTS:
        assert_same(split_jnp(jnp.asarray(idx), jnp.asarray(t), S, **kw), want,
                    f"split jnp {kw}, {what}")


def _check_split_grad(idx, g, S, want, what):
    assert_same(split_gradient_np(idx, g, S), want, f"split gradient numpy, {what}")
    for kw in _SPLIT_VARIANTS:
        assert_same(split_gradient_jnp(jnp.asarray(idx), jnp.asarray(g), S, **kw), want,
                    f"split gradient jnp {kw}, {what}")


def _check_reorder(x, sid, S, want, what):
    assert_same(reorder_np(x, sid, S), want, f"reorder numpy, {what}")
    for kw in _REORDER_VARIANTS:
        assert_same(reorder_jnp(jnp.asarray(x), jnp.asarray(sid), S, **kw), want,
                    f"reorder jnp {kw}, {what}")


def _check_ragged(idx, vals, rs, S, want, what):
    assert_same(ragged_split_np(idx, (vals, rs), S), want, f"ragged numpy, {what}")
    for kw in _RAGGED_VARIANTS:
        assert_same(ragged_split_jnp(jnp.asarray(idx), (jnp.asarray(vals), jnp.asarray(rs)), S,
                                     **kw), want, f"ragged jnp {kw}, {what}")


def self_check(num_random: int = 24, seed: int = 0, verbose: bool = True) -> None:
    """Assert jnp (every variant) == numpy == spec on the spec's test vectors, and == the plain
    Python references on random inputs (int32/int64/float32 rows, 1-D and 2-D, empty inputs,
    empty splits, +-0.0 and NaN keys, several chunkings)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError('jnp_routing needs jax.config.update("jax_enable_x64", True)')
    # ---- spec vectors
    for k, (idx, t, S, e_vals, e_sizes) in enumerate(SPLIT_SPEC_CASES):
        idx = np.asarray(idx, np.int32)
        if t is None:  # map_id_to_embedding test: ids 0..999, indices ids mod 10
            t = np.arange(1000, dtype=np.int64)
            idx = (t % 10).astype(np.int32)
            e_vals = np.concatenate([t[t % 10 == s] for s in range(10)])
        want = SplitResult(np.asarray(e_vals, t.dtype), np.asarray(e_sizes, np.int32))
        assert_same(split_ref(idx, t, S), want, f"split reference, spec case {k}")
        _check_split(idx, t, S, want, f"spec case {k}")
    for k, (idx, g, S, e) in enumerate(SPLIT_GRAD_SPEC_CASES):
        idx = np.asarray(idx, np.int32)
        assert_same(split_gradient_ref(idx, g, S), e, f"split gradient reference, spec case {k}")
        _check_split_grad(idx, g, S, e, f"spec case {k}")
    for k, (x, sid, S, e_out, e_sizes, e_u) in enumerate(REORDER_SPEC_CASES):
        x, sid = np.asarray(x, np.int64), np.asarray(sid, np.int32)
        want = ReorderResult(np.asarray(e_out, np.int64), np.asarray(e_sizes, np.int32),
                             np.int32(e_u))
        assert_same(reorder_ref(x, sid, S), want, f"reorder reference, spec case {k}")
        _check_reorder(x, sid, S, want, f"spec case {k}")
    for k, (vals, rs, idx, S, e_v, e_p, e_rs) in enumerate(RAGGED_SPEC_CASES):
        vals, rs = np.asarray(vals, np.int64), np.asarray(rs, np.int64)
        idx = np.asarray(idx, np.int32)
        want = RaggedSplitResult(np.asarray(e_v, np.int64), np.asarray(e_p, np.int64),
                                 np.asarray(e_rs, np.int64))
        assert_same(ragged_split_ref(idx, (vals, rs), S), want, f"ragged reference, spec case {k}")
        _check_ragged(idx, vals, rs, S, want, f"spec case {k}")

    # ---- random inputs
    rng = np.random.default_rng(seed)
    for k in range(num_random):
        n = [0, 1, 7, 40, 129][k % 5]
        S = int(rng.integers(1, 10))
        idx = rng.integers(0, S, n).astype([np.int32, np.int64][k % 2])
        if n and k % 3 == 0:
            idx[:] = idx[0]  # one non-empty split
        shape = [(n,), (n, 3), (n, 2, 2)][k % 3]
        t = rng.standard_normal(shape).astype(np.float32) if k % 4 else \
            rng.integers(-2**62, 2**62, shape, dtype=np.int64)
        _check_split(idx, t, S, split_ref(idx, t, S), f"random case {k}")
        g = rng.standard_normal(shape).astype(np.float32)
        _check_split_grad(idx, g, S, split_gradient_ref(idx, g, S), f"random case {k}")

        # reorder: narrow ids (many duplicates) or full range; 1-D or 2-D; int or float
        kind = k % 4
        if kind == 0:
            x = rng.integers(-5, 5, n, dtype=np.int64)
        elif kind == 1:
            x = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64, endpoint=True)
            if n > 3:
                x[rng.integers(0, n, n // 2)] = x[rng.integers(0, n, n // 2)]
        elif kind == 2:
            x = rng.integers(0, 6, (n, 2)).astype(np.int64)
        else:
            x = rng.choice(np.asarray([0.0, -0.0, 1.5, -2.0, np.nan, 3.25], np.float32), (n, 2))
        sid = rng.integers(0, S, n).astype(np.int32)
        _check_reorder(x, sid, S, reorder_ref(x, sid, S), f"random case {k}")

        # ragged: random row lengths (some empty), int64 or int32 row splits
        R = int(rng.integers(1, 8))
        cuts = np.sort(rng.integers(0, n + 1, R - 1))
        rs = np.concatenate([[0], cuts, [n]]).astype([np.int64, np.int32][k % 2])
        vals = rng.integers(-2**40, 2**40, n, dtype=np.int64)
        ridx = rng.integers(0, S, n).astype(np.int32)
        _check_ragged(ridx, vals, rs, S, ragged_split_ref(ridx, (vals, rs), S), f"random case {k}")
    if verbose:
        print(f"self_check: OK (spec cases: {len(SPLIT_SPEC_CASES)} split, "
              f"{len(SPLIT_GRAD_SPEC_CASES)} split gradient, {len(REORDER_SPEC_CASES)} reorder, "
              f"{len(RAGGED_SPEC_CASES)} ragged; {num_random} random cases)")


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    self_check()
