// fused_reorder_by_indices, CPU handler. Semantics: spec/monolith_ops.md section 3; layout and
// validation: fused_reorder_by_indices.h.
//
// Algorithm (per batch element; all batch elements and tables run in one call, on XLA's pool):
//   1. Dedup. One task per table (or per shard range of a large table, below). It walks the
//      table's ids once, finding or inserting each id in an open-addressing hash index (one probe
//      per id); a new id gets the task's next unique number u, is recorded under u with its shard,
//      and counts one more id in its block (shard, table). u goes to the raw id's slot of the
//      offsets output, used as scratch.
//   2. Layout. From the block counts: block bases in the id output and the fused buffer, per-shard
//      sizes, num_unique and E_tot (checked against int32).
//   3. Scatter. The task walks its distinct ids in u order: each takes the next position of its
//      block -- so blocks come out in first-occurrence order -- its id is written there, and its
//      fused offset is recorded under u. Every raw id then gets the offset of its u: a gather,
//      with no second hash probe and no second pass over the raw ids. The tasks also zero the id
//      output's padding between them.
// Scratch proportional to the input (the distinct ids with their shards, and the hash indexes) is
// pooled across calls (id_index.h: Lease), so that it is not page-faulted in again every call.
//
// A large table is first partitioned into shard ranges of about kIdsPerRange ids each, with the
// routing ops' stable partition (partition.h: a counting pass, then a placement pass), so that
// each range keeps its ids in input order. Each range is then a task of its own, as if it were a
// small table: its hash index stays in a core's cache, every thread works on the table, and no
// thread reads ids of other ranges. The placement pass leaves each id's place among the ranges'
// ids in its slot of the offsets output, and a last pass replaces it by the fused offset found
// there. (Measured on 2 cores, 2e6 ids in one table: 23-24 ms before, 17-20 ms partitioned;
// the same ids in 30 tables: 12.3-12.8 ms.) A table too small to gain from that but holding more
// than a thread's share of the call's ids is split into shard ranges by scanning instead: each
// range's task reads all of the table's ids, keeps those of its shards and records their positions
// (ShardRangeScratch), at the cost of computing every id's shard in every range.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffi_helpers.h"
#include "fused_reorder_by_indices.h"
#include "id_index.h"
#include "partition.h"
#include "sharding.h"

namespace jax_distops {
namespace {

// One unit of work (phases 1 and 3): the ids of table `table` in batch element `batch` whose shard
// is in [lo, hi). A whole table reads its ids in place. A shard range of a table split by
// scanning (keep >= 0: its ShardRangeScratch) reads the whole table and keeps its own ids. A shard
// range of a partitioned table reads keys[part + begin, part + begin + count) of PartitionScratch
// (`part`: where that table's keys of this batch element start).
struct Task {
  int64_t batch, table, lo, hi;
  int64_t keep = -1;
  int64_t part = -1;
  int64_t begin = 0, count = 0;
};

// The shard range of a partitioned table's id x[b * stride + i]: StablePartition's part function.
template <typename T>
struct RangeOfId {
  const T* x;
  int64_t stride;
  ShardFn shard_of;
  const int32_t* range_of_shard;
  int64_t operator()(int64_t b, int64_t i) const {
    return range_of_shard[shard_of(x[b * stride + i])];
  }
};

// Per worker, reused across the tasks it runs.
struct WorkerScratch {
  std::vector<int32_t> counts;   // block sizes (phase 1) / next block positions (phase 3)
  std::vector<int32_t> offsets;  // phase 3: fused offset of unique number u
};

// The scratch memory of a call, pooled across calls (id_index.h: Lease) so that it is not page-
// faulted in again every call. Vectors only grow, so after the first call nothing is allocated.
struct CallScratch {
  // Phase 1 -> 3: each task's distinct ids and their shards by unique number u, at its ids' place
  // among all raw ids (batch * total ids; a task has at most as many distinct ids as ids).
  std::vector<uint64_t> distinct;
  std::vector<int32_t> distinct_shard;
  std::vector<WorkerScratch> workers;
  // Sized by the batch (tens of MB under a large vmap, page-faulted in again if not pooled): the
  // tasks, their distinct-id counts, and the block bases of phase 2.
  std::vector<Task> tasks;
  std::vector<int32_t> task_unique;
  std::vector<int64_t> id_base, emb_base;

