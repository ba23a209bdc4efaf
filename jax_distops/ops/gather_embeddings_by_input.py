"""``gather_embeddings_by_input``: look ids up in one (ids, embeddings) table and return the rows plus
the row index of every id (Monolith's ``MonolithGatherEmbeddingsByInput``), and its gradient, which
sums gradients back by that index without hashing (``MonolithGatherEmbeddingsByInputGradient``).

Semantics: ``spec/monolith_ops.md`` section 9; deviations (index_mapping checked, deterministic
sums): ``DESIGN.md`` section 2. Kernel: ``csrc/gather_embeddings_by_input_cpu.cc``
(``csrc/lookup.h``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from .. import _checks, _compat
from .._primitive import new_primitive, register_primitive

_OP = "gather_embeddings_by_input"
_GRAD_OP = "gather_embeddings_by_ids_gradient_back_prop"
_BY_MAPPING_OP = "gather_embeddings_by_mapping"

# 1. Primitives -------------------------------------------------------------------------------------
# gather_embeddings_by_input_p(ids [M], embeddings [M, D], input [T]) -> (output [T, D], mapping [T]).
# gather_embeddings_by_ids_gradient_p(grads [T, D], mapping [T]) -> [M, D]: scatter-add by mapping.
# gather_embeddings_by_mapping_p(table [M, D], mapping [T]) -> [T, D]: gather by mapping.
# The last two are linear and each other's transpose; the forward's JVP is the gather by mapping,
# so jax.grad's backward pass is the gradient op, driven by the forward's mapping (no hashing).
gather_embeddings_by_input_p = new_primitive(_OP)
gather_embeddings_by_ids_gradient_p = new_primitive(_GRAD_OP, multiple_results=False)
gather_embeddings_by_mapping_p = new_primitive(_BY_MAPPING_OP, multiple_results=False)


class GatherResult(NamedTuple):
    """Result of :func:`gather_embeddings_by_input`.

    Attributes:
      output: ``[*input.shape, D]``, the embedding row of every input id.
      index_mapping: ``[*input.shape]``, the row of ``embeddings`` each id maps to; int64 when
        ``jax_enable_x64`` is on (as in Monolith), int32 otherwise.
    """

    output: jax.Array
    index_mapping: jax.Array


# 2. Public functions -------------------------------------------------------------------------------
def gather_embeddings_by_input(
    ids: jax.typing.ArrayLike,
    embeddings: jax.typing.ArrayLike,
    input: jax.typing.ArrayLike,  # noqa: A002  (Monolith's name)
    use_multi_threads: bool = False,
) -> GatherResult:
    """Replaces every id of ``input`` by its row of ``embeddings`` and records the row's index.

    Row ``j`` of ``embeddings`` is the embedding of ``ids[j]``; for an id that appears more than
    once, its first row wins. (Monolith's docstring calls ``input`` int32 positions; it holds ids.)

    Example (spec 9.6)::

        r = gather_embeddings_by_input(jnp.array([1, 2, 3]),
                                       jnp.array([[1., 1.], [2., 2.], [3., 3.]]),
                                       jnp.array([1, 3, 2, 3]))
        # r.output == [[1, 1], [3, 3], [2, 2], [3, 3]];  r.index_mapping == [0, 2, 1, 2]

    Args:
      ids: ``[M]`` ids: int32, int64, uint32 or uint64, the dtype of ``input``.
      embeddings: ``[M, D]`` of float32, float64 or bfloat16.
      input: ids of any shape, to look up.
      use_multi_threads: static bool (Monolith's default False): False runs the kernel on the
        calling thread only; True uses XLA's intra-op threads. The result is the same.

    Returns:
      :class:`GatherResult` ``(output, index_mapping)``.

    Raises:
      ValueError / TypeError: (at trace time) ranks or dtypes that do not match; ``embeddings``
        without one row per id ("See unmatched embedding dim ... and id dim ...").
      jax.errors.JaxRuntimeError: (when computed, CPU) an id of ``input`` not in ``ids``
        ("Unable to map id <id>").

    Differentiable w.r.t. ``embeddings``: the backward pass is
    :func:`gather_embeddings_by_ids_gradient_back_prop` on the forward's ``index_mapping``.
    ``jax.vmap`` over any arguments runs one custom call per batch.
    """
    op = _OP
    input_ = _checks.as_array(input, op, "input", _checks.ID_DTYPES)
    ids = _checks.as_array(ids, op, "ids", _checks.ID_DTYPES)
    embeddings = _checks.as_array(embeddings, op, "embeddings", _checks.FLOAT_DTYPES)
    if ids.ndim != 1:
        raise ValueError(f"{op}: ids must be 1-D, got shape {ids.shape}")
    if ids.dtype != input_.dtype:
        raise TypeError(f"{op}: ids has dtype {ids.dtype} but input has {input_.dtype}")
    if embeddings.ndim != 2:
        raise ValueError(f"{op}: embeddings must be 2-D [M, D], got shape {embeddings.shape}")
    if embeddings.shape[0] != ids.shape[0]:
        raise ValueError(
            f"{op}: See unmatched embedding dim {embeddings.shape[0]} and id dim {ids.shape[0]}"
        )
    _checks.check_int32_count(ids.shape[0], op, "the number of ids")
    if not isinstance(use_multi_threads, bool | np.bool_):
        raise TypeError(f"{op}: use_multi_threads must be a static bool, got {use_multi_threads!r}")
    mapping_dtype = "int64" if _compat.x64_enabled() else "int32"
    output, mapping = gather_embeddings_by_input_p.bind(
        ids,
        embeddings,
        input_.reshape(-1),
        use_multi_threads=bool(use_multi_threads),
        mapping_dtype=mapping_dtype,
    )
    return GatherResult(
        output.reshape(*input_.shape, embeddings.shape[1]), mapping.reshape(input_.shape)
    )


def gather_embeddings_by_ids_gradient_back_prop(
    ids: jax.typing.ArrayLike, grads: jax.typing.ArrayLike, index_mapping: jax.typing.ArrayLike
) -> jax.Array:
    """The gradient of :func:`gather_embeddings_by_input` w.r.t. ``embeddings``.

    ``out[j]`` is the sum of ``grads[k]`` over the positions ``k`` (flattened, in order) with
    ``index_mapping[k] == j``; rows no position maps to are 0. Sums are taken in ``k`` order
    (float32 for bfloat16 grads).

    Args:
      ids: the forward op's ``ids`` (only its length M is used).
      grads: ``[*index_mapping.shape, D]`` of float32, float64 or bfloat16.
      index_mapping: int32 or int64 row indices in ``[0, M)``, e.g. the forward's.

    Returns:
      ``[M, D]`` of ``grads``' dtype. Linear in ``grads``.

    Raises:
      ValueError / TypeError: (at trace time) shapes or dtypes that do not match.
      jax.errors.JaxRuntimeError: (when computed, CPU) an ``index_mapping`` entry outside
        ``[0, M)`` (Monolith: an out-of-bounds write).
    """
    op = _GRAD_OP
    ids = _checks.as_array(ids, op, "ids", _checks.ID_DTYPES)
    if ids.ndim != 1:
        raise ValueError(f"{op}: ids must be 1-D, got shape {ids.shape}")
    grads = _checks.as_array(grads, op, "grads", _checks.FLOAT_DTYPES)
    mapping = _checks.as_array(index_mapping, op, "index_mapping", _checks.INDEX_DTYPES)
    if grads.ndim != mapping.ndim + 1 or grads.shape[:-1] != mapping.shape:
        raise ValueError(
            f"{op}: grads must have shape [*index_mapping.shape, D] = {mapping.shape} + (D,), "
            f"got {grads.shape}"
        )
    width = grads.shape[-1]
    return gather_embeddings_by_ids_gradient_p.bind(
        grads.reshape(mapping.size, width), mapping.reshape(-1), num_rows=ids.shape[0]
    )


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(ids, embeddings, input, *, use_multi_threads, mapping_dtype):  # noqa: A002
    del ids, use_multi_threads
    n = input.shape[0]
    return [((n, embeddings.shape[1]), embeddings.dtype), ((n,), jnp.dtype(mapping_dtype))]


def _gradient_abstract_eval(grads, mapping, *, num_rows):
    del mapping
    return [((num_rows, grads.shape[1]), grads.dtype)]


def _by_mapping_abstract_eval(table, mapping):
    return [((mapping.shape[0], table.shape[1]), table.dtype)]


def _in_core_ndims(num_operands, **params):
    del num_operands, params
    return (1, 2, 1)


def _two_operand_core_ndims(num_operands, **params):  # (rows [.., D], index_mapping)
    del num_operands, params
    return (2, 1)


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, use_multi_threads, mapping_dtype):
    del mapping_dtype  # the handler reads it off its output buffer
    return dict(use_multi_threads=np.bool_(use_multi_threads))


def _no_attrs(**params):
    del params
    return {}


# 5. JVP --------------------------------------------------------------------------------------------
# d output = gather_by_mapping(d embeddings, mapping): the forward's own mapping, so the tangent
# (and, transposed, the gradient) needs no hashing. The two linear primitives are their own JVPs.
def _jvp(primals, tangents, *, use_multi_threads, mapping_dtype):
    output, mapping = gather_embeddings_by_input_p.bind(
        *primals, use_multi_threads=use_multi_threads, mapping_dtype=mapping_dtype
    )
    t = tangents[1]
    if type(t) is ad.Zero:
        t_output = _compat.zero_tangent(output)
    else:
        t_output = gather_embeddings_by_mapping_p.bind(t, mapping)
    return (output, mapping), (t_output, _compat.zero_tangent(mapping))


def _linear_jvp(prim, primals, tangents, /, **params):
    rows, mapping = primals
    out = prim.bind(rows, mapping, **params)
    t = tangents[0]
    if type(t) is ad.Zero:
        return out, _compat.zero_tangent(out)
    return out, prim.bind(t, mapping, **params)


# 6. Transpose --------------------------------------------------------------------------------------
# gather_by_mapping^T = gradient (scatter-add by mapping) and gradient^T = gather_by_mapping. The
# forward is also linear in embeddings (for jax.linear_transpose): its transpose needs the mapping,
# which the forward yields for a zero-width table without moving any row.
def _transpose(cts, ids, embeddings, input, *, use_multi_threads, mapping_dtype):  # noqa: A002
    assert ad.is_undefined_primal(embeddings) and not ad.is_undefined_primal(input)
    ct = cts[0]
    if type(ct) is ad.Zero:
        return [None, ad.Zero(embeddings.aval), None]
    num_rows = embeddings.aval.shape[-2]
    empty = jnp.zeros((*embeddings.aval.shape[:-1], 0), embeddings.aval.dtype)
    _, mapping = gather_embeddings_by_input_p.bind(
        ids, empty, input, use_multi_threads=use_multi_threads, mapping_dtype=mapping_dtype
    )
    return [None, gather_embeddings_by_ids_gradient_p.bind(ct, mapping, num_rows=num_rows), None]


def _gradient_transpose(ct, grads, mapping, *, num_rows):
    assert ad.is_undefined_primal(grads) and not ad.is_undefined_primal(mapping)
    del num_rows
    if type(ct) is ad.Zero:
        return [ad.Zero(grads.aval), None]
    return [gather_embeddings_by_mapping_p.bind(ct, mapping), None]


def _by_mapping_transpose(ct, table, mapping):
    assert ad.is_undefined_primal(table) and not ad.is_undefined_primal(mapping)
    if type(ct) is ad.Zero:
        return [ad.Zero(table.aval), None]
    num_rows = table.aval.shape[-2]
    return [gather_embeddings_by_ids_gradient_p.bind(ct, mapping, num_rows=num_rows), None]


# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    gather_embeddings_by_input_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
    jvp=_jvp,
    transpose=_transpose,
)
register_primitive(
    gather_embeddings_by_ids_gradient_p,
    abstract_eval=_gradient_abstract_eval,
    in_core_ndims=_two_operand_core_ndims,
    ffi_attrs=_no_attrs,
    jvp=functools.partial(_linear_jvp, gather_embeddings_by_ids_gradient_p),
    transpose=_gradient_transpose,
)
register_primitive(
    gather_embeddings_by_mapping_p,
    abstract_eval=_by_mapping_abstract_eval,
    in_core_ndims=_two_operand_core_ndims,
    ffi_attrs=_no_attrs,
    jvp=functools.partial(_linear_jvp, gather_embeddings_by_mapping_p),
    transpose=_by_mapping_transpose,
)
