// fused_reorder_by_indices, CPU handler. Semantics: spec/monolith_ops.md section 3; layout and
// validation: fused_reorder_by_indices.h.
//
// Algorithm (per batch element; all batch elements and tables run in one call, on XLA's pool):
//   1. Dedup. One task per table (or per shard range of a very large table). It walks the table's
//      ids once, finding or inserting each id in an open-addressing hash index (one probe per id);
//      a new id gets the task's next unique number u and counts one more id in its block
//      (shard, table). u goes to the raw id's slot of the offsets output, used as scratch.
//   2. Layout. From the block counts: block bases in the id output and the fused buffer, per-shard
//      sizes, num_unique and E_tot (checked against int32).
//   3. Scatter. The task walks its ids again. A raw id whose u is the next unused number is a first
//      occurrence: its shard is computed (the only other time, once per distinct id), it takes the
//      next position of its block -- so blocks come out in first-occurrence order -- its id is
//      written there, and its fused offset is recorded under u. Every raw id then gets the offset
//      of its u: a gather, with no second hash probe.
// Nothing proportional to the input is allocated besides the hash index (kept per thread across
// calls): the raw input and the offsets output carry everything between the phases.
//
// A table much larger than the others is split into shard ranges so that every thread works on it;
// each such task keeps only the ids of its shards (blocks are per shard, so the tasks are
// independent), at the cost of computing every raw id's shard to know whether it is its own.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ffi_helpers.h"
#include "fused_reorder_by_indices.h"
#include "id_index.h"
#include "sharding.h"

