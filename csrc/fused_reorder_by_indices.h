// fused_reorder_by_indices: attribute validation and the fused block layout, shared by the CPU handler
// and (later) the CUDA handler. Semantics: spec/monolith_ops.md section 3.
//
// For M tables and S shards, block (n, m) holds B[n][m], the distinct ids of table m whose shard is n,
// in first-occurrence order. Blocks are laid out shard-major, table-minor, both in the id output and in
// the fused embedding buffer (where block (n, m) takes |B[n][m]| * dims[m] floats).
#ifndef JAX_DISTOPS_CSRC_FUSED_REORDER_BY_INDICES_H_
#define JAX_DISTOPS_CSRC_FUSED_REORDER_BY_INDICES_H_

#include <cstdint>

#include "sharding.h"

namespace jax_distops {

// From the block sizes `counts[n * M + m]`, computes where each block starts in the id output
// (`id_base`) and in the fused embedding buffer (`emb_base`), the per-shard totals, the number of
// unique ids and the fused buffer length E_tot. 64-bit sums: the caller checks E_tot against int32.
// XLA-free and host/device, so CUDA kernels can include it.
DISTOPS_HD void FusedBlockLayout(const int32_t* counts, const int64_t* dims, int64_t num_shards,
                                 int64_t num_tables, int64_t* id_base, int64_t* emb_base,
                                 int32_t* shard_sizes, int64_t* num_unique, int64_t* emb_total) {
  int64_t ids = 0, floats = 0;
  for (int64_t n = 0; n < num_shards; ++n) {
    int64_t shard_start = ids;
    for (int64_t m = 0; m < num_tables; ++m) {
      int64_t c = counts[n * num_tables + m];
      id_base[n * num_tables + m] = ids;
      emb_base[n * num_tables + m] = floats;
      ids += c;
      floats += c * dims[m];
    }
    // A shard holds at most the total number of ids, which the wrapper keeps below 2^31.
    shard_sizes[n] = static_cast<int32_t>(ids - shard_start);
  }
  *num_unique = ids;
  *emb_total = floats;
}

}  // namespace jax_distops

// Host-side validation, shared by the CPU and CUDA handlers (.cc files), not by kernels (.cu).
#ifndef __CUDACC__  // host compilers only: CUDA kernel files do not include XLA headers
#include <limits>
#include <string>

#include "ffi_helpers.h"

namespace jax_distops {

inline constexpr const char* kFusedReorderOp = "fused_reorder_by_indices";

// Checks the attributes (the Python wrapper checks them too; this guards direct `bind` calls).
inline ffi::Error ValidateFusedReorderAttrs(int64_t num_shards, int64_t first_shard,
                                            ffi::Span<const int64_t> dims, size_t num_tables) {
  const char* op = kFusedReorderOp;
  if (num_shards < 1 || num_shards > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument(op, "num_of_shards must be in [1, 2^31), got " + std::to_string(num_shards));
  }
  if (first_shard != 0 && first_shard != 1) {
    return InvalidArgument(op, "first_shard must be 0 or 1, got " + std::to_string(first_shard));
  }
  if (num_shards - first_shard < 1) {
    return InvalidArgument(op, "rank0_empty_shard with num_of_shards=1 leaves no shard");
  }
  if (dims.size() != num_tables) {
    return InvalidArgument(op, "dim_sizes has " + std::to_string(dims.size()) + " entries for " +
                                   std::to_string(num_tables) + " tables");
  }
  for (int64_t d : dims) {
    if (d < 1 || d > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument(op, "dim_sizes entries must be in [1, 2^31), got " + std::to_string(d));
    }
  }
  return ffi::Error::Success();
}

}  // namespace jax_distops
#endif  // host-side validation

#endif  // JAX_DISTOPS_CSRC_FUSED_REORDER_BY_INDICES_H_
