"""``fused_gather_embeddings_by_input``: cut every table's embedding rows out of the fused embedding
buffer that the shards sent back, at the offsets ``fused_reorder_by_indices`` computed (Monolith's
``MonolithFusedGatherEmbeddingsByInput``), and its gradient, which sums the rows' gradients back into
a buffer of the fused layout (``MonolithFusedGatherEmbeddingsByInputGradient``).

Semantics: ``spec/monolith_ops.md`` section 10; deviations (``scale`` applied on every platform,
deterministic sums, every offset checked, an autodiff rule): ``DESIGN.md`` section 2. Kernel:
``csrc/fused_gather_embeddings_by_input_cpu.cc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from .. import _checks, _compat
from .._primitive import new_primitive, register_primitive

_OP = "fused_gather_embeddings_by_input"
_GRAD_OP = "fused_gather_embeddings_by_input_gradient"

# 1. Primitives -------------------------------------------------------------------------------------
# fused_gather_p(fused [E], *offsets [L_m]) -> M x [L_m, dims[m]]; linear in fused.
# fused_gather_gradient_p(scale [], *grads [L_m, dims[m]], *offsets [L_m]) -> [size]; linear in grads
# (and in scale). With scale 1 each is the other's transpose.
fused_gather_p = new_primitive(_OP)
fused_gather_gradient_p = new_primitive(_GRAD_OP, multiple_results=False)


# 2. Public functions -------------------------------------------------------------------------------
def fused_gather_embeddings_by_input(
    fused_embeddings: jax.typing.ArrayLike,
    fused_embedding_offsets: Sequence[jax.typing.ArrayLike],
    embedding_dims: Sequence[int],
) -> list[jax.Array]:
    """Cuts each table's embedding rows out of the flat fused embedding buffer.

    ``out[m][j] = flat[off_m[j] : off_m[j] + embedding_dims[m]]`` with ``flat`` the flattened
    ``fused_embeddings``. With the offsets of :func:`fused_reorder_by_indices` (split per table by
    its ``slot_sizes``), every raw input id gets its own embedding row back.

    Example (spec 3.2 case 7 / 10.2; ``fused`` holds the 22 floats 1.1, 1.2, ..., 9.2)::

        t0, t1 = fused_gather_embeddings_by_input(
            fused, [jnp.array([13, 0, 5]), jnp.array([16, 18])], [3, 2])
        # t0 == [[6.1, 6.2, 6.3], [1.1, 1.2, 1.3], [3.1, 3.2, 3.3]];  t1 == [[7.1, 7.2], [8.1, 8.2]]

    Args:
      fused_embeddings: float32, float64 or bfloat16 array of any shape (read flattened).
      fused_embedding_offsets: M one-dimensional int32 or int64 arrays (one dtype), the start of
        each row in the flat buffer.
      embedding_dims: M static ints >= 1, the row width of each table.

    Returns:
      M arrays ``[L_m, embedding_dims[m]]`` of the buffer's dtype (``[]`` when M is 0).

    Raises:
      ValueError / TypeError: (at trace time) lengths, ranks or dtypes that do not match.
      jax.errors.JaxRuntimeError: (when computed, CPU) an offset whose row does not lie inside the
        buffer (Monolith: an out-of-bounds read).

    Differentiable w.r.t. ``fused_embeddings`` (Monolith registers no gradient): the transpose is
    :func:`fused_gather_embeddings_by_input_gradient` with scale 1. ``jax.vmap`` over any
    arguments runs one custom call per batch.
    """
    op = _OP
    fused = _checks.as_array(fused_embeddings, op, "fused_embeddings", _checks.FLOAT_DTYPES)
    offsets, dims = _check_offsets(op, fused_embedding_offsets, embedding_dims)
    if not offsets:
        return []
    return list(fused_gather_p.bind(fused.reshape(-1), *offsets, dims=dims))


def fused_gather_embeddings_by_input_gradient(
    fused_embeddings_size: int,
    grads: Sequence[jax.typing.ArrayLike],
    embedding_offsets: Sequence[jax.typing.ArrayLike],
    embedding_dims: Sequence[int],
    scale: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    """Sums per-table row gradients back into a buffer of the fused layout, times ``scale``.

    ``out[i] = scale * sum(grads[m][j, i - off_m[j]])`` over every row ``(m, j)`` whose span
    ``[off_m[j], off_m[j] + embedding_dims[m])`` contains ``i``; 0 where no row reads. Sums run
    table by table, row by row (float32 for float32 and bfloat16 grads, float64 for float64), then
    are multiplied by ``scale`` and rounded once: deterministic, whatever the thread count.
    (Monolith's CPU kernel ignores ``scale`` and races on overlapping tables; its GPU kernel sums
    with atomics.)

    Args:
      fused_embeddings_size: static int >= 0, the buffer length (e.g. the ``fused_embedding_size``
        of :func:`fused_reorder_by_indices`, known statically).
      grads: M arrays ``[L_m, embedding_dims[m]]`` of float32, float64 or bfloat16 (one dtype).
      embedding_offsets: M one-dimensional int32 or int64 arrays (one dtype), as for the forward.
      embedding_dims: M static ints >= 1.
      scale: a float or a scalar array, possibly traced (a loss scale).

    Returns:
      ``[fused_embeddings_size]`` of ``grads``' dtype (float32 when M is 0). Linear in ``grads``
      (its transpose is ``scale`` times the forward gather) and in ``scale``.

    Raises:
      ValueError / TypeError: (at trace time) lengths, shapes or dtypes that do not match; a
        ``fused_embeddings_size`` that is not a static int.
      jax.errors.JaxRuntimeError: (when computed, CPU) an offset whose row does not lie inside the
        buffer (Monolith: an out-of-bounds write).
    """
    op = _GRAD_OP
    size = _checks.static_int(fused_embeddings_size, op, "fused_embeddings_size", minimum=0)
    offsets, dims = _check_offsets(op, embedding_offsets, embedding_dims)
    grads = _checks.as_array_list(grads, op, "grads", _checks.FLOAT_DTYPES, ndim=2)
    if len(grads) != len(offsets):
        raise ValueError(f"{op}: grads has {len(grads)} tables but embedding_offsets has {len(offsets)}")
    for m, (g, o, d) in enumerate(zip(grads, offsets, dims)):
        if g.shape != (o.shape[0], d):
            raise ValueError(
                f"{op}: grads[{m}] has shape {g.shape}, expected ({o.shape[0]}, {d}) (a row of "
                f"embedding_dims[{m}] per offset)"
            )
    dtype = grads[0].dtype if grads else np.dtype(np.float32)
    scale = jnp.asarray(scale)
    if scale.ndim != 0 or not (
        jnp.issubdtype(scale.dtype, jnp.floating) or jnp.issubdtype(scale.dtype, jnp.integer)
    ):
        raise ValueError(f"{op}: scale must be a real scalar, got shape {scale.shape} {scale.dtype}")
    if not grads:
        return jnp.zeros((size,), dtype)
    scale = scale.astype(_scale_dtype(dtype))
    return fused_gather_gradient_p.bind(scale, *grads, *offsets, dims=dims, size=size)


def _check_offsets(op, offsets, dims):
    arg = "fused_embedding_offsets" if op == _OP else "embedding_offsets"
    offsets = _checks.as_array_list(offsets, op, arg, _checks.INDEX_DTYPES, ndim=1)
    if isinstance(dims, jax.Array | np.ndarray) or not isinstance(dims, Sequence):
        raise TypeError(f"{op}: embedding_dims must be a list or tuple of static ints")
    dims = tuple(_checks.static_int(d, op, "embedding_dims", minimum=1) for d in dims)
    if len(dims) != len(offsets):
        raise ValueError(
            f"{op}: embedding_dims has {len(dims)} entries but {arg} has {len(offsets)} tables"
        )
    return offsets, dims


def _scale_dtype(dtype) -> np.dtype:
    """Sums and the scale are float64 for float64 grads, float32 otherwise (bfloat16 included)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(fused, *offsets, dims):
    return [((o.shape[0], d), fused.dtype) for o, d in zip(offsets, dims)]


