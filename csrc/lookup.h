// The machinery of the id-lookup ops (map_id_to_embedding, gather_embeddings_by_input and their
// gradients): rows of several tables addressed by one row number, an id -> row hash map built in
// parallel, a row gather that resolves each output row's source (through the map or an index
// array) and copies it, and its deterministic transpose, a row scatter-add. Host only.
#ifndef JAX_DISTOPS_CSRC_LOOKUP_H_
#define JAX_DISTOPS_CSRC_LOOKUP_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "ffi_helpers.h"
#include "id_index.h"
#include "partition.h"
#include "rows.h"

namespace jax_distops {

// Ids (or rows) per task below which a lookup is not worth a task of its own.
inline constexpr int64_t kLookupRowsPerTask = 1 << 14;
// Source rows are prefetched this many rows ahead, and scatter-add targets this many rows ahead.
// (Gathering 1e6 rows of 64 bytes: 8.8-9.1 ms 16 ahead, 6.9-7.3 ms 32 ahead, about the same 64 ahead.)
inline constexpr int64_t kLookupPrefetch = 32;
inline constexpr int64_t kScatterPrefetch = 64;
// ScatterAddByRange: output rows per range (about this many bytes), and the fewest lookups for
// which ScatterAddRows takes it.
inline constexpr size_t kScatterRangeBytes = size_t{256} << 10;
inline constexpr int64_t kScatterByRangeMinLookups = 1 << 16;

// Workers of a lookup call: the pool's threads, or only the calling thread when the user asked for
// one thread (Monolith's use_multi_threads = false). Small calls run inline whatever this says:
// their tasks are at least kLookupRowsPerTask items.
inline int64_t LookupWorkers(const ffi::ThreadPool& pool, bool use_threads) {
  return use_threads ? std::max<int64_t>(1, pool.num_threads()) : 1;
}

// Rows of S tables, each a separate buffer [*batch?, K_s, row] (batch stride 0 when the table is
// shared by the batch), addressed by one row number r = (rows of the tables before s) + j.
class TableRows {
 public:
  explicit TableRows(size_t row_bytes) : row_bytes_(row_bytes) {}

  // Appends a table of `rows` rows at `data`, `batch_stride` bytes apart per batch element.
  void Add(char* data, int64_t rows, int64_t batch_stride) {
    data_.push_back(data);
    stride_.push_back(batch_stride);
    start_.push_back(start_.back() + rows);
  }

  size_t row_bytes() const { return row_bytes_; }
  int64_t num_rows() const { return start_.back(); }
  int64_t num_tables() const { return static_cast<int64_t>(data_.size()); }
  int64_t start(int64_t s) const { return start_[s]; }

  // The table holding row r (tables without rows hold none): the number of tables after the first
  // that start at or before r. Up to 16 tables that count is taken without branches, which
  // mispredict on random rows.
  __attribute__((always_inline)) int64_t TableOf(int64_t r) const {
    const int64_t n = num_tables();
    if (n == 1) return 0;
    if (n <= 16) {
      int64_t s = 0;
      for (int64_t i = 1; i < n; ++i) s += r >= start_[i];
      return s;
    }
    return std::upper_bound(start_.begin() + 1, start_.end(), r) - start_.begin() - 1;
  }

  __attribute__((always_inline)) char* Row(int64_t b, int64_t r) const {
    const int64_t s = TableOf(r);
    return data_[s] + b * stride_[s] + (r - start_[s]) * static_cast<int64_t>(row_bytes_);
  }

  // Calls fn(pointer, first_row, count) for each table's contiguous piece of rows [r0, r1).
  template <typename Fn>
  void ForEachSpan(int64_t b, int64_t r0, int64_t r1, Fn&& fn) const {
    for (int64_t s = r0 < r1 ? TableOf(r0) : num_tables(); s < num_tables() && start_[s] < r1; ++s) {
      const int64_t lo = std::max(r0, start_[s]), hi = std::min(r1, start_[s + 1]);
      if (lo < hi) fn(Row(b, lo), lo, hi - lo);
    }
  }

