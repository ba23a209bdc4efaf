"""The one place that deals with JAX versions and with JAX's less stable corners.

Everything else in jax_distops uses public names only (``jax.extend.core.Primitive``,
``jax.interpreters.{ad,batching,mlir}``, ``jax.ffi``). Supported: jax >= 0.8.0 (the jaxlib whose FFI
headers the extension is built against, see pyproject.toml); the newest version tested is recorded in
``_latest_jax_version.txt`` and newer versions get a warning at import.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import warnings

import jax
import numpy as np
from jax.interpreters import ad, batching, xla

MIN_JAX_VERSION = (0, 8, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


LATEST_TESTED_JAX = (
    importlib.resources.files(__package__).joinpath("_latest_jax_version.txt").read_text().strip()
)

if _version_tuple(jax.__version__) < MIN_JAX_VERSION:
    raise ImportError(
        f"jax_distops needs jax >= {'.'.join(map(str, MIN_JAX_VERSION))}, found {jax.__version__}"
    )
if _version_tuple(jax.__version__) > _version_tuple(LATEST_TESTED_JAX):
    warnings.warn(
        f"jax_distops was tested up to jax {LATEST_TESTED_JAX}; jax {jax.__version__} is newer and "
        "may have changed the internals it relies on.",
        stacklevel=2,
    )


def apply_primitive(prim):
    """The eager implementation of a primitive: compile and run it on its own."""
    return functools.partial(xla.apply_primitive, prim)


def register_batching_rule(prim, rule):
    """Registers ``rule(args, batch_dims, /, **params) -> (outs, out_dims)`` as ``prim``'s vmap rule.

    jax >= 0.4.36 keeps the real table in ``fancy_primitive_batchers`` (rules also receive the axis
    data); ``primitive_batchers`` is now a write-only compatibility shim.
    """
    if hasattr(batching, "fancy_primitive_batchers"):
        # Positional-only, so that op params may be called "args" or "dims".
        def fancy_rule(_axis_data, args, batch_dims, /, **params):
            return rule(args, batch_dims, **params)

        batching.fancy_primitive_batchers[prim] = fancy_rule
    else:  # pragma: no cover - older jax
        batching.primitive_batchers[prim] = rule


def x64_enabled() -> bool:
    """Whether 64-bit dtypes are live (``jax_enable_x64``, including the ``jax.enable_x64`` context)."""
    return jax.dtypes.canonicalize_dtype(np.int64) == np.dtype(np.int64)


def is_tracer(x) -> bool:
    """Whether ``x`` is a traced value (inside jit/vmap/grad) rather than a concrete array."""
    return isinstance(x, jax.core.Tracer)


def zero_tangent(x):
    """A symbolic-zero tangent for primal ``x`` (``ad.Zero.from_primal_value`` is gone in jax 0.10)."""
    return ad.Zero(jax.typeof(x).to_tangent_aval())


def varying_axes(x) -> frozenset:
    """The ``shard_map`` mesh axes along which ``x`` varies; empty outside ``shard_map``.

    jax >= 0.10 keeps them in ``aval.mat.varying``, earlier versions in ``aval.vma``.
    """
    try:
        aval = jax.typeof(x)
    except TypeError:  # not an array-like value
        return frozenset()
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def align_varying(args):
    """``args`` with every operand cast to vary along the union of their ``shard_map`` axes.

    A primitive's outputs get one varying-axes type, taken from an operand. When a varying operand
    (say, per-device ids) meets an invariant one (a replicated table), the invariant one must be
    cast first (``pcast``, whose transpose sums the cotangent over the axes); otherwise the output
    is typed invariant and ``jax.grad`` inside ``shard_map`` returns wrong gradients for the
    replicated operand. Outside ``shard_map`` this returns ``args`` unchanged.
    """
    if not any(isinstance(a, jax.core.Tracer) for a in args):
        return args  # concrete arrays never vary (and eager calls skip the type queries)
    axes = [varying_axes(a) for a in args]
    union = frozenset().union(*axes)
    if not union:
        return args
    cast = jax.lax.pcast if hasattr(jax.lax, "pcast") else None
    out = []
    for a, have in zip(args, axes):
        missing = tuple(sorted(union - have))
        if missing:
            a = cast(a, missing, to="varying") if cast else jax.lax.pvary(a, missing)
        out.append(a)
    return tuple(out)

