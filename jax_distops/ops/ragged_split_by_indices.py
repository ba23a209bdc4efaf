"""``ragged_split_by_indices``: split the values of a ragged tensor by an index per value, keeping
each value's row (Monolith's ``MonolithRaggedSplitByIndices``).

Semantics: ``spec/monolith_ops.md`` section 4. Static shapes: the S ragged pieces are laid out
split-major in one ``[N]`` values array (and one positions array), with ``[S, R+1]`` row splits
that are absolute offsets into it; ``RaggedSplitResult.to_ragged_list()`` gives Monolith's two lists.
Kernel: ``csrc/ragged_split_by_indices_cpu.cc``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from .. import _checks
from .._primitive import new_primitive, register_primitive
from .._types import Ragged

_OP = "ragged_split_by_indices"

# 1. Primitive --------------------------------------------------------------------------------------
# ragged_split_by_indices_p(indices, values, row_splits) -> (values, positions, row_splits)
ragged_split_by_indices_p = new_primitive(_OP)


class RaggedSplitResult(NamedTuple):
    """Result of :func:`ragged_split_by_indices`.

    Attributes:
      values: ``[N]``, ``num.values``' dtype: split 0's values, then split 1's, ...; within a split
        in their original order (so row by row).
      positions: ``[N]``, ``num.row_splits``' dtype: the index into ``num.values`` of each value.
      row_splits: ``[S, R+1]``, ``num.row_splits``' dtype: row ``r`` of split ``s`` is
        ``values[row_splits[s, r]:row_splits[s, r + 1]]`` (absolute offsets into ``values``).
    """

    values: jax.Array
    positions: jax.Array
    row_splits: jax.Array

    def to_ragged_list(self) -> tuple[list[Ragged], list[Ragged]]:
        """Monolith's outputs: S ragged values and S ragged positions, with row splits from 0.

        Concrete, unbatched results only (the pieces have data-dependent sizes).
        """
        what = "RaggedSplitResult.to_ragged_list()"
        values = _checks.concrete(self.values, _OP, what)
        positions = _checks.concrete(self.positions, _OP, what)
        splits = _checks.concrete(self.row_splits, _OP, what)
        if splits.ndim != 2:
            raise ValueError(f"{_OP}: {what} needs an unbatched result")
        value_list, position_list = [], []
        for row in splits:
            start, end = int(row[0]), int(row[-1])
            relative = row - row[0]
            value_list.append(Ragged(values[start:end], relative))
            position_list.append(Ragged(positions[start:end], relative))
        return value_list, position_list


_VALUE_DTYPES = _checks.ID_DTYPES + tuple(np.dtype(t) for t in (np.float32, np.float64))


# 2. Public function --------------------------------------------------------------------------------
def ragged_split_by_indices(indices, num: Ragged, num_splits: int) -> RaggedSplitResult:
    """Splits the values of ragged ``num`` by ``indices``, keeping rows and order.

    Value ``i`` of ``num`` goes to split ``indices[i]``, in its row. Row ``r`` of split ``s`` holds the
    values of row ``r`` of ``num`` whose index is ``s``, in their original order.

    Example (spec 4.2)::

        num = Ragged(jnp.array([4, 3, 2, 1]), jnp.array([0, 0, 0, 3, 4, 4, 4]))
        r = ragged_split_by_indices(jnp.array([0, 1, 0, 1]), num, 2)
        # r.values == [4, 2, 3, 1], r.positions == [0, 2, 1, 3]
        # r.row_splits == [[0, 0, 0, 2, 2, 2, 2], [2, 2, 2, 3, 4, 4, 4]]
        # split 0: [[], [], [4, 2], [], [], []]; split 1: [[], [], [3], [1], [], []]

    Args:
      indices: ``int32`` or ``int64`` ``[N]``, each in ``[0, num_splits)``.
      num: :class:`jax_distops.Ragged` with ``values`` ``[N]`` (int32, int64, uint32, uint64,
        float32 or float64) and ``row_splits`` ``[R+1]`` (int32 or int64; starting at 0,
        non-decreasing, ending at N).
      num_splits: static int S >= 1.

    Returns:
      :class:`RaggedSplitResult` ``(values [N], positions [N], row_splits [S, R+1])``.

    Raises:
      ValueError / TypeError: (at trace time) bad ranks, lengths, dtypes or ``num_splits``.
      jax.errors.JaxRuntimeError: (when computed, CPU) an index outside ``[0, num_splits)`` or
        invalid ``num.row_splits``.

    Not differentiable (no gradient in Monolith). ``jax.vmap`` runs one call per batch; a vmapped
    ``num`` is a ``Ragged`` of batched ``values`` / ``row_splits`` (mapped or not independently).
    """
    op = _OP
    if not isinstance(num, Ragged):
        raise TypeError(f"{op}: num must be a jax_distops.Ragged, got {type(num).__name__}")
    indices = _checks.as_array(indices, op, "indices", _checks.INDEX_DTYPES)
    values = _checks.as_array(num.values, op, "num.values", _VALUE_DTYPES)
    row_splits = _checks.as_array(num.row_splits, op, "num.row_splits", _checks.INDEX_DTYPES)
    num_splits = _checks.static_int(num_splits, op, "num_splits", minimum=1)
    _checks.check_int32_count(num_splits, op, "num_splits")
    for name, x in (("indices", indices), ("num.values", values), ("num.row_splits", row_splits)):
        if x.ndim != 1:
            raise ValueError(f"{op}: {name} must be 1-D, got shape {x.shape}")
    if values.shape[0] != indices.shape[0]:
        raise ValueError(
            f"{op}: num.values has {values.shape[0]} values but indices has {indices.shape[0]}"
        )
    if row_splits.shape[0] < 1:
        raise ValueError(f"{op}: num.row_splits must have at least one entry (R + 1 for R rows)")
    _checks.check_int32_count(indices.shape[0], op, "the number of values")
    out = ragged_split_by_indices_p.bind(indices, values, row_splits, num_splits=num_splits)
    return RaggedSplitResult(*out)


# 3. Abstract eval ----------------------------------------------------------------------------------
def _abstract_eval(indices, values, row_splits, *, num_splits):
    del indices
    n, rows_plus_one = values.shape[0], row_splits.shape[0]
    return [
        ((n,), values.dtype),
        ((n,), row_splits.dtype),
        ((num_splits, rows_plus_one), row_splits.dtype),
    ]


def _in_core_ndims(num_operands, *, num_splits):
    del num_splits
    return (1,) * num_operands


# 4. Lowering ---------------------------------------------------------------------------------------
def _ffi_attrs(*, num_splits):
    return dict(num_splits=np.int64(num_splits))


# 5. JVP / 6. transpose: none (Monolith defines no gradient; integer positions and splits).
# 7. Batching: the generic leading-batch-dims rule of _primitive (one custom call per batch).

# 8. Registration -----------------------------------------------------------------------------------
register_primitive(
    ragged_split_by_indices_p,
    abstract_eval=_abstract_eval,
    in_core_ndims=_in_core_ndims,
    ffi_attrs=_ffi_attrs,
)