 private:
  size_t row_bytes_;
  std::vector<char*> data_;
  std::vector<int64_t> stride_;
  std::vector<int64_t> start_{0};
};

// S id arrays, each [*batch?, K_s] (batch stride 0 when shared by the batch), read one after the
// other: the id at position j of array s belongs to row (ids before array s) + j.
template <typename T>
struct IdArrays {
  std::vector<const T*> data;
  std::vector<int64_t> length;
  std::vector<int64_t> stride;
  bool batched = false;  // true if any array carries the batch dimensions

  void Add(const T* ids, int64_t n, int64_t batch_stride) {
    data.push_back(ids);
    length.push_back(n);
    stride.push_back(batch_stride);
    batched = batched || batch_stride != 0;
  }
};

// The row of each looked-up id: rows[b * n + i] is the row of the first occurrence of id
// input[b][i] among IdArrays (Monolith: "the first mapping wins"), or -1 if it has none. There is
// one map per batch element when the ids are batched, one shared by the batch otherwise.
//
// A partitioned hash join: the ids of the map (with their rows) and the looked-up ids are first
// sorted into P partitions by hash bits (HashBucket), each side keeping its order within a
// partition, then each partition builds its own hash index and answers its lookups, in partition
// order. A last pass walks the lookups again in their own order and takes each one's answer: the
// next lookup of a chunk in partition p has the next answer of that chunk's share of p. So the
// looked-up ids are partitioned without their positions and no answer is stored at a random place
// (against 16-byte entries carrying positions, answers stored at them: the gather forward of 1e6
// lookups of 5e5 ids, d16, calls of both interleaved in one process, 12.5 -> 12.1 and 13.1 -> 12.7
// ms; of 1e6 ids 13.9 -> 13.4 ms; the map forward and gradient unchanged).
//
// P is chosen so that a partition's index fits a core's L2 cache: probing one hash index
// of a million ids instead misses the cache on every insert and every lookup. (Measured, 1e6 ids
// and 1e6 lookups, one thread: 12.5 ms partitioned against 23.5 ms direct; it also runs the build
// in parallel over partitions, which the direct build could not do without a branch per id.)
// The partition passes and the partitions run as parallel tasks; the scratch is pooled.
class IdRows {
 public:
  template <typename T>
  ffi::Error Join(ffi::ThreadPool* pool, int64_t workers, const IdArrays<T>& ids, int64_t batch,
                  const T* input, int64_t input_stride, int64_t n) {
    int64_t num_keys = 0;  // ids per map
    for (int64_t k : ids.length) num_keys += k;
    const int64_t maps = ids.batched ? batch : 1;
    const int64_t queries = maps == 0 ? 0 : batch * n / maps;  // lookups per map
    int64_t parts = 1;  // a power of two
    while (parts < kMaxJoinParts &&
           (num_keys / parts > kJoinKeysPerPart ||
            (parts < 2 * workers && queries * maps / parts >= kLookupRowsPerTask))) {
      parts *= 2;
    }
    const int64_t key_chunks = std::clamp<int64_t>(num_keys / kJoinChunk, 1, 2 * workers);
    const int64_t query_chunks = std::clamp<int64_t>(queries / kJoinChunk, 1, 2 * workers);
    const int64_t chunks = key_chunks + query_chunks;  // per map: key chunks, then query chunks
    Scratch& sc = *scratch_;
    sc.Prepare(maps * num_keys, batch * n);
    std::vector<int64_t> cursor(maps * chunks * parts, 0);  // counts, then write positions

    // The entries chunk c covers: a range of the map's ids (rows), or of its lookups.
    auto chunk_range = [&](int64_t c) {
      const bool keys = c < key_chunks;
      const int64_t total = keys ? num_keys : queries, k = keys ? key_chunks : query_chunks;
      const int64_t i = keys ? c : c - key_chunks;
      return std::pair<int64_t, int64_t>(total * i / k, total * (i + 1) / k);
    };
    auto for_each_key = [&](int64_t g, int64_t lo, int64_t hi, auto&& fn) {  // fn(key, row)
      int64_t row = 0;
      for (size_t s = 0; s < ids.data.size(); ++s) {
        const int64_t len = ids.length[s];
        const T* x = ids.data[s] + g * ids.stride[s];
        for (int64_t j = std::max<int64_t>(lo - row, 0); j < std::min(hi - row, len); ++j) {
          fn(static_cast<uint64_t>(x[j]), row + j);
        }
        row += len;
      }
    };
    auto for_each_query = [&](int64_t g, int64_t lo, int64_t hi, auto&& fn) {  // fn(key, b * n + i)
      if (lo >= hi) return;
      int64_t q = g * queries + lo, b = q / n, i = q % n;  // (no division per id: ~4 ns each)
      for (const int64_t end = g * queries + hi; q < end; ++b, i = 0) {
        const T* x = input + b * input_stride;
        for (const int64_t stop = std::min(end, q + n - i); q < stop; ++q, ++i) {
          fn(static_cast<uint64_t>(x[i]), q);
        }
      }
    };
    auto for_each = [&](int64_t g, int64_t c, auto&& fn) {
      const auto [lo, hi] = chunk_range(c);
      if (c < key_chunks) {
        for_each_key(g, lo, hi, fn);
      } else {
        for_each_query(g, lo, hi, fn);
      }
    };

    // Pass 1: partition sizes per chunk.
    FFI_RETURN_IF_ERROR(ParallelFor(pool, maps * chunks, workers, [&](int64_t t, int64_t) {
      int64_t* count = cursor.data() + t * parts;
      for_each(t / chunks, t % chunks, [&](uint64_t key, int64_t) { ++count[Part(key, parts)]; });
      return ffi::Error::Success();
    }));
    // Where each chunk writes each partition: partitions in order, chunks in order within them.
    std::vector<int64_t> part_keys(maps * (parts + 1)), part_queries(maps * (parts + 1));
    for (int64_t g = 0; g < maps; ++g) {  // the key chunks, then the query chunks, of map g
      int64_t* counts = cursor.data() + g * chunks * parts;
      CountsToPositions(counts, key_chunks, parts, g * num_keys, part_keys.data() + g * (parts + 1));
      CountsToPositions(counts + key_chunks * parts, query_chunks, parts, g * queries,
                        part_queries.data() + g * (parts + 1));
    }
    // Pass 2: every id to its partition: a map id with its row, a looked-up id alone (its
    // position is not stored: pass 4 finds its answer by walking the lookups again in order).
    // `start` keeps where each chunk's share of each partition begins.
    const std::vector<int64_t> start = cursor;
    FFI_RETURN_IF_ERROR(ParallelFor(pool, maps * chunks, workers, [&](int64_t t, int64_t) {
      int64_t* at = cursor.data() + t * parts;
      if (t % chunks < key_chunks) {
        KeyEntry* to = sc.keys.data();
        for_each(t / chunks, t % chunks, [&](uint64_t key, int64_t row) {
          to[at[Part(key, parts)]++] = KeyEntry{key, static_cast<int32_t>(row)};
        });
      } else {
        uint64_t* to = sc.queries.data();
        for_each(t / chunks, t % chunks,
                 [&](uint64_t key, int64_t) { to[at[Part(key, parts)]++] = key; });
      }
      return ffi::Error::Success();
    }));
    // Pass 3: per partition, an index of its ids (first occurrence wins), then the row of each of
    // its lookups, in partition order.
    std::vector<IndexLease> indexes(workers);  // one pooled hash index per worker
    FFI_RETURN_IF_ERROR(ParallelFor(pool, maps * parts, workers, [&](int64_t t, int64_t worker) {
      const int64_t g = t / parts, p = t % parts;
      const KeyEntry* keys = sc.keys.data();
      const int64_t k0 = part_keys[g * (parts + 1) + p], k1 = part_keys[g * (parts + 1) + p + 1];
      const int64_t q0 = part_queries[g * (parts + 1) + p], q1 = part_queries[g * (parts + 1) + p + 1];
      IdIndex& index = *indexes[worker];
      index.Reset(k1 - k0);
      int64_t size = 0;
      for (int64_t k = k0; k < k1; ++k) {
        bool inserted;
        index.FindOrInsert(keys[k].key, keys[k].row, size, &inserted);
        size += inserted;
      }
      const uint64_t* queries_of = sc.queries.data();
      int32_t* found = sc.found.data();
      for (int64_t q = q0; q < q1; ++q) found[q] = index.Find(queries_of[q]);
      return ffi::Error::Success();
    }));
    // Pass 4: the rows in lookup order. Each query chunk walks its lookups again; the answer of
    // its next lookup in partition p is the next one of its share of p (partitioning kept order).
    return ParallelFor(pool, maps * query_chunks, workers, [&](int64_t t, int64_t) {
      const int64_t g = t / query_chunks, c = key_chunks + t % query_chunks;
      const int64_t* from = start.data() + (g * chunks + c) * parts;
      std::vector<int64_t> next(from, from + parts);
      const int32_t* found = sc.found.data();
      int32_t* rows = sc.rows.data();
      for_each(g, c, [&](uint64_t key, int64_t q) {
        const int64_t at = next[Part(key, parts)]++;
        // The chunk reads its share of each partition as a stream, and the partitions in random
        // order: too many streams for the hardware prefetcher (without this pass 4 took ~3x as long).
        __builtin_prefetch(found + at + kFoundAhead);
        rows[q] = found[at];
      });
      return ffi::Error::Success();
    });
  }

