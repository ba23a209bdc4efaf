"""jax_distops: Monolith's sparse-id distribution ops as JAX primitives with XLA FFI kernels.

Route feature ids to embedding-table shards, dedup them per table, lay out fused embedding buffers,
gather embeddings back and pool them -- inside ``jax.jit``, ``jax.vmap``, ``jax.grad`` and
``shard_map``. See README.md for the op list and the deviations from Monolith.
"""

from . import _compat  # noqa: F401  (version check first)
from ._ffi import has_cuda_support
from ._types import Ragged
from .ops.fused_gather_embeddings_by_input import (
    fused_gather_embeddings_by_input,
    fused_gather_embeddings_by_input_gradient,
)
from .ops.fused_reorder_by_indices import FusedReorderResult, fused_reorder_by_indices
from .ops.gather_embeddings_by_input import (
    GatherResult,
    gather_embeddings_by_ids_gradient_back_prop,
    gather_embeddings_by_input,
)
from .ops.map_id_to_embedding import map_id_to_embedding, map_id_to_embedding_gradient_back_prop
from .ops.ragged_split_by_indices import RaggedSplitResult, ragged_split_by_indices
from .ops.reorder_by_indices import ReorderResult, reorder_by_indices
from .ops.split_by_indices import SplitResult, split_by_indices, split_by_indices_gradient

__version__ = "0.1.0"

__all__ = [
    "FusedReorderResult",
    "GatherResult",
    "Ragged",
    "RaggedSplitResult",
    "ReorderResult",
    "SplitResult",
    "fused_gather_embeddings_by_input",
    "fused_gather_embeddings_by_input_gradient",
    "fused_reorder_by_indices",
    "gather_embeddings_by_ids_gradient_back_prop",
    "gather_embeddings_by_input",
    "has_cuda_support",
    "map_id_to_embedding",
    "map_id_to_embedding_gradient_back_prop",
    "ragged_split_by_indices",
    "reorder_by_indices",
    "split_by_indices",
    "split_by_indices_gradient",
]