namespace jax_distops {
namespace {

// One unit of work: the ids of table `table` in batch element `batch` whose shard is in [lo, hi).
struct Task {
  int64_t batch, table, lo, hi;
  int64_t cost;  // about the number of ids the task keeps; largest tasks are scheduled first
};

// Per worker, reused across the tasks it runs (the hash index is per thread: id_index.h).
struct WorkerScratch {
  std::vector<int32_t> counts;   // block sizes (phase 1) / next block positions (phase 3)
  std::vector<int32_t> offsets;  // phase 3: fused offset of unique number u
};

// Ids per task below which splitting a table over shard ranges does not pay for the extra pass.
constexpr int64_t kMinIdsPerSplit = 1 << 16;
// Total ids below which the whole call runs on the calling thread (pool dispatch costs ~5-10 us).
constexpr int64_t kMinIdsForThreads = 1 << 15;
// Hash-index slots are prefetched this many ids ahead when the index is this large (measured:
// for smaller indexes prefetching neither helps nor hurts; for 4 MiB ones it saves 25%).
constexpr int64_t kPrefetchDistance = 16;
constexpr int64_t kPrefetchAboveBytes = 1 << 20;

// Phase 1 of one task, for ids x[begin..end): dedups those whose shard is in [lo, hi) (all of
// them when kAllShards), writes each kept raw id's unique number to raw[i], counts block sizes in
// counts[shard - lo], and returns the number of distinct ids so far (`num_unique` before).
// Specialized so that the common case (kAllShards) computes the shard only for new ids, and so
// that only large indexes pay for prefetching (which hides their cache-miss latency).
template <bool kAllShards, bool kPrefetch, typename T>
int32_t DedupIds(const T* x, int64_t begin, int64_t end, const ShardFn& shard_of, int64_t lo,
                 int64_t hi, IdIndex& index, int32_t* counts, int32_t* raw, int32_t num_unique) {
  for (int64_t i = begin; i < end; ++i) {
    if (kPrefetch && i + kPrefetchDistance < end) {
      __builtin_prefetch(index.SlotAddress(static_cast<uint64_t>(x[i + kPrefetchDistance])));
    }
    const T v = x[i];
    int64_t s = 0;
    if (!kAllShards) {
      s = shard_of(v);
      if (s < lo || s >= hi) continue;
    }
    bool inserted;
    const int32_t u = index.FindOrInsert(static_cast<uint64_t>(v), num_unique, &inserted);
    if (inserted) {
      if (kAllShards) s = shard_of(v);
      ++counts[s - lo];
      ++num_unique;
    }
    raw[i] = u;
  }
  return num_unique;
}

// Phase 3 of one task: see the file comment. `ids_at` / `emb_at` point at the block bases of this
// task's table (block (s, m) at [s * M]).
template <bool kAllShards, typename T>
void ScatterIds(const T* x, int64_t n, const ShardFn& shard_of, int64_t lo, int64_t hi,
                int64_t num_tables, int64_t dim, const int64_t* ids_at, const int64_t* emb_at,
                int32_t* positions, int32_t* offset_of, T* out_ids, int32_t* raw) {
  int32_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    int64_t s = 0;
    if (!kAllShards) {
      s = shard_of(v);
      if (s < lo || s >= hi) continue;
    }
    const int32_t u = raw[i];
    if (u == next) {  // first occurrence of a distinct id
      if (kAllShards) s = shard_of(v);
      const int64_t block = s * num_tables;
      const int64_t pos = positions[s - lo]++;
      out_ids[ids_at[block] + pos] = v;
      offset_of[u] = static_cast<int32_t>(emb_at[block] + pos * dim);  // < E_tot, checked to fit
      ++next;
    }
    raw[i] = offset_of[u];
  }
}

template <typename T>
ffi::Error FusedReorderImpl(ffi::ThreadPool& pool, ffi::RemainingArgs& args, ffi::DataType id_dtype,
                            ffi::AnyBuffer::Dimensions out_dims, T* out_ids, int32_t* shard_sizes,
                            int32_t* slot_counts, int32_t* offsets, int32_t* num_unique,
                            int32_t* emb_total, int64_t num_shards, int64_t first_shard,
                            ffi::Span<const int64_t> dims) {
  const char* op = kFusedReorderOp;
  const int64_t num_tables = static_cast<int64_t>(args.size());
  FFI_ASSIGN_OR_RETURN(BatchSplit out_split, SplitBatch(out_dims, 1, op, "ids output"));
  const int64_t batch = out_split.batch;
  const int64_t total = out_split.core_size;  // sum of the tables' lengths
  const ffi::Span<const int64_t> batch_dims = out_dims.first(out_split.batch_ndim);

  // Inputs: data pointer, length, batch stride, and where each table starts among the raw ids.
  std::vector<const T*> data(num_tables);
  std::vector<int64_t> length(num_tables), stride(num_tables), start(num_tables + 1, 0);
  for (int64_t m = 0; m < num_tables; ++m) {
    FFI_ASSIGN_OR_RETURN(ffi::AnyBuffer in, args.get<ffi::AnyBuffer>(m));
    if (in.element_type() != id_dtype) {
      return InvalidArgument(op, "all ids_list entries must have the same dtype");
    }
    const auto in_dims = in.dimensions();
    FFI_ASSIGN_OR_RETURN(stride[m], OperandBatchStride(in_dims, 1, batch_dims, op, "ids_list entry"));
    data[m] = in.typed_data<T>();
    length[m] = in_dims.back();
    start[m + 1] = start[m] + length[m];
  }
  if (start[num_tables] != total) {
    return InvalidArgument(op, "the ids output length does not equal the total number of input ids");
  }

  // Tasks: one per (batch element, table), or per shard range for a table that holds more than a
  // worker's share of all ids.
  const int64_t workers =
      batch * total >= kMinIdsForThreads ? std::max<int64_t>(1, pool.num_threads()) : 1;
  const int64_t usable_shards = num_shards - first_shard;
  const int64_t share = std::max<int64_t>(1, batch * total / workers);
  std::vector<Task> tasks;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t m = 0; m < num_tables; ++m) {
      const int64_t groups =
          length[m] < kMinIdsPerSplit
              ? 1
              : std::clamp<int64_t>((length[m] + share - 1) / share, 1, usable_shards);
      for (int64_t g = 0; g < groups; ++g) {
        tasks.push_back({b, m, first_shard + usable_shards * g / groups,
                         first_shard + usable_shards * (g + 1) / groups, length[m] / groups});
      }
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const int64_t blocks = num_shards * num_tables;
  const ShardFn shard_of(num_shards, first_shard);
  std::vector<WorkerScratch> scratch(workers);
  std::vector<int32_t> task_unique(num_tasks);

  // Phase 1: dedup, block counts, and each raw id's unique number (kept in `offsets` meanwhile).
  for (int64_t b = 0; b < batch; ++b) {  // shards below first_shard get no ids
    std::fill(slot_counts + b * blocks, slot_counts + b * blocks + first_shard * num_tables, 0);
  }
  FFI_RETURN_IF_ERROR(ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t worker) {
    const Task& task = tasks[t];
    const int64_t m = task.table, n = length[m];
    const T* x = data[m] + task.batch * stride[m];
    int32_t* raw = offsets + task.batch * total + start[m];
    const bool all_shards = task.lo == first_shard && task.hi == num_shards;
    // Block sizes are counted in per-worker memory: tasks of other tables own neighbouring entries
    // of slot_counts, and sharing those cache lines between threads would cost a miss per new id.
    std::vector<int32_t>& counts = scratch[worker].counts;
    counts.assign(task.hi - task.lo, 0);
    // Index sized for the whole table when small, else from a prefix (id_index.h).
    IndexLease lease;
    IdIndex& index = *lease;
    const int64_t sample = std::min(n, FirstSizing(n));
    index.Reset(sample);
    int32_t unique = 0;
    for (int64_t begin = 0; begin < n;) {
      const int64_t end = begin == 0 ? sample : n;
      const bool prefetch = index.capacity_bytes() > kPrefetchAboveBytes;
      const auto dedup = all_shards
                             ? (prefetch ? DedupIds<true, true, T> : DedupIds<true, false, T>)
                             : (prefetch ? DedupIds<false, true, T> : DedupIds<false, false, T>);
      unique = dedup(x, begin, end, shard_of, task.lo, task.hi, index, counts.data(), raw, unique);
      if (begin == 0 && end < n) index.Reserve(ExpectedUnique(unique, sample, n));
      begin = end;
    }
    task_unique[t] = unique;
    int32_t* block_sizes = slot_counts + task.batch * blocks + m;  // block (s, m) at [s * M]
    for (int64_t s = task.lo; s < task.hi; ++s) block_sizes[s * num_tables] = counts[s - task.lo];
    return ffi::Error::Success();
  }));

  // Phase 2: block layout per batch element.
  std::vector<int64_t> id_base(batch * blocks), emb_base(batch * blocks);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t unique, floats;
    FusedBlockLayout(slot_counts + b * blocks, dims.begin(), num_shards, num_tables,
                     id_base.data() + b * blocks, emb_base.data() + b * blocks,
                     shard_sizes + b * num_shards, &unique, &floats);
    FFI_ASSIGN_OR_RETURN(emb_total[b], CheckedInt32(floats, op, "fused_embedding_size"));
    num_unique[b] = static_cast<int32_t>(unique);
    std::fill(out_ids + b * total + unique, out_ids + (b + 1) * total, T{0});
  }

  // Phase 3: distinct ids to their block positions; raw ids' unique numbers to fused offsets.
  return ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t worker) {
    const Task& task = tasks[t];
    const int64_t m = task.table;
    std::vector<int32_t>& positions = scratch[worker].counts;
    positions.assign(task.hi - task.lo, 0);
    std::vector<int32_t>& offset_of = scratch[worker].offsets;
    if (offset_of.size() < static_cast<size_t>(task_unique[t])) offset_of.resize(task_unique[t]);
    const auto scatter = task.lo == first_shard && task.hi == num_shards ? ScatterIds<true, T>
                                                                         : ScatterIds<false, T>;
    scatter(data[m] + task.batch * stride[m], length[m], shard_of, task.lo, task.hi, num_tables,
            dims[m], id_base.data() + task.batch * blocks + m,
            emb_base.data() + task.batch * blocks + m, positions.data(), offset_of.data(),
            out_ids + task.batch * total, offsets + task.batch * total + start[m]);
    return ffi::Error::Success();
  });
}

