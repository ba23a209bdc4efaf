// fused_gather_embeddings_by_input: the bounds rule shared by the CPU handler and (later) the CUDA
// kernels. Semantics: spec/monolith_ops.md section 10.
//
// Table m's row j is the dims[m] elements of the flat fused buffer starting at offsets_m[j]. The
// original reads and writes out of bounds for a bad offset; jax_distops checks every offset: the
// CPU handlers fail with an error naming the table, the position and the value.
#ifndef JAX_DISTOPS_CSRC_FUSED_GATHER_EMBEDDINGS_BY_INPUT_H_
#define JAX_DISTOPS_CSRC_FUSED_GATHER_EMBEDDINGS_BY_INPUT_H_

#include <cstdint>

#include "sharding.h"

namespace jax_distops {

// Whether the row [offset, offset + dim) lies inside a fused buffer of `size` elements (dim >= 1).
DISTOPS_HD bool FusedRowInBounds(int64_t offset, int64_t dim, int64_t size) {
  return offset >= 0 && offset <= size - dim;
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_FUSED_GATHER_EMBEDDINGS_BY_INPUT_H_