  const int32_t* rows() const { return scratch_->rows.data(); }

 private:
  // A partition's index holds at most this many ids on average (a 128 KiB index at load 1/4).
  // Measured per pass (count, partition, probe; 1e6 lookups, 2 threads) against 8192: 5e5 ids
  // 0.8 + 3.6 + 2.8 -> 0.7 + 2.3 + 2.6 ms, 1e6 ids 0.9 + 3.3 + 3.6 -> 0.8 + 2.4 + 3.5 ms. The
  // partition pass is the one that gains; with exactly 64 partitions it runs at half speed on the
  // project VM (a standalone partitioning loop too: 64 write streams took twice as long as 32 or
  // 128), and 8192 gave 64 partitions for 5e5 ids.
  static constexpr int64_t kJoinKeysPerPart = 2048;
  static constexpr int64_t kMaxJoinParts = 4096;
  // Ids per partitioning task, at least.
  static constexpr int64_t kJoinChunk = 1 << 16;
  // Pass 4 prefetches the answers of a partition this many entries ahead (two cache lines).
  static constexpr int64_t kFoundAhead = 32;

  struct __attribute__((packed)) KeyEntry {  // 12 bytes
    uint64_t key;
    int32_t row;
  };
  struct Scratch {
    std::vector<KeyEntry> keys;     // map ids and their rows, partition by partition
    std::vector<uint64_t> queries;  // looked-up ids, partition by partition
    std::vector<int32_t> found;     // their rows, in the same order
    std::vector<int32_t> rows;      // their rows, in lookup order
    void Prepare(int64_t num_keys, int64_t num_queries) {
      const size_t k = static_cast<size_t>(num_keys), q = static_cast<size_t>(num_queries);
      if (keys.size() < k) keys.resize(k);
      if (queries.size() < q) queries.resize(q);
      if (found.size() < q + kFoundAhead) found.resize(q + kFoundAhead);  // (prefetched ahead)
      if (rows.size() < q) rows.resize(q);
    }
    void ReleaseAbove(int64_t max_bytes) {
      const size_t bytes = keys.capacity() * sizeof(KeyEntry) + queries.capacity() * 8 +
                           (found.capacity() + rows.capacity()) * 4;
      if (static_cast<int64_t>(bytes) > max_bytes) *this = Scratch();
    }
  };

