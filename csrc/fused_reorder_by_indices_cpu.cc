// fused_reorder_by_indices, CPU handler. Semantics: spec/monolith_ops.md section 3; layout and
// validation: fused_reorder_by_indices.h.
//
// Algorithm (per batch element; all batch elements and tables run in one call):
//   1. Dedup. One task per (table m, shard range). It walks the table's ids once and finds or inserts
//      each id in an open-addressing hash index (one probe per id). A new id gets the next unique
//      number u, its shard (computed once per unique id) and its position inside block (shard, m),
//      which is the block's running count: that is the first-occurrence order. The task writes u into
//      the raw id's slot of the offsets output, used as scratch.
//   2. Layout. From the block counts: block bases in the id output and the fused buffer, per-shard
//      sizes, num_unique and E_tot (checked against int32).
//   3. Scatter. Each task writes its unique ids to their block positions, turns each unique number
//      into its fused offset, and replaces the scratch u of every raw id by that offset: a gather,
//      with no second hash probe and no second shard computation.
// A table much larger than the others is split into shard ranges so that both threads work on it;
// each such task keeps only the ids of its shards (blocks are per shard, so the tasks are independent).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "ffi_helpers.h"
#include "fused_reorder_by_indices.h"
#include "id_index.h"
#include "sharding.h"

namespace jax_distops {
namespace {

// One unit of work: the ids of table `table` in batch element `batch` whose shard is in [lo, hi).
// Its distinct ids go to [first, first + length of the table) of the per-call unique arrays.
struct Task {
  int64_t batch, table, lo, hi;
  int64_t first;
  int64_t cost;  // about the number of ids the task keeps; largest tasks are scheduled first
  int64_t num_unique = 0;
};

// Per worker, reused across the tasks it runs.
struct WorkerScratch {
  IdIndex index;
  std::vector<int32_t> counts;  // block sizes of the current task's shards
};

// Ids per task below which splitting a table over shard ranges does not pay for the extra pass.
constexpr int64_t kMinIdsPerSplit = 1 << 16;
// Total ids below which the whole call runs on the calling thread (pool dispatch costs ~5-10 us).
constexpr int64_t kMinIdsForThreads = 1 << 15;
// Tables up to this many ids get an index sized for all of them distinct.
constexpr int64_t kMaxPresizedIds = 1 << 19;
// Hash-index slots are prefetched this many ids ahead (tables larger than the L2 cache).
constexpr int64_t kPrefetchDistance = 16;

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
  int64_t unique_bound = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t m = 0; m < num_tables; ++m) {
      const int64_t groups =
          length[m] < kMinIdsPerSplit
              ? 1
              : std::clamp<int64_t>((length[m] + share - 1) / share, 1, usable_shards);
      for (int64_t g = 0; g < groups; ++g) {
        tasks.push_back({b, m, first_shard + usable_shards * g / groups,
                         first_shard + usable_shards * (g + 1) / groups, unique_bound,
                         length[m] / groups});
        unique_bound += length[m];
      }
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const int64_t blocks = num_shards * num_tables;
  const ShardFn shard_of(num_shards, first_shard);
  // The distinct ids of every task, in first-occurrence order, with their shard and their position
  // in block (shard, table); phase 3 turns the position into the fused offset.
  std::unique_ptr<T[]> unique_ids(new T[unique_bound]);
  std::unique_ptr<int32_t[]> unique_shard(new int32_t[unique_bound]);
  std::unique_ptr<int32_t[]> unique_pos(new int32_t[unique_bound]);
  std::vector<WorkerScratch> scratch(workers);

  // Phase 1: dedup, block counts, and each raw id's unique number (kept in `offsets` meanwhile).
  std::fill(slot_counts, slot_counts + batch * blocks, 0);
  FFI_RETURN_IF_ERROR(ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t worker) {
    Task& task = tasks[t];
    const int64_t m = task.table, n = length[m];
    const T* x = data[m] + task.batch * stride[m];
    int32_t* raw = offsets + task.batch * total + start[m];
    const bool all_shards = task.lo == first_shard && task.hi == num_shards;
    T* ids = unique_ids.get() + task.first;
    int32_t* shard = unique_shard.get() + task.first;
    int32_t* pos = unique_pos.get() + task.first;
    // Block sizes are counted in per-worker memory: tasks of other tables own neighbouring entries
    // of slot_counts, and sharing those cache lines between threads would cost a miss per new id.
    std::vector<int32_t>& counts = scratch[worker].counts;
    counts.assign(task.hi - task.lo, 0);
    IdIndex& index = scratch[worker].index;
    // Size for every id being distinct while that stays small (no regrowth for unique-heavy
    // tables); beyond, expect half of them to be and let the index grow if needed.
    index.Reset(task.cost <= kMaxPresizedIds ? task.cost : task.cost / 2);
    int32_t num_unique = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchDistance < n) {
        __builtin_prefetch(index.SlotAddress(static_cast<uint64_t>(x[i + kPrefetchDistance])));
      }
      const T v = x[i];
      int64_t s = -1;
      if (!all_shards) {
        s = shard_of(v);
        if (s < task.lo || s >= task.hi) continue;
      }
      bool inserted;
      const int32_t u = index.FindOrInsert(static_cast<uint64_t>(v), num_unique, &inserted);
      if (inserted) {
        if (s < 0) s = shard_of(v);
        ids[num_unique] = v;
        shard[num_unique] = static_cast<int32_t>(s);
        pos[num_unique] = counts[s - task.lo]++;
        ++num_unique;
      }
      raw[i] = u;
    }
    task.num_unique = num_unique;
    int32_t* block_sizes = slot_counts + task.batch * blocks + m;  // block (s, m) at [s * M]
    for (int64_t s = task.lo; s < task.hi; ++s) block_sizes[s * num_tables] = counts[s - task.lo];
    return ffi::Error::Success();
  }));
  scratch.clear();

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

  // Phase 3: unique ids to their block positions; raw ids' unique numbers to fused offsets.
  return ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t) {
    const Task& task = tasks[t];
    const int64_t m = task.table, n = length[m], dim = dims[m];
    const int64_t* ids_at = id_base.data() + task.batch * blocks + m;
    const int64_t* emb_at = emb_base.data() + task.batch * blocks + m;
    T* out = out_ids + task.batch * total;
    const T* ids = unique_ids.get() + task.first;
    const int32_t* shard = unique_shard.get() + task.first;
    int32_t* pos = unique_pos.get() + task.first;
    for (int64_t k = 0; k < task.num_unique; ++k) {
      const int64_t block = shard[k] * num_tables;
      out[ids_at[block] + pos[k]] = ids[k];
      pos[k] = static_cast<int32_t>(emb_at[block] + pos[k] * dim);  // < E_tot, checked to fit
    }
    int32_t* raw = offsets + task.batch * total + start[m];
    if (task.lo == first_shard && task.hi == num_shards) {
      for (int64_t i = 0; i < n; ++i) raw[i] = pos[raw[i]];
    } else {
      const T* x = data[m] + task.batch * stride[m];
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = shard_of(x[i]);
        if (s >= task.lo && s < task.hi) raw[i] = pos[raw[i]];
      }
    }
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
