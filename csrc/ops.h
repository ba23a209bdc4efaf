// The list of jax_distops ops with a CPU handler: X(python_name, HandlerSymbol). The nanobind module
// turns it into its registrations() dict; adding an op means adding one line here.
#ifndef JAX_DISTOPS_CSRC_OPS_H_
#define JAX_DISTOPS_CSRC_OPS_H_

#define DISTOPS_CPU_OPS(X)                                                           \
  X(fused_gather_embeddings_by_input, FusedGatherEmbeddingsByInput)                  \
  X(fused_gather_embeddings_by_input_gradient, FusedGatherEmbeddingsByInputGradient) \
  X(fused_reorder_by_indices, FusedReorderByIndices)                                 \
  X(gather_embeddings_by_ids_gradient_back_prop, GatherEmbeddingsByIdsGradient)      \
  X(gather_embeddings_by_input, GatherEmbeddingsByInput)                             \
  X(gather_embeddings_by_mapping, GatherEmbeddingsByMapping)                         \
  X(map_id_to_embedding, MapIdToEmbedding)                                           \
  X(map_id_to_embedding_gradient_back_prop, MapIdToEmbeddingGradient)                \
  X(ragged_split_by_indices, RaggedSplitByIndices)                                   \
  X(reorder_by_indices, ReorderByIndices)                                            \
  X(split_by_indices, SplitByIndices)                                                \
  X(split_by_indices_gradient, SplitByIndicesGradient)

#endif  // JAX_DISTOPS_CSRC_OPS_H_
