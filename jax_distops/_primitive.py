"""The one helper that turns an op description into a complete JAX primitive.

Every jax_distops op is a primitive whose operands have a fixed *core* rank (e.g. 1 for an id vector);
any dimensions in front of the core are batch dimensions, and the FFI handler loops over them (in
parallel) in a single custom call. That convention gives every op the same pieces, built here once:

* bind: operands are first cast to vary along the same ``shard_map`` axes (a replicated table next
  to per-device ids), so outputs are typed varying and gradients of replicated operands are summed;
* abstract eval: the op describes its core outputs; the helper strips and re-adds the batch
  dimensions and derives the output avals from an operand's aval with ``.update`` (keeping
  shard_map's varying-axes type);
* impl: compile-and-run the primitive alone (eager mode);
* lowering: ``jax.ffi.ffi_lowering`` to the target ``jax_distops_<op>`` on each platform, with the
  op's typed attributes; platforms without a kernel raise an error that says what to do;
* batching (vmap): move the mapped axis to the front, broadcast operands so that each is either
  fully batched or not batched at all, and bind the same primitive again -- one custom call per batch;
* JVP / transpose when the op gives them (a transpose's cotangent for an operand shared by a vmapped
  batch is summed over the batch here); ops with only integer outputs get symbolic-zero tangents.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, mlir

from . import _compat, _ffi

# (shape, dtype) of one core output, as returned by an op's abstract eval.
CoreAval = tuple[tuple[int, ...], Any]

_PLATFORMS = ("cpu", "cuda", "rocm")


class _Primitive(Primitive):
    """A primitive whose operands are first made to vary along the same ``shard_map`` axes
    (:func:`_compat.align_varying`): its outputs then carry the right varying-axes type, and the
    gradient of an operand replicated across devices is summed over them. Every bind goes
    through here, including those of the JVP, transpose and batching rules."""

    def bind(self, *args, **params):
        return super().bind(*_compat.align_varying(args), **params)


def new_primitive(op: str, *, multiple_results: bool = True) -> Primitive:
    """Creates the primitive of ``op`` (registered later by :func:`register_primitive`)."""
    prim = _Primitive(op)
    prim.multiple_results = multiple_results
    return prim


def register_primitive(
    prim: Primitive,
    *,
    abstract_eval: Callable[..., Sequence[CoreAval]],
    in_core_ndims: Callable[..., Sequence[int]],
    ffi_attrs: Callable[..., dict[str, Any]] | None = None,
    jvp: Callable | None = None,
    transpose: Callable | None = None,
    differentiable: bool = True,
) -> None:
    """Gives ``prim`` its abstract eval, impl, lowerings, batching rule and AD rules.

    Args:
      prim: from :func:`new_primitive`; its name is the op name and the FFI target suffix.
      abstract_eval: ``(*core_avals, **params) -> [(shape, dtype), ...]`` for the unbatched op
        (a one-element list for a single-result primitive).
      in_core_ndims: ``(num_operands, **params) -> ranks`` of the operands without batch dims.
      ffi_attrs: ``(**params) -> attributes`` as typed numpy scalars/arrays for the FFI handler
        (params stay hashable tuples/ints; conversion happens here, at lowering). Default: params.
      jvp: ``(primals, tangents, **params) -> (primals_out, tangents_out)``.
      transpose: ``(cotangents, *operands, **params) -> cotangent per operand``.
      differentiable: False for ops whose outputs are all integers: their tangents are symbolic
        zeros, so jax.grad / jax.jvp through them never fails.
    """
    op = prim.name
    prim.def_impl(_compat.apply_primitive(prim))
    prim.def_abstract_eval(
        functools.partial(
            _batched_abstract_eval, op, abstract_eval, in_core_ndims, prim.multiple_results
        )
    )
    for platform in _PLATFORMS:
        mlir.register_lowering(
            prim, functools.partial(_lowering, op, ffi_attrs, platform), platform=platform
        )
    _compat.register_batching_rule(prim, functools.partial(_batching_rule, prim, in_core_ndims))
    if jvp is not None:
        ad.primitive_jvps[prim] = jvp
    elif not differentiable:
        ad.primitive_jvps[prim] = functools.partial(_zero_jvp, prim)
    if transpose is not None:
        ad.primitive_transposes[prim] = functools.partial(_shared_operand_transpose, transpose)


def batch_shape(op: str, avals: Sequence[Any], core_ndims: Sequence[int]) -> tuple[int, ...]:
    """The common leading batch shape of operands (each either fully batched or not at all)."""
    batch: tuple[int, ...] = ()
    for i, (aval, core) in enumerate(zip(avals, core_ndims, strict=True)):
        if aval.ndim < core:
            raise ValueError(f"{op}: operand {i} has rank {aval.ndim}, expected at least {core}")
        lead = tuple(aval.shape[: aval.ndim - core])
        if lead and batch and lead != batch:
            raise ValueError(f"{op}: operands have different batch dimensions {batch} and {lead}")
        batch = batch or lead
    return batch


def _batched_abstract_eval(op, core_eval, in_core_ndims, multiple_results, /, *avals, **params):
    core_ndims = in_core_ndims(len(avals), **params)
    batch = batch_shape(op, avals, core_ndims)
    core_avals = [a.update(shape=a.shape[a.ndim - c :]) for a, c in zip(avals, core_ndims)]
    outs = core_eval(*core_avals, **params)
    # Derive outputs from the widest operand's aval so shard_map's varying-axes type survives.
    ref = max(avals, key=lambda a: a.ndim)
    out_avals = [
        ref.update(shape=batch + tuple(shape), dtype=jnp.dtype(dtype), weak_type=False)
        for shape, dtype in outs
    ]
    return out_avals if multiple_results else out_avals[0]


def _lowering(op, ffi_attrs, platform, ctx, /, *args, **params):
    target = _ffi.require_target(op, platform)
    attrs = ffi_attrs(**params) if ffi_attrs is not None else params
    # XLA replaces a call whose results all have zero elements by a constant, which would skip the
    # kernel's checks of its input data (e.g. ids missing from an empty map); such calls are kept by
    # marking them side-effecting (they move no data, so this costs nothing).
    keep = all(np.prod(a.shape) == 0 for a in ctx.avals_out) and any(
        np.prod(a.shape) > 0 for a in ctx.avals_in
    )
    # An operand without elements is passed as a constant of its shape (the kernel reads only its
    # shape), not as the value it came from. Inside shard_map, a per-device operand of size 0 that
    # reaches the call from the shard_map's arguments breaks XLA's Shardy passes: jax 0.10.2 fails
    # to compile when all of several operands are empty ("'func.call' op expected at least one
    # operand of @xla.sdy.manual_computation_body to be produced by a xla.sdy.GlobalToLocalShape"),
    # jax 0.11.2 segfaults when some are (in ManualComputationUnusedInputsPattern; jnp code that
    # uses an empty shard_map argument crashes the same way there). Unused, they are dropped.
    args = [
        mlir.ir_constant(np.zeros(a.shape, a.dtype)) if np.prod(a.shape) == 0 else x
        for x, a in zip(args, ctx.avals_in)
    ]
    return jax.ffi.ffi_lowering(target, has_side_effect=keep)(ctx, *args, **attrs)


def _batching_rule(prim, in_core_ndims, args, dims, /, **params):
    # vmap rule for "leading dims are batch dims" ops. After moving the new mapped axis to the front,
    # operands carry (new axis?) + (batch dims of earlier vmaps?) + core dims. The handler accepts an
    # operand either with every batch dim or with none (shared across the batch, nothing copied), so
    # operands that have some but not all batch dims are broadcast to the full batch shape.
    if all(d is None for d in dims):  # vmap with axis_size and nothing mapped: nothing to batch
        outs = prim.bind(*args, **params)
        return outs, ([None] * len(outs) if prim.multiple_results else None)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    core_ndims = in_core_ndims(len(args), **params)
    moved = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    inner = ()  # batch dims from earlier vmaps, read off any operand that has them
    for a, d, core in zip(moved, dims, core_ndims):
        lead = a.shape[(d is not None) : a.ndim - core]
        inner = inner or tuple(lead)
    full = (size, *inner)
    operands = []
    for a, d, core in zip(moved, dims, core_ndims):
        if d is None and a.ndim == core:
            operands.append(a)  # unbatched at every level: shared by the whole batch
            continue
        if d is None:
            a = a[None]
        if a.ndim - core < len(full):  # has the new axis but not the earlier ones
            a = jnp.expand_dims(a, tuple(range(1, 1 + len(inner))))
        operands.append(jnp.broadcast_to(a, full + a.shape[a.ndim - core :]))
    outs = prim.bind(*operands, **params)
    if prim.multiple_results:
        return outs, [0] * len(outs)
    return outs, 0


def _shared_operand_transpose(transpose, cts, /, *operands, **params):
    # An operand that the batching rule left shared by the whole batch (vmap with in_axes=None: it
    # has no batch dims, e.g. the parameters of a per-example model) fed every batch element, so
    # its cotangent is the sum of theirs: the op's transpose returns one per batch element, summed
    # here over the leading batch dims (the transpose of the broadcast the kernel did implicitly).
    out = transpose(cts, *operands, **params)
    summed = []
    for ct, x in zip(out, operands, strict=True):
        if ad.is_undefined_primal(x) and ct is not None and type(ct) is not ad.Zero:
            extra = ct.ndim - x.aval.ndim
            if extra > 0:  # bfloat16 summed in float32 and rounded once, as the kernels do
                narrow = jnp.issubdtype(ct.dtype, jnp.floating) and jnp.finfo(ct.dtype).bits < 32
                acc = jnp.float32 if narrow else ct.dtype
                ct = jnp.sum(ct, axis=tuple(range(extra)), dtype=acc).astype(ct.dtype)
        summed.append(ct)
    return summed


def _zero_jvp(prim, primals, tangents, /, **params):
    del tangents
    outs = prim.bind(*primals, **params)
    if prim.multiple_results:
        return outs, [_compat.zero_tangent(o) for o in outs]
    return outs, _compat.zero_tangent(outs)
