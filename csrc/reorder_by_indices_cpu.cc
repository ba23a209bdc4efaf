// reorder_by_indices, CPU handler. Semantics: spec/monolith_ops.md section 2.
//
// Per batch element: one pass dedups the rows on their key (the value of a 1-D input, the first
// column of a 2-D one) with the shared hash index, keeping each key's first occurrence and that
// row's shard id, and counts kept rows per shard (validating every shard id). A second pass writes
// the kept rows shard by shard, filling each shard's block from its end: within a shard the rows
// come out in reverse first-occurrence order, as in Monolith. Batch elements run in parallel.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "ffi_helpers.h"
#include "id_index.h"
#include "partition.h"

namespace jax_distops {
namespace {

constexpr const char* kReorderOp = "reorder_by_indices";
constexpr int64_t kPrefetchDistance = 16;

// The dedup key of a row's first element, as 64 bits. Floats compare as values: +0.0 and -0.0 are
// one key; NaN has no key (every NaN row is distinct, as in Monolith's hash set).
template <typename T>
bool RowKey(T v, uint64_t* key) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(v)) return false;
    if (v == T{0}) v = T{0};
    if constexpr (sizeof(T) == 4) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      *key = bits;
    } else {
      std::memcpy(key, &v, 8);
    }
  } else {
    *key = static_cast<uint64_t>(v);
  }
  return true;
}

struct WorkerScratch {
  std::vector<uint8_t> kept;     // kept[i]: row i is the first occurrence of its key
  std::vector<int64_t> cursor;   // per shard: end of the not yet written part of its block
};

// Row dtypes: the id types and the float types.
#define DISTOPS_REORDER_TYPES(X) DISTOPS_ID_TYPES(X) X(F32, float) X(F64, double)

template <typename T, typename Index>
ffi::Error ReorderImpl(TypeTag<Index>, ffi::ThreadPool& pool, const ffi::AnyBuffer& input, const ffi::AnyBuffer& shard_ids,
                       ffi::Result<ffi::AnyBuffer>& output, int32_t* shard_sizes, int32_t* num_unique,
                       int64_t num_shards, int64_t row_ndim) {
  const char* op = kReorderOp;
  const auto out_dims = output->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 1 + row_ndim, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t n = out_dims[split.batch_ndim];
  const int64_t width = n > 0 ? split.core_size / n : 0;  // elements per row
  FFI_ASSIGN_OR_RETURN(int64_t input_stride,
                       OperandBatchStride(input.dimensions(), 1 + row_ndim, batch_dims, op, "input"));
  FFI_ASSIGN_OR_RETURN(int64_t shard_stride,
                       OperandBatchStride(shard_ids.dimensions(), 1, batch_dims, op, "shard_ids"));
  if (shard_ids.dimensions().back() != n) {
    return InvalidArgument(op, "shard_ids and input have different numbers of rows");
  }
  if (row_ndim == 1 && n > 0 && width < 1) return InvalidArgument(op, "input rows are empty");

  const int64_t workers = std::min<int64_t>(split.batch, std::max<int64_t>(1, pool.num_threads()));
  std::vector<WorkerScratch> scratch(workers);
  return ParallelFor(&pool, split.batch, workers, [&](int64_t b, int64_t worker) -> ffi::Error {
    const T* in = input.typed_data<T>() + b * input_stride;
    const Index* shard = shard_ids.typed_data<Index>() + b * shard_stride;
    T* out = output->typed_data<T>() + b * split.core_size;
    WorkerScratch& w = scratch[worker];
    IndexLease index;  // this thread's hash index (id_index.h)
    w.kept.assign(n, 0);
    w.cursor.assign(num_shards, 0);
    // Pass 1: first occurrences and kept rows per shard (cursor holds the counts meanwhile).
    int32_t unique = 0, indexed = 0;  // kept rows; keys in the index (NaN rows have none)
    const int64_t sample = std::min(n, FirstSizing(n));
    index->Reset(sample);
    for (int64_t i = 0; i < n; ++i) {
      if (i == sample) index->Reserve(ExpectedUnique(indexed, sample, n));
      uint64_t ahead;  // prefetch the slot of a row further on: large indexes miss the cache
      if (i + kPrefetchDistance < n && RowKey(in[(i + kPrefetchDistance) * width], &ahead)) {
        __builtin_prefetch(index->SlotAddress(ahead));
      }
      const int64_t s = static_cast<int64_t>(shard[i]);
      if (s < 0 || s >= num_shards) {
        return IndexOutOfRange(op, "shard_ids", s, b * n + i, num_shards);
      }
      uint64_t key;
      bool inserted = true;
      if (RowKey(in[i * width], &key)) {
        index->FindOrInsert(key, indexed, &inserted);
        indexed += inserted;
      }
      if (!inserted) continue;
      ++unique;
      w.kept[i] = 1;
      ++w.cursor[s];
    }
    // Block ends, shard-major; shard sizes.
    int64_t end = 0;
    for (int64_t s = 0; s < num_shards; ++s) {
      shard_sizes[b * num_shards + s] = static_cast<int32_t>(w.cursor[s]);
      end += w.cursor[s];
      w.cursor[s] = end;
    }
    num_unique[b] = unique;
    // Pass 2: each shard's block filled from its end, so it reads in reverse first-occurrence order.
    for (int64_t i = 0; i < n; ++i) {
      if (!w.kept[i]) continue;
      const int64_t dest = --w.cursor[shard[i]];
      std::copy(in + i * width, in + (i + 1) * width, out + dest * width);
    }
    std::fill(out + unique * width, out + n * width, T{0});
    return ffi::Error::Success();
  });
}

