"""Shared value types: the ``Ragged`` pytree used by the ragged ops."""

from __future__ import annotations

from typing import Any, NamedTuple


class Ragged(NamedTuple):
    """A ragged array with numpy/TF ``RaggedTensor`` semantics (a NamedTuple, hence a pytree).

    Row ``i`` is ``values[row_splits[i]:row_splits[i + 1]]``. ``values`` may itself be a ``Ragged``
    (nested ragged dimensions). Padded ``row_splits`` (static-shape outputs) repeat their last valid
    value, so padded rows are empty and the value stays valid.

    Attributes:
      values: the flat values (an array, or a ``Ragged`` for nested ragged dimensions).
      row_splits: 1-D int32/int64, non-decreasing, starting at 0.
    """

    values: Any
    row_splits: Any

    @property
    def nrows(self) -> int:
        """Number of rows (static)."""
        return self.row_splits.shape[-1] - 1

    def row_lengths(self):
        """Length of every row: ``row_splits[1:] - row_splits[:-1]``."""
        return self.row_splits[..., 1:] - self.row_splits[..., :-1]