  void Prepare(int64_t num_ids, int64_t num_workers) {
    if (distinct.size() < static_cast<size_t>(num_ids)) {
      distinct.resize(num_ids);
      distinct_shard.resize(num_ids);
    }
    if (workers.size() < static_cast<size_t>(num_workers)) workers.resize(num_workers);
  }
  void ReleaseAbove(int64_t max_bytes) {
    const size_t bytes = distinct.capacity() * 12 + tasks.capacity() * sizeof(Task) +
                         task_unique.capacity() * 4 + (id_base.capacity() + emb_base.capacity()) * 8;
    if (static_cast<int64_t>(bytes) > max_bytes) *this = CallScratch();
  }
};

// The partitioned tables' ids, grouped by shard range (keys), and each one's unique number in its
// range, later its fused offset (uids); pooled like CallScratch. A table's keys of batch element b
// follow those of element b - 1.
template <typename T>
struct PartitionScratch {
  std::vector<T> keys;
  std::vector<int32_t> uids;

  void Prepare(int64_t num_ids) {
    if (keys.size() < static_cast<size_t>(num_ids)) {
      keys.resize(num_ids);
      uids.resize(num_ids);
    }
  }
  void ReleaseAbove(int64_t max_bytes) {
    const size_t bytes = keys.capacity() * (sizeof(T) + 4);
    if (static_cast<int64_t>(bytes) > max_bytes) *this = PartitionScratch();
  }
};

// A table of more than kPartitionAbove ids is partitioned into shard ranges of about kIdsPerRange
// ids (and at least one per worker's share of the call's ids). (2e6 ids in one table, 2 cores:
// ranges of 2^15 / 2^16 / 2^18 ids took 20.0-21.6 / 17.6-19.7 / 23.8-24.2 ms.) A smaller table
// that holds more than a worker's share (and at least kMinIdsPerSplit ids) is split into one shard
// range per share. Up to kMaxScannedRanges ranges, by scanning: the partition passes cost more
// than the scans there, and the ranges' indexes are no faster to probe (2 cores, one table of 3e5
// ids and two of 2e4: 2.4-3.0 ms scanning, 3.2-3.6 ms partitioned; the benchmark's 30 tables took
// 12.4 -> 19.3 ms when its six tables of 1.4e5-2.1e5 ids were partitioned as well). More ranges
// (a pool of many threads) are partitioned, since every scanned range reads the whole table
// (the same inputs split as for 16 threads, timed on 2: the 3e5 table 6.0 ms scanned in 15
// ranges, 2.6 ms partitioned; the 30 tables, 2 ranges each for the largest six, 14-16 ms
// scanned, 20.4 ms partitioned). The last pass takes kPartitionChunk ids per task.
constexpr int64_t kIdsPerRange = 1 << 16;
constexpr int64_t kPartitionAbove = int64_t{1} << 19;
constexpr int64_t kPartitionChunk = 1 << 16;
constexpr int64_t kMinIdsPerSplit = 1 << 16;
constexpr int64_t kMaxScannedRanges = 4;

constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Total ids below which the whole call runs on the calling thread (pool dispatch costs ~5-10 us).
constexpr int64_t kMinIdsForThreads = 1 << 15;
// Hash-index groups are prefetched this many ids ahead when the index is this large (measured:
// for smaller indexes prefetching neither helps nor hurts; for 4 MiB ones it saves 25%).
constexpr int64_t kPrefetchDistance = 16;
constexpr int64_t kPrefetchAboveBytes = 1 << 20;

// How a task probes its hash index: a small one (IdIndex::small()) rewrites whole control groups
// (IdIndex::FindOrInsert<true>), a large one (> kPrefetchAboveBytes) is prefetched.
enum class Probe { kSmall, kCached, kLarge };

// Calls fn(std::integral_constant<Probe, p>{}) with the way p to probe `index` at its present size.
template <typename Fn>
decltype(auto) WithProbe(const IdIndex& index, Fn&& fn) {
  if (index.small()) return fn(std::integral_constant<Probe, Probe::kSmall>{});
  if (index.capacity_bytes() > kPrefetchAboveBytes) {
    return fn(std::integral_constant<Probe, Probe::kLarge>{});
  }
  return fn(std::integral_constant<Probe, Probe::kCached>{});
}

// Phase 1 of a task (a whole table, or the keys of a range), for its ids x[begin..end): writes
// each id's unique number to raw[i], each distinct id u and its shard to distinct[u] and
// distinct_shard[u], counts block sizes in counts[shard - lo] (lo: the first usable shard), and
// returns the number of distinct ids so far (`num_unique` before). Only large indexes pay for
// prefetching (which hides their cache-miss latency).
template <Probe kProbe, typename T>
int32_t DedupTable(const T* x, int64_t begin, int64_t end, const ShardFn& shard_of, int64_t lo,
                   IdIndex& index, int32_t* counts, int32_t* raw, int32_t num_unique,
                   uint64_t* distinct, int32_t* distinct_shard) {
  for (int64_t i = begin; i < end; ++i) {
    if (kProbe == Probe::kLarge && i + kPrefetchDistance < end) {
      index.Prefetch(static_cast<uint64_t>(x[i + kPrefetchDistance]));
    }
    const T v = x[i];
    bool inserted;
    const int32_t u = index.FindOrInsert<kProbe == Probe::kSmall>(static_cast<uint64_t>(v),
                                                                  num_unique, &inserted);
    if (inserted) {
      const int64_t s = shard_of(v);
      distinct[num_unique] = static_cast<uint64_t>(v);
      distinct_shard[num_unique] = static_cast<int32_t>(s);
      ++counts[s - lo];
      ++num_unique;
    }
    raw[i] = u;
  }
  return num_unique;
}

// What a task that owns the shards [lo, hi) of a table keeps from phase 1 for phase 3: the raw
// positions of its ids, and its distinct ids with their shards in first-occurrence order. Their
// number is not known in advance, so they live in vectors of their own (pooled: id_index.h).
struct ShardRangeScratch {
  std::vector<int32_t> owned;
  std::vector<uint64_t> distinct;
  std::vector<int32_t> distinct_shard;