def _gradient_abstract_eval(scale, *tables, dims, size):
    del scale
    return [((size,), tables[0].dtype)]


def _in_core_ndims(num_operands, *, dims):
    del dims
    return (1,) * num_operands


def _gradient_in_core_ndims(num_operands, *, dims, size):
    del num_operands, size
    return (0,) + (2,) * len(dims) + (1,) * len(dims)


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, dims, size=None):
    del size  # the handler reads it off its output buffer
    return dict(dims=np.asarray(dims, np.int64))


# 5. JVP --------------------------------------------------------------------------------------------
# The gather is linear in fused; the gradient is bilinear in (scale, grads):
#   d gradient = gradient(scale, d grads) + gradient(d scale, grads).
def _jvp(primals, tangents, *, dims):
    fused, *offsets = primals
    outs = fused_gather_p.bind(fused, *offsets, dims=dims)
    t = tangents[0]
    if type(t) is ad.Zero:
        return outs, [_compat.zero_tangent(o) for o in outs]
    return outs, fused_gather_p.bind(t, *offsets, dims=dims)


def _gradient_jvp(primals, tangents, *, dims, size):
    num_tables = len(dims)
    scale, grads, offsets = primals[0], primals[1 : 1 + num_tables], primals[1 + num_tables :]
    out = fused_gather_gradient_p.bind(*primals, dims=dims, size=size)
    t_scale, t_grads = tangents[0], tangents[1 : 1 + num_tables]
    terms = []
    if any(type(t) is not ad.Zero for t in t_grads):
        t_grads = [ad.instantiate_zeros(t) for t in t_grads]
        terms.append(fused_gather_gradient_p.bind(scale, *t_grads, *offsets, dims=dims, size=size))
    if type(t_scale) is not ad.Zero:
        terms.append(fused_gather_gradient_p.bind(t_scale, *grads, *offsets, dims=dims, size=size))
    if not terms:
        return out, _compat.zero_tangent(out)
    return out, sum(terms[1:], terms[0])


