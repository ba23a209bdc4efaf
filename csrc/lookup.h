// The machinery of the id-lookup ops (map_id_to_embedding, gather_embeddings_by_input and their
// gradients): rows of several tables addressed by one row number, an id -> row hash map built in
// parallel, a row gather that resolves each output row's source (through the map or an index
// array) and copies it, and its deterministic transpose, a row scatter-add. Host only.
#ifndef JAX_DISTOPS_CSRC_LOOKUP_H_
#define JAX_DISTOPS_CSRC_LOOKUP_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "ffi_helpers.h"
#include "id_index.h"
#include "rows.h"

namespace jax_distops {

// Ids (or rows) per task below which a lookup is not worth a task of its own.
inline constexpr int64_t kLookupRowsPerTask = 1 << 14;
// Hash-map slots are prefetched this many ids ahead, and scatter-add targets this many rows ahead.
inline constexpr int64_t kLookupPrefetch = 16;
inline constexpr int64_t kScatterPrefetch = 64;

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

// Maps each id to the row of its first occurrence in IdArrays (Monolith: "the first mapping wins").
// There is one map per batch element when the ids are batched, one shared map otherwise. Each map
// is `parts` hash indexes that split the ids by hash bits (HashBucket), so the parts are built in
// parallel; every part scans all ids in order, so "first" does not depend on the part count.
// (Building 1e6 distinct ids on 2 threads: ~13 ms when each part branched on ownership per id,
// ~7.5 ms with the branch-free gathering below; one thread alone takes ~13 ms.)
class IdRowMap {
 public:
  template <typename T>
  ffi::Error Build(ffi::ThreadPool* pool, int64_t workers, const IdArrays<T>& ids, int64_t batch) {
    int64_t total = 0;
    for (int64_t n : ids.length) total += n;
    num_maps_ = ids.batched ? batch : 1;
    num_parts_ = 1;  // a power of two
    while (num_parts_ < workers && total / (2 * num_parts_) >= kLookupRowsPerTask) num_parts_ *= 2;
    leases_.resize(num_maps_ * num_parts_);
    return ParallelFor(pool, num_maps_ * num_parts_, workers, [&](int64_t t, int64_t) {
      const int64_t map = t / num_parts_, part = t % num_parts_;
      IdIndex& index = *leases_[t];
      const int64_t expected = total / num_parts_;
      index.Reset(num_parts_ == 1 ? total : expected + expected / 8 + 64);
      // The ids this part owns are first gathered into a small buffer without a branch (a branch
      // on ownership mispredicts for every other id with 2 parts), then inserted with prefetching.
      uint64_t keys[kBuildBatch];
      int32_t rows[kBuildBatch];
      int64_t size = 0, count = 0;
      auto insert_gathered = [&] {
        for (int64_t k = 0; k < count; ++k) {
          if (k + kLookupPrefetch < count) __builtin_prefetch(index.SlotAddress(keys[k + kLookupPrefetch]));
          bool inserted;
          index.FindOrInsert(keys[k], rows[k], size, &inserted);
          size += inserted;
        }
        count = 0;
      };
      int64_t row = 0;
      for (size_t s = 0; s < ids.data.size(); ++s) {
        const T* x = ids.data[s] + map * ids.stride[s];
        const int64_t n = ids.length[s];
        for (int64_t j = 0; j < n; ++j) {
          const uint64_t key = static_cast<uint64_t>(x[j]);
          keys[count] = key;
          rows[count] = static_cast<int32_t>(row + j);
          count += Owns(part, key);
          if (count == kBuildBatch) insert_gathered();
        }
        row += n;
      }
      insert_gathered();
      return ffi::Error::Success();
    });
  }

  // The row of `key` in map `map` (0 when the map is shared), or -1 if it has none.
  int32_t Find(int64_t map, uint64_t key) const { return Part(map, key).Find(key); }
  // The slot to prefetch before looking `key` up. (Callers prefetch it themselves: GCC deems a
  // function whose only effect is a prefetch pure, and deletes calls to it.)
  const void* SlotAddress(int64_t map, uint64_t key) const { return Part(map, key).SlotAddress(key); }
  int64_t MapOf(int64_t b) const { return num_maps_ == 1 ? 0 : b; }

 private:
  static constexpr int64_t kBuildBatch = 512;

  bool Owns(int64_t part, uint64_t key) const {
    return num_parts_ == 1 || HashBucket(key, num_parts_) == part;
  }
  const IdIndex& Part(int64_t map, uint64_t key) const {
    return *leases_[map * num_parts_ + (num_parts_ == 1 ? 0 : HashBucket(key, num_parts_))];
  }

