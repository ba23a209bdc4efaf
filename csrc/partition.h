// Stable partition of rows by a split index, in parallel: the core of split_by_indices (rows move to
// split-major order), its gradient (rows move back) and ragged_split_by_indices. Host only.
//
// For one batch element with n rows, row i goes to split part[i] in [0, S), and the rows of a split
// keep their order. Work is cut into chunks of consecutive rows; pass 1 counts each chunk's rows per
// split (and validates the split indices), a prefix sum over (split, chunk) gives every chunk its
// first destination in each split, and pass 2 walks each chunk again, handing every row its
// destination. Chunks of all batch elements are tasks of the same two parallel passes.
#ifndef JAX_DISTOPS_CSRC_PARTITION_H_
#define JAX_DISTOPS_CSRC_PARTITION_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ffi_helpers.h"

namespace jax_distops {

// The error for an index outside [0, bound) at `position` (flat, over the batch) of `arg`.
inline ffi::Error IndexOutOfRange(const char* op, const char* arg, int64_t value, int64_t position,
                                  int64_t bound) {
  return InvalidArgument(op, std::string(arg) + " has value " + std::to_string(value) +
                                 " at position " + std::to_string(position) + ", outside [0, " +
                                 std::to_string(bound) + ")");
}

// Rows per chunk below which a chunk is not worth a task.
inline constexpr int64_t kMinRowsPerChunk = 1 << 14;

// A part function's answer for a row that takes part in no split (it is neither counted nor visited).
inline constexpr int64_t kSkipRow = std::numeric_limits<int64_t>::min();

// Partition plan: for `batch` batch elements of `n` rows each, split into `num_splits` parts by
// `part(b, i)` (validated to lie in [0, num_splits), or kSkipRow).
//   Count(): rows per split of each batch element (written to `sizes[b * S + s]` as int32, and/or
//            as the first position of each split, then the end, to `starts[b * (S + 1) + s]`);
//   Run(visit): calls visit(b, i, dest) for every row, dest = its split-major stable position.
template <typename PartFn>
class StablePartition {
 public:
  StablePartition(ffi::ThreadPool* pool, int64_t workers, PartFn part, int64_t batch, int64_t n,
                  int64_t num_splits)
      : pool_(pool), part_(part), batch_(batch), n_(n), splits_(num_splits) {
    // Chunks per batch element: a few per worker, each worth a task, and few enough that the
    // per-(chunk, split) counters stay small next to the rows themselves.
    if (workers > 1) {
      chunks_ = std::max<int64_t>(1, std::min({4 * workers, (n + kMinRowsPerChunk - 1) / kMinRowsPerChunk,
                                               n / num_splits}));
    }
    workers_ = workers;
    next_.assign(batch * chunks_ * num_splits, 0);
  }

  // Pass 1 and the prefix sums. Fails on a part outside [0, num_splits) (and not kSkipRow), with
  // IndexOutOfRange naming `arg`, or with the error bad(b, i) when given. `sizes` and `starts` may
  // each be null.
  ffi::Error Count(const char* op, const char* arg, int32_t* sizes, int64_t* starts = nullptr) {
    return Count(sizes, starts, [&](int64_t b, int64_t i) {
      return IndexOutOfRange(op, arg, part_(b, i), b * n_ + i, splits_);
    });
  }

  template <typename Bad>
  ffi::Error Count(int32_t* sizes, int64_t* starts, Bad&& bad) {
    FFI_RETURN_IF_ERROR(ParallelFor(pool_, batch_ * chunks_, workers_, [&](int64_t t, int64_t) {
      const int64_t b = t / chunks_, c = t % chunks_;
      // Locals, not members, in the loops: the counter stores could alias the members, which the
      // compiler would then reload (and Begin() recompute, with a division) every iteration.
      int64_t* count = next_.data() + t * splits_;
      const int64_t begin = Begin(c), end = Begin(c + 1), splits = splits_;
      const PartFn part = part_;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t s = part(b, i);
        if (static_cast<uint64_t>(s) >= static_cast<uint64_t>(splits)) {
          if (s == kSkipRow) continue;
          return bad(b, i);
        }
        ++count[s];
      }
      return ffi::Error::Success();
    }));
    std::vector<int64_t> first(sizes != nullptr && starts == nullptr ? splits_ + 1 : 0);
    for (int64_t b = 0; b < batch_; ++b) {  // counts -> first destination of (chunk, split)
      int64_t* f = starts != nullptr ? starts + b * (splits_ + 1) : first.data();
      CountsToPositions(next_.data() + b * chunks_ * splits_, chunks_, splits_, 0,
                        sizes != nullptr || starts != nullptr ? f : nullptr);
      if (sizes == nullptr) continue;
      for (int64_t s = 0; s < splits_; ++s) {
        sizes[b * splits_ + s] = static_cast<int32_t>(f[s + 1] - f[s]);
      }
    }
    return ffi::Error::Success();
  }

  // Pass 2: visit(b, i, dest) for every row that is not skipped (after Count).
  template <typename Visit>
  ffi::Error Run(Visit&& visit) {
    return ParallelFor(pool_, batch_ * chunks_, workers_, [&](int64_t t, int64_t) {
      const int64_t b = t / chunks_, c = t % chunks_;
      int64_t* next = next_.data() + t * splits_;
      const int64_t begin = Begin(c), end = Begin(c + 1);
      const PartFn part = part_;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t s = part(b, i);
        if (s == kSkipRow) continue;
        visit(b, i, next[s]++);
      }
      return ffi::Error::Success();
    });
  }

 private:
  int64_t Begin(int64_t c) const { return n_ * c / chunks_; }

  ffi::ThreadPool* pool_;
  PartFn part_;
  int64_t batch_, n_, splits_;
  int64_t chunks_ = 1, workers_ = 1;
  std::vector<int64_t> next_;  // [batch][chunk][split]: rows counted, then next destination
};

// The part function of an index array: part(b, i) = index[b * stride + i].
template <typename Index>
struct IndexArrayPart {
  const Index* index;
  int64_t stride;
  int64_t operator()(int64_t b, int64_t i) const { return static_cast<int64_t>(index[b * stride + i]); }
};

template <typename Index>
StablePartition<IndexArrayPart<Index>> PartitionByIndexArray(ffi::ThreadPool* pool, int64_t workers,
                                                             const Index* index, int64_t stride,
                                                             int64_t batch, int64_t n,
                                                             int64_t num_splits) {
  return StablePartition<IndexArrayPart<Index>>(pool, workers, IndexArrayPart<Index>{index, stride},
                                                batch, n, num_splits);
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_PARTITION_H_