template <typename Index>
ffi::Error ReorderIndexDispatch(ffi::ThreadPool& pool, const ffi::AnyBuffer& input,
                                const ffi::AnyBuffer& shard_ids, ffi::Result<ffi::AnyBuffer>& output,
                                int32_t* shard_sizes, int32_t* num_unique, int64_t num_shards,
                                int64_t row_ndim) {
  if (input.element_type() != output->element_type()) {
    return InvalidArgument(kReorderOp, "input and output dtypes differ");
  }
  DISTOPS_DTYPE_DISPATCH(DISTOPS_REORDER_TYPES, input.element_type(), kReorderOp, ReorderImpl,
                         TypeTag<Index>{}, pool, input, shard_ids, output, shard_sizes, num_unique,
                         num_shards, row_ndim);
}

ffi::Error ReorderDispatch(ffi::ThreadPool pool, ffi::AnyBuffer input, ffi::AnyBuffer shard_ids,
                           ffi::Result<ffi::AnyBuffer> output, ffi::Result<ffi::Buffer<ffi::S32>> shard_sizes,
                           ffi::Result<ffi::Buffer<ffi::S32>> num_unique, int64_t num_shards,
                           int64_t row_ndim) {
  return CatchAll(kReorderOp, [&]() -> ffi::Error {
    if (num_shards < 1 || num_shards > std::numeric_limits<int32_t>::max()) {
      return InvalidArgument(kReorderOp, "num_of_shards must be in [1, 2^31)");
    }
    if (row_ndim != 0 && row_ndim != 1) return InvalidArgument(kReorderOp, "input must be 1-D or 2-D");
    DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, shard_ids.element_type(), kReorderOp,
                           ReorderIndexDispatch, pool, input, shard_ids, output,
                           shard_sizes->typed_data(), num_unique->typed_data(), num_shards, row_ndim);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReorderByIndices, ReorderDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // input [*batch, N] or [*batch, N, E]
                                  .Arg<ffi::AnyBuffer>()          // shard_ids [*batch, N]
                                  .Ret<ffi::AnyBuffer>()          // output, input's shape
                                  .Ret<ffi::Buffer<ffi::S32>>()   // shard_sizes [*batch, S]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // num_unique [*batch]
                                  .Attr<int64_t>("num_shards")    // num_of_shards S
                                  .Attr<int64_t>("row_ndim"));    // 0: 1-D input, 1: 2-D input

}  // namespace jax_distops
