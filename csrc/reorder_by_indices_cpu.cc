// reorder_by_indices, CPU handler. Semantics: spec/monolith_ops.md section 2.
//
// Phase 1 dedups the rows on their key (the value of a 1-D input, the first column of a 2-D one),
// marking each key's first occurrence; phase 2 (partition.h) groups the kept rows by the shard id
// of that first occurrence, filling each shard's block from its end: within a shard the rows come
// out in reverse first-occurrence order, as in Monolith. Both phases run in parallel.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ffi_helpers.h"
#include "id_index.h"
#include "partition.h"

namespace jax_distops {
namespace {

constexpr const char* kReorderOp = "reorder_by_indices";

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

// Row dtypes: the id types and the float types.
#define DISTOPS_REORDER_TYPES(X) DISTOPS_ID_TYPES(X) X(F32, float) X(F64, double)

// Rows per dedup bucket: its index (~2 x 16 B per distinct key) then fits well inside the core's
// L2 cache. Index groups are prefetched this many rows ahead.
constexpr int64_t kRowsPerBucket = 1 << 14;
constexpr int64_t kMaxBuckets = 256;
constexpr int64_t kPrefetchDistance = 16;
// Rows below which the call runs on the calling thread.
constexpr int64_t kMinRowsForThreads = 1 << 15;

template <typename T, typename Index>
ffi::Error ReorderImpl(TypeTag<Index>, ffi::ThreadPool& pool, const ffi::AnyBuffer& input,
                       const ffi::AnyBuffer& shard_ids, ffi::Result<ffi::AnyBuffer>& output,
                       int32_t* shard_sizes, int32_t* num_unique, int64_t num_shards,
                       int64_t row_ndim) {
  const char* op = kReorderOp;
  const auto out_dims = output->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 1 + row_ndim, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t batch = split.batch, n = out_dims[split.batch_ndim];
  const int64_t width = n > 0 ? split.core_size / n : 0;  // elements per row
  FFI_ASSIGN_OR_RETURN(int64_t input_stride,
                       OperandBatchStride(input.dimensions(), 1 + row_ndim, batch_dims, op, "input"));
  FFI_ASSIGN_OR_RETURN(int64_t shard_stride,
                       OperandBatchStride(shard_ids.dimensions(), 1, batch_dims, op, "shard_ids"));
  if (shard_ids.dimensions().back() != n) {
    return InvalidArgument(op, "shard_ids and input have different numbers of rows");
  }
  if (row_ndim == 1 && n > 0 && width < 1) return InvalidArgument(op, "input rows are empty");
  const T* in = input.typed_data<T>();
  const Index* shards = shard_ids.typed_data<Index>();
  T* out = output->typed_data<T>();
  const int64_t workers =
      batch * n >= kMinRowsForThreads ? std::max<int64_t>(1, pool.num_threads()) : 1;

  // Phase 1: first occurrences. The rows are grouped (stably) into buckets by a hash of their key,
  // so equal keys share a bucket; a task per (batch element, bucket) then dedups its rows, in
  // order, in its own index -- small enough for the L2 cache, and both threads work. NaN rows have
  // no key: they form the last bucket, all kept.
  int64_t buckets = 1;
  while (buckets < kMaxBuckets && buckets * kRowsPerBucket < n) buckets *= 2;
  auto bucket_of = [=](int64_t b, int64_t i) -> int64_t {
    uint64_t key;
    if (!RowKey(in[b * input_stride + i * width], &key)) return buckets;
    return buckets > 1 ? HashBucket(key, buckets) : 0;
  };
  StablePartition<decltype(bucket_of)> by_bucket(&pool, workers, bucket_of, batch, n, buckets + 1);
  std::vector<int64_t> bucket_start(batch * (buckets + 2));  // [b][bucket], then the end
  FFI_RETURN_IF_ERROR(by_bucket.Count(op, "input", nullptr, bucket_start.data()));
  // Per batch element: row numbers, bucket by bucket (every entry is written: no zero fill).
  std::unique_ptr<int32_t[]> rows(new int32_t[batch * n]);
  FFI_RETURN_IF_ERROR(by_bucket.Run([&](int64_t b, int64_t i, int64_t dest) {
    rows[b * n + dest] = static_cast<int32_t>(i);
  }));
  std::vector<uint8_t> kept(batch * n, 0);
  std::vector<IndexLease> indexes(workers);  // one pooled hash index (id_index.h) per worker
  FFI_RETURN_IF_ERROR(ParallelFor(&pool, batch * (buckets + 1), workers, [&](int64_t t, int64_t worker) {
    const int64_t b = t / (buckets + 1), bucket = t % (buckets + 1);
    const int64_t* start = bucket_start.data() + b * (buckets + 2) + bucket;
    const int32_t* row = rows.get() + b * n + start[0];
    const int64_t count = start[1] - start[0];
    uint8_t* keep = kept.data() + b * n;
    if (bucket == buckets) {  // NaN rows
      for (int64_t k = 0; k < count; ++k) keep[row[k]] = 1;
      return ffi::Error::Success();
    }
    const T* x = in + b * input_stride;
    IdIndex* index = &*indexes[worker];
    index->Reset(count);
    auto dedup = [&](auto rewrite_group) {  // IdIndex::FindOrInsert<true> for a small index
      int32_t indexed = 0;
      for (int64_t k = 0; k < count; ++k) {
        uint64_t key;
        // Two-stage prefetch: the key two distances ahead (rows of a bucket are scattered over the
        // input), then the index group of the key one distance ahead (its key is in cache by now).
        if (k + 2 * kPrefetchDistance < count) {
          __builtin_prefetch(&x[int64_t{row[k + 2 * kPrefetchDistance]} * width]);
        }
        if (k + kPrefetchDistance < count &&
            RowKey(x[int64_t{row[k + kPrefetchDistance]} * width], &key)) {
          index->Prefetch(key);
        }
        RowKey(x[int64_t{row[k]} * width], &key);
        bool inserted;
        index->FindOrInsert<decltype(rewrite_group)::value>(key, indexed, &inserted);
        indexed += inserted;
        keep[row[k]] = inserted;
      }
    };
    if (index->small()) {
      dedup(std::true_type{});
    } else {
      dedup(std::false_type{});
    }
    return ffi::Error::Success();
  }));

  // Phase 2: kept rows grouped by the shard of their first occurrence (every shard id validated),
  // each shard's block filled from its end: reverse first-occurrence order, as in Monolith.
  const uint8_t* keep = kept.data();
  auto part = [=](int64_t b, int64_t i) -> int64_t {
    const int64_t s = static_cast<int64_t>(shards[b * shard_stride + i]);
    return (s >= 0 && s < num_shards && !keep[b * n + i]) ? kSkipRow : s;
  };
  StablePartition<decltype(part)> partition(&pool, workers, part, batch, n, num_shards);
  FFI_RETURN_IF_ERROR(partition.Count(op, "shard_ids", shard_sizes));
  std::vector<int64_t> block_end(batch * num_shards);  // + base: the reversed destination's anchor
  for (int64_t b = 0; b < batch; ++b) {
    int64_t end = 0;
    for (int64_t s = 0; s < num_shards; ++s) {
      const int64_t size = shard_sizes[b * num_shards + s];
      block_end[b * num_shards + s] = 2 * end + size - 1;  // dest d in [end, end+size) -> this - d
      end += size;
    }
    num_unique[b] = static_cast<int32_t>(end);
    std::fill(out + (b * n + end) * width, out + (b + 1) * n * width, T{0});
  }
  return partition.Run([&](int64_t b, int64_t i, int64_t dest) {
    const int64_t s = static_cast<int64_t>(shards[b * shard_stride + i]);
    const int64_t to = block_end[b * num_shards + s] - dest;
    const T* row = in + b * input_stride + i * width;
    if (width == 1) {  // 1-D input: one element, not a copy call per row
      out[b * n + to] = *row;
    } else {
      std::copy(row, row + width, out + (b * n + to) * width);
    }
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