  void Clear() {
    owned.clear();
    distinct.clear();
    distinct_shard.clear();
  }
  void ReleaseAbove(int64_t max_bytes) {
    const size_t bytes = owned.capacity() * 4 + distinct.capacity() * 8 + distinct_shard.capacity() * 4;
    if (static_cast<int64_t>(bytes) > max_bytes) *this = ShardRangeScratch();
  }
};

// Ids a shard-range task sorts out at a time.
constexpr int64_t kOwnedBatch = 512;

// Phase 1 of a task that owns the shards [lo, hi) of a table, for its ids x[begin..end): as
// DedupTable for the ids of its shards, recording them in `keep`. The ids are first sorted out
// kOwnedBatch at a time without a branch (a branch on whether an id is the task's own would
// mispredict for every other id with two tasks), then deduped.
template <Probe kProbe, typename T>
int32_t DedupShardRange(const T* x, int64_t begin, int64_t end, const ShardFn& shard_of,
                        int64_t lo, int64_t hi, IdIndex& index, int32_t* counts, int32_t* raw,
                        int32_t num_unique, ShardRangeScratch& keep) {
  int32_t own[kOwnedBatch], own_shard[kOwnedBatch];
  for (int64_t from = begin; from < end; from += kOwnedBatch) {
    const int64_t to = std::min(end, from + kOwnedBatch);
    int64_t count = 0;
    for (int64_t i = from; i < to; ++i) {  // an id of other shards is overwritten by the next one
      const int64_t s = shard_of(x[i]);
      own[count] = static_cast<int32_t>(i);
      own_shard[count] = static_cast<int32_t>(s);
      count += (s >= lo) & (s < hi);
    }
    for (int64_t k = 0; k < count; ++k) {
      if (kProbe == Probe::kLarge && k + kPrefetchDistance < count) {
        index.Prefetch(static_cast<uint64_t>(x[own[k + kPrefetchDistance]]));
      }
      const T v = x[own[k]];
      bool inserted;
      const int32_t u = index.FindOrInsert<kProbe == Probe::kSmall>(static_cast<uint64_t>(v),
                                                                    num_unique, &inserted);
      if (inserted) {
        keep.distinct.push_back(static_cast<uint64_t>(v));
        keep.distinct_shard.push_back(own_shard[k]);
        ++counts[own_shard[k] - lo];
        ++num_unique;
      }
      raw[own[k]] = u;
    }
    keep.owned.insert(keep.owned.end(), own, own + count);
  }
  return num_unique;
}

// Phase 3 of a task: see the file comment. Its distinct ids and their shards were recorded in
// phase 1 in first-occurrence order; its n ids' unique numbers, raw[0..n) or, if `owned` is not
// null, raw[owned[k]] for k < n, become fused offsets. `ids_at` / `emb_at` point at the block bases
// of this task's table (block (s, m) at [s * M]).
template <typename T>
void PlaceDistinctIds(const uint64_t* distinct, const int32_t* distinct_shard, int32_t unique,
                      const int32_t* owned, int64_t n, int64_t lo, int64_t num_tables, int64_t dim,
                      const int64_t* ids_at, const int64_t* emb_at, int32_t* positions,
                      int32_t* offset_of, T* out_ids, int32_t* raw) {
  for (int32_t u = 0; u < unique; ++u) {
    const int64_t s = distinct_shard[u];
    const int64_t block = s * num_tables;
    const int64_t pos = positions[s - lo]++;
    out_ids[ids_at[block] + pos] = static_cast<T>(distinct[u]);
    offset_of[u] = static_cast<int32_t>(emb_at[block] + pos * dim);  // < E_tot, checked to fit
  }
  if (owned == nullptr) {
    for (int64_t i = 0; i < n; ++i) raw[i] = offset_of[raw[i]];
  } else {
    for (int64_t k = 0; k < n; ++k) raw[owned[k]] = offset_of[raw[owned[k]]];
  }
}

// The chunk c of n ids cut into `chunks` chunks: ids [lo, hi).
inline std::pair<int64_t, int64_t> ChunkRange(int64_t n, int64_t chunks, int64_t c) {
  return {n * c / chunks, n * (c + 1) / chunks};
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

  // Tasks: one per (batch element, table), or per shard range of a partitioned table.
  const int64_t workers =
      batch * total >= kMinIdsForThreads ? std::max<int64_t>(1, pool.num_threads()) : 1;
  const int64_t usable_shards = num_shards - first_shard;
  const int64_t share = std::max<int64_t>(1, batch * total / workers);
  std::vector<int64_t> ranges(num_tables), order(num_tables);
  std::vector<char> partitioned(num_tables);
  for (int64_t m = 0; m < num_tables; ++m) {
    const int64_t n = length[m];
    const int64_t shares = CeilDiv(n, share);
    partitioned[m] = n > kPartitionAbove || (n >= kMinIdsPerSplit && shares > kMaxScannedRanges);
    ranges[m] = partitioned[m]             ? std::max(CeilDiv(n, kIdsPerRange), shares)
                : n >= kMinIdsPerSplit ? shares
                                       : 1;
    ranges[m] = std::clamp<int64_t>(ranges[m], 1, usable_shards);
    partitioned[m] = partitioned[m] && ranges[m] > 1;
    order[m] = m;
  }
  // Largest tasks first (tables by ids per task, each for every batch element): the pool's threads
  // then finish together.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return length[a] / ranges[a] > length[b] / ranges[b];
  });
  Lease<CallScratch> call_scratch;
  call_scratch->Prepare(batch * total, workers);
  std::vector<WorkerScratch>& scratch = call_scratch->workers;
  std::vector<Task>& tasks = call_scratch->tasks;
  tasks.clear();
  // A partitioned table's keys start at part_at[m] in PartitionScratch, and the tasks of its
  // batch element b and range g are tasks[first_task[m] + b * ranges[m] + g].
  std::vector<int64_t> part_at(num_tables, -1), first_task(num_tables);
  int64_t partitioned_ids = 0, num_scanned = 0;
  for (int64_t m : order) {
    first_task[m] = static_cast<int64_t>(tasks.size());
    if (partitioned[m]) {
      part_at[m] = partitioned_ids;
      partitioned_ids += batch * length[m];
    }
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t g = 0; g < ranges[m]; ++g) {
        const bool scanned = ranges[m] > 1 && !partitioned[m];
        tasks.push_back({b, m, first_shard + usable_shards * g / ranges[m],
                         first_shard + usable_shards * (g + 1) / ranges[m],
                         scanned ? num_scanned++ : -1,
                         partitioned[m] ? part_at[m] + b * length[m] : -1});
      }
    }
  }
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const int64_t blocks = num_shards * num_tables;
  const ShardFn shard_of(num_shards, first_shard);

  // Partitioned tables: each batch element's ids grouped by shard range (a stable partition), into
  // PartitionScratch::keys; each id's slot of the offsets output meanwhile holds its place there.
  Lease<PartitionScratch<T>> partition;
  if (partitioned_ids > 0) partition->Prepare(partitioned_ids);
  for (int64_t m = 0; m < num_tables; ++m) {
    if (!partitioned[m]) continue;
    std::vector<int32_t> range_of_shard(num_shards, 0);
    for (int64_t g = 0; g < ranges[m]; ++g) {  // the shards of range g: those of its tasks
      const Task& range = tasks[first_task[m] + g];
      std::fill(range_of_shard.begin() + range.lo, range_of_shard.begin() + range.hi, g);
    }
    const T* x = data[m];
    const int64_t n = length[m], x_stride = stride[m];
    StablePartition<RangeOfId<T>> by_range(
        &pool, workers, RangeOfId<T>{x, x_stride, shard_of, range_of_shard.data()}, batch, n,
        ranges[m]);
    std::vector<int64_t> range_start(batch * (ranges[m] + 1));  // [b][range], then the end
    FFI_RETURN_IF_ERROR(by_range.Count(op, "ids_list entry", nullptr, range_start.data()));
    T* keys = partition->keys.data() + part_at[m];
    int32_t* raw = offsets + start[m];
    FFI_RETURN_IF_ERROR(by_range.Run([&](int64_t b, int64_t i, int64_t dest) {
      keys[b * n + dest] = x[b * x_stride + i];
      raw[b * total + i] = static_cast<int32_t>(dest);
    }));
    for (int64_t b = 0, t = first_task[m]; b < batch; ++b) {  // each range task's keys
      const int64_t* start = range_start.data() + b * (ranges[m] + 1);
      for (int64_t g = 0; g < ranges[m]; ++g, ++t) {
        tasks[t].begin = start[g];
        tasks[t].count = start[g + 1] - start[g];
      }
    }
  }

  std::vector<Lease<ShardRangeScratch>> keep(num_scanned);
  std::vector<int32_t>& task_unique = call_scratch->task_unique;
  task_unique.resize(num_tasks);
  std::vector<IndexLease> indexes(workers);  // one pooled hash index per worker, for all its tasks
  // A task's ids, the slots of their unique numbers (later fused offsets), and the place of its
  // distinct ids: a whole table's (also read by its scanned ranges) in place; a partitioned
  // range's in its table's partition.
  struct TaskIds {
    const T* x;
    int64_t n;
    int32_t* raw;
    int64_t distinct_at;  // in CallScratch::distinct / distinct_shard
  };
  auto task_ids = [&](const Task& task) {
    const int64_t m = task.table, at = task.batch * total + start[m];
    if (task.part < 0) {
      return TaskIds{data[m] + task.batch * stride[m], length[m], offsets + at, at};
    }
    const int64_t p = task.part + task.begin;
    return TaskIds{partition->keys.data() + p, task.count, partition->uids.data() + p,
                   at + task.begin};
  };

  // Phase 1: dedup, block counts, and each id's unique number.
  for (int64_t b = 0; b < batch; ++b) {  // shards below first_shard get no ids
    std::fill(slot_counts + b * blocks, slot_counts + b * blocks + first_shard * num_tables, 0);
  }
  FFI_RETURN_IF_ERROR(ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t worker) {
    const Task& task = tasks[t];
    const TaskIds ids = task_ids(task);
    uint64_t* distinct = call_scratch->distinct.data() + ids.distinct_at;
    int32_t* distinct_shard = call_scratch->distinct_shard.data() + ids.distinct_at;
    // Block sizes are counted in per-worker memory: tasks of other tables own neighbouring entries
    // of slot_counts, and sharing those cache lines between threads would cost a miss per new id.
    std::vector<int32_t>& counts = scratch[worker].counts;
    counts.assign(task.hi - task.lo, 0);
    if (task.keep >= 0) keep[task.keep]->Clear();
    // Index sized for all the ids when few, else from a prefix (id_index.h).
    IdIndex& index = *indexes[worker];
    const int64_t sample = std::min(ids.n, FirstSizing(ids.n));
    index.Reset(sample);
    int32_t unique = 0;
    for (int64_t begin = 0; begin < ids.n;) {
      const int64_t end = begin == 0 ? sample : ids.n;
      unique = WithProbe(index, [&](auto probe) {
        constexpr Probe kProbe = decltype(probe)::value;
        if (task.keep < 0) {
          return DedupTable<kProbe>(ids.x, begin, end, shard_of, task.lo, index, counts.data(),
                                    ids.raw, unique, distinct, distinct_shard);
        }
        return DedupShardRange<kProbe>(ids.x, begin, end, shard_of, task.lo, task.hi, index,
                                       counts.data(), ids.raw, unique, *keep[task.keep]);
      });
      if (begin == 0 && end < ids.n) index.Reserve(ExpectedUnique(unique, sample, ids.n));
      begin = end;
    }
    task_unique[t] = unique;
    int32_t* block_sizes = slot_counts + task.batch * blocks + task.table;  // block (s, m) at [s * M]
    for (int64_t s = task.lo; s < task.hi; ++s) block_sizes[s * num_tables] = counts[s - task.lo];
    return ffi::Error::Success();
  }));

  // Phase 2: block layout per batch element.
  std::vector<int64_t>& id_base = call_scratch->id_base;
  std::vector<int64_t>& emb_base = call_scratch->emb_base;
  id_base.resize(batch * blocks);  // every entry is written by FusedBlockLayout
  emb_base.resize(batch * blocks);
  std::vector<int64_t> pad_before(batch + 1, 0);  // padding of the id output before element b
  for (int64_t b = 0; b < batch; ++b) {
    int64_t unique, floats;
    FusedBlockLayout(slot_counts + b * blocks, dims.begin(), num_shards, num_tables,
                     id_base.data() + b * blocks, emb_base.data() + b * blocks,
                     shard_sizes + b * num_shards, &unique, &floats);
    FFI_ASSIGN_OR_RETURN(emb_total[b], CheckedInt32(floats, op, "fused_embedding_size"));
    num_unique[b] = static_cast<int32_t>(unique);
    pad_before[b + 1] = pad_before[b] + total - unique;
  }

  // Phase 3: distinct ids to their block positions; unique numbers to fused offsets. Each task also
  // zero-fills its share of the id output's padding, all batch elements' padding taken as one
  // range (8 MiB for 1e6 ids, ~1 ms on one thread).
  FFI_RETURN_IF_ERROR(ParallelFor(&pool, num_tasks, workers, [&](int64_t t, int64_t worker) {
    auto [lo, hi] = ChunkRange(pad_before[batch], num_tasks, t);  // this task's padding
    for (int64_t b = std::upper_bound(pad_before.begin(), pad_before.end(), lo) - pad_before.begin() - 1;
         lo < hi; ++b) {
      const int64_t end = std::min(hi, pad_before[b + 1]);  // within element b's padding
      T* pad_at = out_ids + b * total + num_unique[b] - pad_before[b];
      std::fill(pad_at + lo, pad_at + end, T{0});
      lo = end;
    }
    const Task& task = tasks[t];
    const TaskIds ids = task_ids(task);
    std::vector<int32_t>& positions = scratch[worker].counts;
    positions.assign(task.hi - task.lo, 0);
    std::vector<int32_t>& offset_of = scratch[worker].offsets;
    if (offset_of.size() < static_cast<size_t>(task_unique[t])) offset_of.resize(task_unique[t]);
    const int64_t block0 = task.batch * blocks + task.table;
    const ShardRangeScratch* kept = task.keep < 0 ? nullptr : &*keep[task.keep];
    PlaceDistinctIds(kept ? kept->distinct.data() : call_scratch->distinct.data() + ids.distinct_at,
                     kept ? kept->distinct_shard.data()
                          : call_scratch->distinct_shard.data() + ids.distinct_at,
                     task_unique[t], kept ? kept->owned.data() : nullptr,
                     kept ? static_cast<int64_t>(kept->owned.size()) : ids.n, task.lo, num_tables,
                     dims[task.table], id_base.data() + block0, emb_base.data() + block0,
                     positions.data(), offset_of.data(), out_ids + task.batch * total, ids.raw);
    return ffi::Error::Success();
  }));

  // Last pass: each id of a partitioned table gets the fused offset found at its place among the
  // keys (uids now hold fused offsets), chunk by chunk.
  for (int64_t m = 0; m < num_tables; ++m) {
    if (!partitioned[m]) continue;
    const int64_t n = length[m], chunks = CeilDiv(n, kPartitionChunk);
    FFI_RETURN_IF_ERROR(ParallelFor(&pool, batch * chunks, workers, [&](int64_t t, int64_t) {
      const int64_t b = t / chunks;
      const auto [lo, hi] = ChunkRange(n, chunks, t % chunks);
      int32_t* raw = offsets + b * total + start[m];
      const int32_t* fused_at = partition->uids.data() + part_at[m] + b * n;
      for (int64_t i = lo; i < hi; ++i) raw[i] = fused_at[raw[i]];
      return ffi::Error::Success();
    }));
  }
  return ffi::Error::Success();
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