ffi::Error FusedReorderDispatch(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> ids,
                                ffi::Result<ffi::Buffer<ffi::S32>> shard_sizes,
                                ffi::Result<ffi::Buffer<ffi::S32>> sharded_slot_sizes,
                                ffi::Result<ffi::Buffer<ffi::S32>> offsets,
                                ffi::Result<ffi::Buffer<ffi::S32>> num_unique,
                                ffi::Result<ffi::Buffer<ffi::S32>> emb_total, int64_t num_shards,
                                int64_t first_shard, ffi::Span<const int64_t> dims) {
  const char* op = kFusedReorderOp;
  return CatchAll(op, [&]() -> ffi::Error {
    FFI_RETURN_IF_ERROR(ValidateFusedReorderAttrs(num_shards, first_shard, dims, args.size()));
    if (args.size() == 0) return InvalidArgument(op, "ids_list must not be empty");
    DISTOPS_DTYPE_DISPATCH(DISTOPS_ID_TYPES, ids->element_type(), op, FusedReorderImpl, pool, args,
                           ids->element_type(), ids->dimensions(), ids->typed_data<DistopsT_>(),
                           shard_sizes->typed_data(), sharded_slot_sizes->typed_data(),
                           offsets->typed_data(), num_unique->typed_data(), emb_total->typed_data(),
                           num_shards, first_shard, dims);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedReorderByIndices, FusedReorderDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()                    // ids_list: M x [*batch, N_m]
                                  .Ret<ffi::AnyBuffer>()              // ids [*batch, N_tot]
                                  .Ret<ffi::Buffer<ffi::S32>>()       // shard_sizes [*batch, S]
                                  .Ret<ffi::Buffer<ffi::S32>>()       // sharded_slot_sizes [*batch, S*M]
                                  .Ret<ffi::Buffer<ffi::S32>>()       // fused_embedding_offsets [*batch, N_tot]
                                  .Ret<ffi::Buffer<ffi::S32>>()       // num_unique [*batch]
                                  .Ret<ffi::Buffer<ffi::S32>>()       // fused_embedding_size [*batch]
                                  .Attr<int64_t>("num_shards")        // num_of_shards S
                                  .Attr<int64_t>("first_shard")       // 1 if shard 0 is kept empty
                                  .Attr<ffi::Span<const int64_t>>("dims"));  // dim_sizes, one per table

}  // namespace jax_distops