# 6. Transpose --------------------------------------------------------------------------------------
# gather^T = gradient with scale 1. gradient^T w.r.t. grads = scale * gather; w.r.t. scale (grads
# known) = <ct, gradient(1, grads)>.
def _transpose(cts, fused, *offsets, dims):
    assert ad.is_undefined_primal(fused)
    if all(type(c) is ad.Zero for c in cts):
        return [ad.Zero(fused.aval)] + [None] * len(offsets)
    cts = [ad.instantiate_zeros(c) for c in cts]
    one = jnp.ones((), _scale_dtype(fused.aval.dtype))
    ct_fused = fused_gather_gradient_p.bind(
        one, *cts, *offsets, dims=dims, size=fused.aval.shape[-1]
    )
    return [ct_fused] + [None] * len(offsets)


def _gradient_transpose(ct, scale, *tables, dims, size):
    num_tables = len(dims)
    grads, offsets = tables[:num_tables], tables[num_tables:]
    none = [None] * num_tables
    if ad.is_undefined_primal(scale):  # linear in scale, grads known
        assert not any(ad.is_undefined_primal(g) for g in grads)
        if type(ct) is ad.Zero:
            return [ad.Zero(scale.aval)] + [None] * (2 * num_tables)
        one = jnp.ones((), scale.aval.dtype)
        unscaled = fused_gather_gradient_p.bind(one, *grads, *offsets, dims=dims, size=size)
        acc = scale.aval.dtype
        # Per batch element (a vmapped scale has the batch dims; a shared one gets the sum over
        # them from register_primitive's transpose wrapper).
        ct_scale = jnp.sum(ct.astype(acc) * unscaled.astype(acc), axis=-1)
        return [ct_scale] + [None] * (2 * num_tables)
    linear = [ad.is_undefined_primal(g) for g in grads]  # tables not differentiated get None
    if type(ct) is ad.Zero:
        return [None] + [ad.Zero(g.aval) if u else None for g, u in zip(grads, linear)] + none
    rows = fused_gather_p.bind(ct, *offsets, dims=dims)
    scale_rows = scale[..., None, None]  # [*batch, 1, 1] against the rows [*batch, L, dim]
    ct_grads = [
        (r * scale_rows).astype(g.aval.dtype) if u else None
        for r, g, u in zip(rows, grads, linear)
    ]
    return [None] + ct_grads + none


# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    fused_gather_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_jvp,
    transpose=_transpose,
)
register_primitive(
    fused_gather_gradient_p,
    abstract_eval=_gradient_abstract_eval,
    in_core_ndims=_gradient_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_gradient_jvp,
    transpose=_gradient_transpose,
)
