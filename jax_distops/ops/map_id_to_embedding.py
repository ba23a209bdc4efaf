"""``map_id_to_embedding``: look ids up in S (ids, embeddings) tables, typically the per-shard answers
to a lookup of the unique ids (Monolith's ``MonolithMapIdToEmbedding``), and its gradient, which sums
the rows' gradients back into the tables (``MonolithMapIdToEmbeddingGradient``).

Semantics: ``spec/monolith_ops.md`` section 8; deviations (a missing id is an error in the gradient
too, deterministic sums): ``DESIGN.md`` section 2. Kernel: ``csrc/map_id_to_embedding_cpu.cc``
(``csrc/lookup.h``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.interpreters import ad

from .. import _checks, _compat
from .._primitive import new_primitive, register_primitive

_OP = "map_id_to_embedding"
_GRAD_OP = "map_id_to_embedding_gradient_back_prop"

# 1. Primitives -------------------------------------------------------------------------------------
# map_id_to_embedding_p(input [T], *ids [K_s], *embeddings [K_s, D]) -> [T, D]; linear in embeddings.
# map_id_to_embedding_gradient_p(input [T], grads [T, D], *ids [K_s]) -> S x [K_s, D]; linear in
# grads; the two are each other's transpose.
map_id_to_embedding_p = new_primitive(_OP, multiple_results=False)
map_id_to_embedding_gradient_p = new_primitive(_GRAD_OP)


# 2. Public functions -------------------------------------------------------------------------------
def map_id_to_embedding(
    ids_list: Sequence[jax.typing.ArrayLike],
    embeddings_list: Sequence[jax.typing.ArrayLike],
    input: jax.typing.ArrayLike,  # noqa: A002  (Monolith's name)
    use_multi_threads: bool = True,
) -> jax.Array:
    """Replaces every id of ``input`` by its embedding row, found in S (ids, embeddings) tables.

    Row ``j`` of ``embeddings_list[s]`` is the embedding of ``ids_list[s][j]``. When an id appears
    more than once, its first row wins (lowest ``s``, then lowest ``j``).

    Example (spec 8.6)::

        map_id_to_embedding([jnp.array([1]), jnp.array([2])],
                            [jnp.array([[1., 1.]]), jnp.array([[2., 2.]])],
                            jnp.array([[1], [2]]))
        # -> [[[1., 1.]], [[2., 2.]]]

    Args:
      ids_list: S >= 1 one-dimensional id arrays (K_s ids each): int32, int64, uint32 or uint64,
        all of the dtype of ``input``.
      embeddings_list: S arrays ``[K_s, D]`` (one D) of float32, float64 or bfloat16.
      input: ids of any shape, to look up.
      use_multi_threads: static bool; False runs the kernel on the calling thread only (the result
        is the same).

    Returns:
      ``[*input.shape, D]``, the embeddings' dtype.

    Raises:
      ValueError / TypeError: (at trace time) list lengths, ranks, row counts, widths or dtypes that
        do not match.
      jax.errors.JaxRuntimeError: (when computed, CPU) an id of ``input`` that is in none of
        ``ids_list`` ("Unable to map id <id>").

    Differentiable w.r.t. ``embeddings_list``: the JVP looks the tangents up the same way, and the
    transpose is :func:`map_id_to_embedding_gradient_back_prop`. ``jax.vmap`` over any arguments
    runs one custom call per batch (one map per batch element if the ids are batched, else one).
    """
    op = _OP
    input_, ids = _check_ids(op, input, ids_list)
    embs = _checks.as_array_list(embeddings_list, op, "embeddings_list", _checks.FLOAT_DTYPES, ndim=2)
    if len(ids) != len(embs):
        raise ValueError(
            f"{op}: ids length and embeddings length must match. {len(ids)} vs {len(embs)}"
        )
    width = embs[0].shape[1]
    for s, (x, e) in enumerate(zip(ids, embs)):
        if e.shape != (x.shape[0], width):
            raise ValueError(
                f"{op}: embeddings_list[{s}] has shape {e.shape}, expected ({x.shape[0]}, {width}) "
                f"(a row per id of ids_list[{s}], the width of embeddings_list[0])"
            )
    if not isinstance(use_multi_threads, bool | np.bool_):
        raise TypeError(f"{op}: use_multi_threads must be a static bool, got {use_multi_threads!r}")
    out = map_id_to_embedding_p.bind(
        input_.reshape(-1), *ids, *embs, num_tables=len(ids), use_multi_threads=bool(use_multi_threads)
    )
    return out.reshape(*input_.shape, width)


def map_id_to_embedding_gradient_back_prop(
    ids: Sequence[jax.typing.ArrayLike],
    input: jax.typing.ArrayLike,  # noqa: A002
    grads: jax.typing.ArrayLike,
) -> list[jax.Array]:
    """The gradient of :func:`map_id_to_embedding` w.r.t. each embedding table.

    ``out[s][j]`` is the sum of ``grads[k]`` over the positions ``k`` of ``input`` (flattened, in
    order) whose id maps to row ``j`` of table ``s`` (first mapping wins, as in the forward op).
    Rows no id maps to are 0. Sums are taken in ``k`` order (float32 for bfloat16 grads).

    Args:
      ids: the forward op's ``ids_list``.
      input: the forward op's ``input``.
      grads: ``[*input.shape, D]`` of float32, float64 or bfloat16.

    Returns:
      S arrays ``[K_s, D]`` of ``grads``' dtype. Linear in ``grads``; its transpose is
      :func:`map_id_to_embedding`.

    Raises:
      ValueError / TypeError: (at trace time) shapes or dtypes that do not match.
      jax.errors.JaxRuntimeError: (when computed, CPU) an id of ``input`` in none of ``ids``
        (Monolith: undefined behaviour).
    """
    op = _GRAD_OP
    input_, id_arrays = _check_ids(op, input, ids)
    grads = _checks.as_array(grads, op, "grads", _checks.FLOAT_DTYPES)
    if grads.ndim != input_.ndim + 1 or grads.shape[:-1] != input_.shape:
        raise ValueError(
            f"{op}: grads must have shape [*input.shape, D] = {input_.shape} + (D,), got {grads.shape}"
        )
    width = grads.shape[-1]
    outs = map_id_to_embedding_gradient_p.bind(
        input_.reshape(-1), grads.reshape(input_.size, width), *id_arrays, num_tables=len(id_arrays)
    )
    return list(outs)


def _check_ids(op, input, ids_list):
    input_ = _checks.as_array(input, op, "input", _checks.ID_DTYPES)
    ids = _checks.as_array_list(ids_list, op, "ids_list", _checks.ID_DTYPES, ndim=1)
    if not ids:
        raise ValueError(f"{op}: ids_list must contain at least one id array")
    if ids[0].dtype != input_.dtype:
        raise TypeError(f"{op}: ids_list has dtype {ids[0].dtype} but input has {input_.dtype}")
    _checks.check_int32_count(sum(x.shape[0] for x in ids), op, "the total number of ids in ids_list")
    return input_, ids


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(input, *tables, num_tables, use_multi_threads):  # noqa: A002
    del use_multi_threads
    emb = tables[num_tables]
    return [((input.shape[0], emb.shape[1]), emb.dtype)]


def _gradient_abstract_eval(input, grads, *ids, num_tables):  # noqa: A002
    del input, num_tables
    return [((x.shape[0], grads.shape[1]), grads.dtype) for x in ids]


def _in_core_ndims(num_operands, *, num_tables, use_multi_threads):
    del num_operands, use_multi_threads
    return (1,) + (1,) * num_tables + (2,) * num_tables


def _gradient_in_core_ndims(num_operands, *, num_tables):
    del num_operands
    return (1, 2) + (1,) * num_tables


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, num_tables, use_multi_threads):
    del num_tables  # the handler splits its operands in two halves
    return dict(use_multi_threads=np.bool_(use_multi_threads))


def _gradient_ffi_attrs(*, num_tables):
    del num_tables
    return {}


# 5. JVP --------------------------------------------------------------------------------------------
# Both primitives are linear in their float operands and constant in the ids:
#   d map(input, ids, embs) = map(input, ids, d embs);  d gradient(input, grads, ids) = gradient(d grads).
def _jvp(primals, tangents, *, num_tables, use_multi_threads):
    params = dict(num_tables=num_tables, use_multi_threads=use_multi_threads)
    out = map_id_to_embedding_p.bind(*primals, **params)
    t_embs = tangents[1 + num_tables :]
    if all(type(t) is ad.Zero for t in t_embs):
        return out, _compat.zero_tangent(out)
    t_embs = [ad.instantiate_zeros(t) for t in t_embs]
    return out, map_id_to_embedding_p.bind(*primals[: 1 + num_tables], *t_embs, **params)


def _gradient_jvp(primals, tangents, *, num_tables):
    input, grads, *ids = primals  # noqa: A001
    outs = map_id_to_embedding_gradient_p.bind(input, grads, *ids, num_tables=num_tables)
    t = tangents[1]
    if type(t) is ad.Zero:
        return outs, [_compat.zero_tangent(o) for o in outs]
    return outs, map_id_to_embedding_gradient_p.bind(input, t, *ids, num_tables=num_tables)


# 6. Transpose --------------------------------------------------------------------------------------
# map gathers table rows, so its adjoint scatter-adds them back: map^T = gradient, gradient^T = map.
def _transpose(ct, input, *tables, num_tables, use_multi_threads):  # noqa: A002
    del use_multi_threads
    ids, embs = tables[:num_tables], tables[num_tables:]
    assert not ad.is_undefined_primal(input)
    linear = [ad.is_undefined_primal(e) for e in embs]  # tables not differentiated get None
    if type(ct) is ad.Zero:
        return [None] * (1 + num_tables) + [ad.Zero(e.aval) if u else None for e, u in zip(embs, linear)]
    grads = map_id_to_embedding_gradient_p.bind(input, ct, *ids, num_tables=num_tables)
    return [None] * (1 + num_tables) + [g if u else None for g, u in zip(grads, linear)]


def _gradient_transpose(cts, input, grads, *ids, num_tables):  # noqa: A002
    assert ad.is_undefined_primal(grads) and not ad.is_undefined_primal(input)
    if all(type(c) is ad.Zero for c in cts):
        return [None, ad.Zero(grads.aval)] + [None] * num_tables
    cts = [ad.instantiate_zeros(c) for c in cts]
    out = map_id_to_embedding_p.bind(
        input, *ids, *cts, num_tables=num_tables, use_multi_threads=True
    )
    return [None, out] + [None] * num_tables


# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    map_id_to_embedding_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_jvp,
    transpose=_transpose,
)
register_primitive(
    map_id_to_embedding_gradient_p,
    abstract_eval=_gradient_abstract_eval,
    in_core_ndims=_gradient_in_core_ndims,
    ffi_attrs=_gradient_ffi_attrs,
    jvp=_gradient_jvp,
    transpose=_gradient_transpose,
)