  static int64_t Part(uint64_t key, int64_t parts) { return parts == 1 ? 0 : HashBucket(key, parts); }

  Lease<Scratch> scratch_;
};

// Resolves output rows through IdRows: row i of batch element b is the row of input id
// ids[b][i]; optionally records it in `mapping` ([batch, n]). A missing id fails with Monolith's
// message "Unable to map id <id>".
template <typename T, typename Mapping>
struct MapResolver {
  const char* op;
  const char* input_arg;  // the argument holding the ids, e.g. "input"
  const char* map_arg;    // the argument the map was built from, e.g. "ids_list"
  const int32_t* rows;    // IdRows::rows()
  const T* input;
  int64_t input_stride;  // 0 when the input is shared by the batch
  int64_t n;
  Mapping* mapping;  // may be null

  int64_t Row(int64_t b, int64_t i) const {
    const int32_t r = rows[b * n + i];
    if (mapping != nullptr && r >= 0) mapping[b * n + i] = static_cast<Mapping>(r);
    return r;
  }
  ffi::Error Error(int64_t b, int64_t i) const {
    return InvalidArgument(op, "Unable to map id " + std::to_string(input[b * input_stride + i]) +
                                   " (" + input_arg + " position " + std::to_string(b * n + i) +
                                   "; the id is in none of " + map_arg + ")");
  }
};

// Resolves output rows through an index array: row i of batch element b is index[b][i], which must
// lie in [0, num_rows).
template <typename Index>
struct IndexResolver {
  const char* op;
  const char* index_arg;
  const Index* index;
  int64_t index_stride;  // 0 when shared by the batch
  int64_t num_rows;

