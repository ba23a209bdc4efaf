"""Benchmark: the id-routing ops under ``jax.vmap`` over many small examples.

A batch of B examples of n ids each, one jitted ``jax.vmap`` of the op (one kernel call for the
whole batch), against the same ``jax.vmap`` of the best pure-jnp formulation (``jnp_routing.py``,
``jnp_fused_reorder.py``), at (B, n) = (1e5, 3), (1e4, 30), (1e3, 300): the same 3e5 ids cut ever
finer. The kernels' per-element costs (task scheduling, scratch, hash-index leases) dominate at
n = 3, which is what this measures. Ops: ``reorder_by_indices`` (S = 4), ``split_by_indices``
(S = 4, int64 rows), ``fused_reorder_by_indices`` (two tables of n ids, S = 8, dims 2 and 3, no empty rank-0 shard).
Ids are int64 drawn from [0, 10 n); timing as ``fused_reorder.py`` (warm-up, interleaved rounds,
medians, ``block_until_ready``).

Usage::

    python benchmarks/vmap_small.py            # full sizes
    python benchmarks/vmap_small.py --quick    # 10x smaller batches, few repeats
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from fused_reorder import Row, distops_op, format_table, start, time_interleaved
from jnp_fused_reorder import fused_reorder_jnp
from jnp_routing import reorder_jnp, split_jnp


def _entries(n_shards_reorder: int = 4, n_shards_fused: int = 8):
    reorder, split, fused = (distops_op(name) for name in
                             ("reorder_by_indices", "split_by_indices", "fused_reorder_by_indices"))
    S, F = n_shards_reorder, n_shards_fused
    return [
        ("reorder", reorder and (lambda x, s, y: tuple(reorder(x, s, S))),
         lambda x, s, y: tuple(reorder_jnp(x, s, S))),
        ("split", split and (lambda x, s, y: tuple(split(s, x, S))),
         lambda x, s, y: tuple(split_jnp(s, x, S))),
        ("fused_reorder",
         fused and (lambda x, s, y: tuple(fused([x, y], F, (2, 3), rank0_empty_shard=False))),
         lambda x, s, y: tuple(fused_reorder_jnp([x, y], F, (2, 3), rank0_empty=False))),
    ]


def main(argv=None) -> int:
    args = start("id-routing ops under vmap over many small examples", __doc__.splitlines()[0],
                 "20", argv)
    scale = 10 if args.quick else 1
    repeats = args.repeats or (3 if args.quick else 20)
    rows = []
    for batch, n in ((100_000 // scale, 3), (10_000 // scale, 30), (1000 // scale, 300)):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 10 * n, size=(batch, n))
        y = rng.integers(0, 10 * n, size=(batch, n))
        s = (x % 4).astype(np.int32)
        dev = [jax.device_put(a) for a in (x, s, y)]
        for name, ours, jnp_fn in _entries():
            workload = f"{name} B={batch} n={n}"
            impls = [("jax_distops", ours), ("jnp", jnp_fn)]
            impls = [(label, jax.jit(jax.vmap(f))) for label, f in impls if f is not None]
            outs = [jax.device_get(f(*dev)) for _, f in impls]
            for out in outs[1:]:  # the implementations agree before they are timed
                for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(out), strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=workload)
            times = time_interleaved([(f, dev, repeats, 3) for _, f in impls])
            rows += [Row(workload, label, t, batch * n) for (label, _), t in zip(impls, times)]
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