  int64_t num_maps_ = 1, num_parts_ = 1;
  std::vector<IndexLease> leases_;
};

// Resolves output rows through an IdRowMap: row i of batch element b is the row of input id
// ids[b][i]; optionally records it in `mapping` ([batch, n]). A missing id fails with Monolith's
// message "Unable to map id <id>".
template <typename T, typename Mapping>
struct MapResolver {
  const char* op;
  const char* input_arg;  // the argument holding the ids, e.g. "input"
  const char* map_arg;    // the argument the map was built from, e.g. "ids_list"
  const IdRowMap& map;
  const T* input;
  int64_t input_stride;  // 0 when the input is shared by the batch
  int64_t n;
  Mapping* mapping;  // may be null

  const void* PrefetchAddress(int64_t b, int64_t i) const {
    return map.SlotAddress(map.MapOf(b), static_cast<uint64_t>(input[b * input_stride + i]));
  }
  int64_t Row(int64_t b, int64_t i) const {
    const int32_t r = map.Find(map.MapOf(b), static_cast<uint64_t>(input[b * input_stride + i]));
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

  const void* PrefetchAddress(int64_t, int64_t) const { return nullptr; }
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
    if (workers > 1 && batch < 4 * workers) {
      per_batch = std::max<int64_t>(1, std::min((4 * workers + batch - 1) / batch,
                                                n / kLookupRowsPerTask));
    }
    size = (n + per_batch - 1) / std::max<int64_t>(per_batch, 1);
  }
};

// out[b][i] = src row resolver.Row(b, i), for `batch` x `n` output rows of src.row_bytes() bytes.
// With src == nullptr only resolves (for the resolver's side effects and errors). Software
// pipeline: the map slot of row i + 2A is prefetched, row i + A is resolved and its source row
// prefetched, and row i is copied (A = kLookupPrefetch), so the random reads of the map and of the
// table overlap instead of stalling one by one.
template <typename Resolver>
ffi::Error GatherRows(ffi::ThreadPool* pool, int64_t workers, int64_t batch, int64_t n,
                      const TableRows* src, char* out, const Resolver& resolver) {
  constexpr int64_t kAhead = kLookupPrefetch;
  const Chunks chunks(batch, n, workers);
  const size_t row_bytes = src != nullptr ? src->row_bytes() : 0;
  AdviseHugePages(out, static_cast<size_t>(batch * n) * row_bytes);
  return ParallelFor(pool, batch * chunks.per_batch, workers, [&](int64_t t, int64_t) {
    const int64_t b = t / chunks.per_batch;
    const int64_t begin = std::min(n, (t % chunks.per_batch) * chunks.size);
    const int64_t end = std::min(n, begin + chunks.size);
    return DispatchRowBytes(row_bytes, [&](auto row_size) -> ffi::Error {
      constexpr size_t kRowBytes = decltype(row_size)::value;
      char* dst = out + b * n * static_cast<int64_t>(row_bytes);
      const char* ring[kAhead];  // source rows of i .. i + kAhead - 1
      for (int64_t j = begin; j < end; ++j) {
        if (j + kAhead < end) {
          if (const void* slot = resolver.PrefetchAddress(b, j + kAhead)) __builtin_prefetch(slot);
        }
        const int64_t r = resolver.Row(b, j);
        if (r < 0) return resolver.Error(b, j);
        if (src == nullptr) continue;
        const char* row = src->Row(b, r);
        PrefetchRow(row, row_bytes);
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

// The transpose of GatherRows: dst rows = 0, then dst row resolver.Row(b, k) += grads[b][k] for
// k = 0, 1, ... in order (`width` elements per row), one task per batch element: every sum is
// taken in k order whatever the number of threads (deterministic), and the first bad row is
// reported. (Splitting one element's rows between threads measured slower: each thread must still
// read every k, and half of its branches mispredict.) T is float, double or BFloat16 (summed in
// float32, rounded once).
template <typename T, typename Resolver>
ffi::Error ScatterAddRows(ffi::ThreadPool* pool, int64_t workers, int64_t batch, int64_t n,
                          const T* grads, int64_t grads_stride, int64_t width,
                          const TableRows& dst, const Resolver& resolver) {
  using Acc = typename Accumulator<T>::type;
  constexpr bool kDirect = std::is_same_v<Acc, T>;  // sum in the output itself
  const int64_t rows = dst.num_rows();
  const size_t row_bytes = static_cast<size_t>(width) * sizeof(T);
  for (int64_t b = 0; b < batch; ++b) {
    dst.ForEachSpan(b, 0, rows, [&](char* ptr, int64_t, int64_t count) {
      AdviseHugePages(ptr, static_cast<size_t>(count) * row_bytes);
    });
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
        if (k + kScatterPrefetch < n) {  // the rows it adds to are scattered: hide the misses
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