  int64_t Row(int64_t b, int64_t i) const {
    const int64_t r = static_cast<int64_t>(index[b * index_stride + i]);
    return r >= 0 && r < num_rows ? r : -1;
  }
  ffi::Error Error(int64_t b, int64_t i) const {
    return InvalidArgument(op, std::string(index_arg) + " has value " +
                                   std::to_string(index[b * index_stride + i]) + " at position " +
                                   std::to_string(b * index_stride + i) + ", outside [0, " +
                                   std::to_string(num_rows) + ")");
  }
};

// Tasks of a parallel pass over `batch` x `n` items: chunks of at least kLookupRowsPerTask items,
// a few per worker.
struct Chunks {
  int64_t per_batch, size;
  Chunks(int64_t batch, int64_t n, int64_t workers) {
    per_batch = 1;
    if (workers > 1 && batch > 0 && batch < 4 * workers) {  // (batch 0: no tasks at all)
      per_batch = std::max<int64_t>(1, std::min((4 * workers + batch - 1) / batch,
                                                n / kLookupRowsPerTask));
    }
    size = (n + per_batch - 1) / std::max<int64_t>(per_batch, 1);
  }
};

// out[b][i] = src row resolver.Row(b, i), for `batch` x `n` output rows of src.row_bytes() bytes.
// With src == nullptr only resolves (for the resolver's side effects and errors). Software
// pipeline: row i + A is resolved and its source row prefetched while row i is copied
// (A = kLookupPrefetch), so the random reads of the table overlap instead of stalling one by one.
template <typename Resolver>
ffi::Error GatherRows(ffi::ThreadPool* pool, int64_t workers, int64_t batch, int64_t n,
                      const TableRows* src, char* out, const Resolver& resolver) {
  constexpr int64_t kAhead = kLookupPrefetch;
  const Chunks chunks(batch, n, workers);
  const size_t row_bytes = src != nullptr ? src->row_bytes() : 0;
  AdviseHugePages(out, static_cast<size_t>(batch * n) * row_bytes);
  const bool prefetch =
      src != nullptr && static_cast<size_t>(src->num_rows()) * row_bytes > kRowPrefetchAboveBytes;
  return ParallelFor(pool, batch * chunks.per_batch, workers, [&](int64_t t, int64_t) {
    const int64_t b = t / chunks.per_batch;
    const int64_t begin = std::min(n, (t % chunks.per_batch) * chunks.size);
    const int64_t end = std::min(n, begin + chunks.size);
    return DispatchRowBytes(row_bytes, [&](auto row_size) -> ffi::Error {
      constexpr size_t kRowBytes = decltype(row_size)::value;
      char* dst = out + b * n * static_cast<int64_t>(row_bytes);
      const char* ring[kAhead];  // source rows of i .. i + kAhead - 1
      for (int64_t j = begin; j < end; ++j) {
        const int64_t r = resolver.Row(b, j);
        if (r < 0) return resolver.Error(b, j);
        if (src == nullptr) continue;
        const char* row = src->Row(b, r);
        if (prefetch) PrefetchRow(row, row_bytes);
        const int64_t i = j - kAhead;  // copied first: row j takes its place in the ring
        if (i >= begin) CopyRow<kRowBytes>(dst + i * row_bytes, ring[i % kAhead], row_bytes);
        ring[j % kAhead] = row;
      }
      if (src != nullptr) {
        for (int64_t i = std::max(begin, end - kAhead); i < end; ++i) {
          CopyRow<kRowBytes>(dst + i * row_bytes, ring[i % kAhead], row_bytes);
        }
      }
      return ffi::Error::Success();
    });
  });
}

// ScatterAddRows for one batch element b of a large output, in parallel and in the same order:
// the adds are first sorted by output row range (partition.h's StablePartition, whose passes run
// over chunks of the lookups in parallel and keep k order within each range), then each range is
// zeroed and summed by one task, in k order, in a slice of the output small enough to stay in the
// core's cache. Every output row gets the same adds in the same order as the sequential loop, so
// the sums are bit-identical to it whatever the thread count. Float and double only (bfloat16 sums
// in a float32 scratch on the sequential path).
struct ScatterScratch {
  std::vector<uint64_t> adds;  // (row << 32) | k, range by range
  void ReleaseAbove(int64_t max_bytes) {
    if (static_cast<int64_t>(adds.capacity() * 8) > max_bytes) adds = std::vector<uint64_t>();
  }
};

template <typename T, typename Resolver>
ffi::Error ScatterAddByRange(ffi::ThreadPool* pool, int64_t workers, int64_t b, int64_t n,
                             const T* g, int64_t width, const TableRows& dst,
                             const Resolver& resolver) {
  const int64_t rows = dst.num_rows();
  const size_t row_bytes = static_cast<size_t>(width) * sizeof(T);
  int shift = 0;  // ranges of 2^shift rows, about kScatterRangeBytes each
  while ((size_t{2} << shift) * row_bytes <= kScatterRangeBytes) ++shift;
  const int64_t ranges = ((rows - 1) >> shift) + 1;
  // The range of add k (a bad row, -1, has none: StablePartition then reports it).
  auto range_of = [&resolver, b, shift](int64_t, int64_t k) { return resolver.Row(b, k) >> shift; };
  StablePartition<decltype(range_of)> by_range(pool, workers, range_of, 1, n, ranges);
  std::vector<int64_t> range_start(ranges + 1);
  FFI_RETURN_IF_ERROR(by_range.Count(nullptr, range_start.data(),
                                     [&](int64_t, int64_t k) { return resolver.Error(b, k); }));
  Lease<ScatterScratch> scratch;
  std::vector<uint64_t>& adds = scratch->adds;
  if (adds.size() < static_cast<size_t>(n)) adds.resize(n);
  FFI_RETURN_IF_ERROR(by_range.Run([&](int64_t, int64_t k, int64_t dest) {
    adds[dest] = static_cast<uint64_t>(resolver.Row(b, k)) << 32 | static_cast<uint64_t>(k);
  }));
  return ParallelFor(pool, ranges, workers, [&](int64_t q, int64_t) {
    const int64_t r0 = q << shift, r1 = std::min(rows, (q + 1) << shift);
    dst.ForEachSpan(b, r0, r1, [&](char* ptr, int64_t, int64_t count) {
      std::memset(ptr, 0, static_cast<size_t>(count) * row_bytes);
    });
    const uint64_t* add = adds.data();
    const int64_t end = range_start[q + 1];
    return DispatchRowBytes(row_bytes, [&](auto row_size) -> ffi::Error {
      constexpr int64_t kWidth = static_cast<int64_t>(decltype(row_size)::value / sizeof(T));
      for (int64_t i = range_start[q]; i < end; ++i) {
        if (i + kScatterPrefetch < end) {  // the grads rows of a range are scattered
          const int64_t ahead = static_cast<int64_t>(add[i + kScatterPrefetch] & 0xffffffffu);
          PrefetchRow(g + ahead * width, row_bytes);
        }
        const int64_t r = static_cast<int64_t>(add[i] >> 32);
        const int64_t k = static_cast<int64_t>(add[i] & 0xffffffffu);
        AddRow<kWidth>(reinterpret_cast<T*>(dst.Row(b, r)), g + k * width, width);
      }
      return ffi::Error::Success();
    });
  });
}

// The transpose of GatherRows: dst rows = 0, then dst row resolver.Row(b, k) += grads[b][k] for
// k = 0, 1, ... in order (`width` elements per row), one task per batch element: every sum is
// taken in k order whatever the number of threads (deterministic), and the first bad row is
// reported. A batch smaller than the worker count, with a large float or double output, takes
// ScatterAddByRange instead: each element's adds in parallel, in the same order. T is float,
// double or BFloat16 (summed in float32, rounded once).
template <typename T, typename Resolver>
ffi::Error ScatterAddRows(ffi::ThreadPool* pool, int64_t workers, int64_t batch, int64_t n,
                          const T* grads, int64_t grads_stride, int64_t width,
                          const TableRows& dst, const Resolver& resolver) {
  using Acc = typename Accumulator<T>::type;
  constexpr bool kDirect = std::is_same_v<Acc, T>;  // sum in the output itself
  const int64_t rows = dst.num_rows();
  const size_t row_bytes = static_cast<size_t>(width) * sizeof(T);
  // A large output: its target rows are prefetched, and one batch element's adds may run in parallel.
  const bool large = static_cast<size_t>(rows * width) * sizeof(Acc) > kRowPrefetchAboveBytes;
  for (int64_t b = 0; b < batch; ++b) {
    dst.ForEachSpan(b, 0, rows, [&](char* ptr, int64_t, int64_t count) {
      AdviseHugePages(ptr, static_cast<size_t>(count) * row_bytes);
    });
  }
  if constexpr (kDirect) {  // fewer batch elements than workers: each one's adds in parallel
    if (workers > 1 && batch < workers && large && n >= kScatterByRangeMinLookups &&
        n <= std::numeric_limits<int32_t>::max() && rows <= std::numeric_limits<int32_t>::max()) {
      for (int64_t b = 0; b < batch; ++b) {
        FFI_RETURN_IF_ERROR(ScatterAddByRange(pool, workers, b, n, grads + b * grads_stride, width,
                                              dst, resolver));
      }
      return ffi::Error::Success();
    }
  }
  return ParallelFor(pool, batch, workers, [&](int64_t b, int64_t) -> ffi::Error {
    std::vector<Acc> scratch;
    if constexpr (kDirect) {
      dst.ForEachSpan(b, 0, rows, [&](char* ptr, int64_t, int64_t count) {
        std::memset(ptr, 0, static_cast<size_t>(count) * row_bytes);
      });
    } else {
      scratch.assign(static_cast<size_t>(rows * width), Acc{0});
    }
    // Where row r's sums go: the output row itself, or its float32 scratch row.
    auto target = [&](int64_t r) {
      if constexpr (kDirect) {
        return reinterpret_cast<Acc*>(dst.Row(b, r));
      } else {
        return scratch.data() + r * width;
      }
    };
    const T* g = grads + b * grads_stride;
    FFI_RETURN_IF_ERROR(DispatchRowBytes(row_bytes, [&](auto row_size) -> ffi::Error {
      constexpr int64_t kWidth = static_cast<int64_t>(decltype(row_size)::value / sizeof(T));
      for (int64_t k = 0; k < n; ++k) {
        if (large && k + kScatterPrefetch < n) {  // the rows it adds to are scattered
          const int64_t ahead = resolver.Row(b, k + kScatterPrefetch);
          if (ahead >= 0) PrefetchRow<true>(target(ahead), static_cast<size_t>(width) * sizeof(Acc));
        }
        const int64_t r = resolver.Row(b, k);
        if (r < 0) return resolver.Error(b, k);
        AddRow<kWidth>(target(r), g + k * width, width);
      }
      return ffi::Error::Success();
    }));
    if constexpr (!kDirect) {
      dst.ForEachSpan(b, 0, rows, [&](char* ptr, int64_t first, int64_t count) {
        T* to = reinterpret_cast<T*>(ptr);
        const Acc* from = scratch.data() + first * width;
        for (int64_t e = 0; e < count * width; ++e) to[e] = Accumulator<T>::Store(from[e]);
      });
    }
    return ffi::Error::Success();
  });
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_LOOKUP_H_
