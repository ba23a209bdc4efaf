// Helpers shared by every jax_distops FFI handler: error macros that return `ffi::Error` (no exception
// ever crosses the FFI boundary), the single dtype-dispatch switch, leading-batch-dimension handling,
// overflow-checked narrowing, and a parallel-for over XLA's intra-op thread pool.
//
// Host code only (CUDA kernels include sharding.h, not this).
#ifndef JAX_DISTOPS_CSRC_FFI_HELPERS_H_
#define JAX_DISTOPS_CSRC_FFI_HELPERS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace jax_distops {

namespace ffi = ::xla::ffi;

// Returns from the enclosing function if `expr` (an ffi::Error) failed.
#define FFI_RETURN_IF_ERROR(expr)               \
  do {                                          \
    ::xla::ffi::Error distops_err_ = (expr);    \
    if (distops_err_.failure()) return distops_err_; \
  } while (0)

#define DISTOPS_CONCAT_INNER_(a, b) a##b
#define DISTOPS_CONCAT_(a, b) DISTOPS_CONCAT_INNER_(a, b)

// `FFI_ASSIGN_OR_RETURN(auto x, ErrorOrExpr)`: unwraps an ffi::ErrorOr<T> or returns its error.
#define FFI_ASSIGN_OR_RETURN(lhs, rexpr)                                   \
  auto DISTOPS_CONCAT_(distops_or_, __LINE__) = (rexpr);                   \
  if (DISTOPS_CONCAT_(distops_or_, __LINE__).has_error())                  \
    return DISTOPS_CONCAT_(distops_or_, __LINE__).error();                 \
  lhs = std::move(DISTOPS_CONCAT_(distops_or_, __LINE__).value())

inline ffi::Error InvalidArgument(const char* op, const std::string& message) {
  return ffi::Error::InvalidArgument(std::string(op) + ": " + message);
}

// The same error, for functions returning ffi::ErrorOr<T>.
inline ffi::Unexpected<ffi::Error> InvalidArgumentOr(const char* op, const std::string& message) {
  return ffi::Unexpected<ffi::Error>(InvalidArgument(op, message));
}

inline const char* DataTypeName(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::PRED: return "bool";
    case ffi::DataType::S8: return "int8";
    case ffi::DataType::S16: return "int16";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    case ffi::DataType::U8: return "uint8";
    case ffi::DataType::U16: return "uint16";
    case ffi::DataType::U32: return "uint32";
    case ffi::DataType::U64: return "uint64";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::F64: return "float64";
    default: return "an unsupported dtype";
  }
}

// ---------------------------------------------------------------------------------------------------
// Dtype dispatch: one switch per handler into a templated implementation.
//
//   DISTOPS_DTYPE_DISPATCH(DISTOPS_ID_TYPES, ids.element_type(), "op", OpImpl, args...);
//
// expands to `switch (dtype) { case S32: return OpImpl<int32_t>(args...); ... default: error }` and
// therefore returns from the enclosing function. A type list is an X-macro of (ffi enum, C++ type).
// The arguments may name the dispatched type as `DistopsT_` (e.g. `out->typed_data<DistopsT_>()`).
// For a second dispatch inside a template on an already known type U, declare the implementation
// `template <typename T, typename U> ffi::Error Impl(TypeTag<U>, ...)` and pass `TypeTag<U>{}`
// first: U is deduced, T dispatched.
// ---------------------------------------------------------------------------------------------------
template <typename T>
struct TypeTag {
  using type = T;
};

#define DISTOPS_ID_TYPES(X) X(S32, int32_t) X(S64, int64_t) X(U32, uint32_t) X(U64, uint64_t)
#define DISTOPS_INDEX_TYPES(X) X(S32, int32_t) X(S64, int64_t)

#define DISTOPS_DISPATCH_CASE_(ENUM, CTYPE) \
  case ::xla::ffi::DataType::ENUM:          \
    return distops_call_(::jax_distops::TypeTag<CTYPE>{});

#define DISTOPS_DTYPE_DISPATCH(TYPES, dtype, op, FN, ...)                                 \
  do {                                                                                   \
    auto distops_call_ = [&](auto tag) -> ::xla::ffi::Error {                            \
      using DistopsT_ = typename decltype(tag)::type;                                    \
      return FN<DistopsT_>(__VA_ARGS__);                                                 \
    };                                                                                   \
    switch (dtype) {                                                                     \
      TYPES(DISTOPS_DISPATCH_CASE_)                                                      \
      default:                                                                           \
        return ::jax_distops::InvalidArgument(                                           \
            op, std::string("unsupported dtype ") + ::jax_distops::DataTypeName(dtype)); \
    }                                                                                    \
  } while (0)

// ---------------------------------------------------------------------------------------------------
// Shapes and batching. Every op treats the leading dimensions beyond its "core" rank as batch
// dimensions (that is how the batching rule implements vmap: it moves the batch axis to the front and
// binds the same primitive). An operand that the vmap left unbatched keeps exactly its core rank and is
// shared by every batch element (batch stride 0).
// ---------------------------------------------------------------------------------------------------
inline int64_t Product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= dims[i];
  return p;
}

struct BatchSplit {
  int64_t batch;      // product of the leading (batch) dimensions
  int64_t core_size;  // product of the trailing `core_ndim` dimensions
  size_t batch_ndim;
};

// Splits `dims` into leading batch dimensions and `core_ndim` trailing core dimensions.
inline ffi::ErrorOr<BatchSplit> SplitBatch(ffi::Span<const int64_t> dims, size_t core_ndim,
                                           const char* op, const char* arg) {
  if (dims.size() < core_ndim) {
    return InvalidArgumentOr(op, std::string(arg) + " must have rank >= " +
                                   std::to_string(core_ndim) + ", got rank " +
                                   std::to_string(dims.size()));
  }
  size_t nb = dims.size() - core_ndim;
  return BatchSplit{Product(dims, 0, nb), Product(dims, nb, dims.size()), nb};
}

// Elements between consecutive batch elements of an operand: its core size when it carries the batch
// dimensions `batch_dims` (the output's), 0 when it has only its core rank (shared by the batch).
inline ffi::ErrorOr<int64_t> OperandBatchStride(ffi::Span<const int64_t> dims, size_t core_ndim,
                                                ffi::Span<const int64_t> batch_dims,
                                                const char* op, const char* arg) {
  if (dims.size() == core_ndim) return int64_t{0};
  if (dims.size() != core_ndim + batch_dims.size() ||
      !std::equal(batch_dims.begin(), batch_dims.end(), dims.begin())) {
    return InvalidArgumentOr(op, std::string(arg) +
                                   " has batch dimensions that do not match the output's");
  }
  return Product(dims, batch_dims.size(), dims.size());
}

// Checks that `dims` equals `expected` exactly.
inline ffi::Error CheckShape(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> expected,
                             const char* arg, const char* op) {
  if (dims.size() != expected.size() || !std::equal(expected.begin(), expected.end(), dims.begin())) {
    std::string want = "[", got = "[";
    for (int64_t d : expected) want += std::to_string(d) + ",";
    for (int64_t d : dims) got += std::to_string(d) + ",";
    return InvalidArgument(op, std::string(arg) + " has shape " + got + "] but " + want +
                                   "] was expected");
  }
  return ffi::Error::Success();
}

// Narrowing to int32 (the dtype of every count and offset output, as in Monolith) that fails with a
// clear error instead of wrapping.
inline ffi::ErrorOr<int32_t> CheckedInt32(int64_t value, const char* op, const char* what) {
  if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
    return InvalidArgumentOr(op, std::string(what) + " " + std::to_string(value) +
                                   " does not fit in int32 (the dtype of this output)");
  }
  return static_cast<int32_t>(value);
}

// ---------------------------------------------------------------------------------------------------
// Parallel-for on XLA's intra-op thread pool.
//
// `fn(task, worker)` returns ffi::Error and is called once for each task in [0, num_tasks), by one of
// at most `max_workers` workers; `worker` in [0, max_workers) identifies the calling worker, so tasks
// can reuse per-worker scratch (a worker runs one task at a time). The calling thread takes part: every worker, the caller included, claims tasks from one atomic counter until none is
// left, and the caller then waits only for tasks already claimed by running workers. So the call never
// waits for a worker that has not started (no deadlock when the pool is busy or has no free thread),
// and workers that start late find nothing to do. Exceptions (e.g. std::bad_alloc) are caught and
// turned into ffi::Error. The error of the lowest-numbered failing task is returned, so the error
// does not depend on thread timing (tasks that report the first bad value of their part give the
// first bad value overall).
// ---------------------------------------------------------------------------------------------------
inline constexpr int64_t kBlocksPerWorker = 64;

template <typename Fn>
ffi::Error ParallelFor(ffi::ThreadPool* pool, int64_t num_tasks, int64_t max_workers, Fn&& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> workers{0};
    std::atomic<int64_t> done{0};  // tasks finished; the last one to finish wakes the caller
    std::mutex mu;
    std::condition_variable cv;
    int64_t failed_task = -1;  // the lowest failing task so far; guarded by mu
    ffi::Error error;          // guarded by mu
  };
  auto state = std::make_shared<State>();
  auto* fn_ptr = &fn;
  // A worker only dereferences fn_ptr after claiming a task, and the caller does not return before
  // every claimed task is done, so fn_ptr never dangles when used. A task takes the mutex only to
  // record a failure, or to wake the caller when it is the last to finish (taking it then means the
  // caller is either still before its check of `done` or already waiting: the wake-up is not lost).
  int64_t threads = pool != nullptr ? pool->num_threads() : 0;
  // Tasks are claimed `block` at a time when there are very many (e.g. one per element of a large
  // vmapped batch of tiny inputs), so that claiming and counting them does not cost more than
  // running them; still at least kBlocksPerWorker blocks per worker, to balance the load.
  const int64_t parallel = std::max<int64_t>(1, std::min(max_workers, threads));
  const int64_t block = std::max<int64_t>(1, num_tasks / (kBlocksPerWorker * parallel));
  auto work = [state, fn_ptr, num_tasks, block]() {
    const int64_t worker = state->workers.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      const int64_t first = state->next.fetch_add(block, std::memory_order_relaxed);
      if (first >= num_tasks) return;
      const int64_t last = std::min(num_tasks, first + block);
      for (int64_t task = first; task < last; ++task) {
        ffi::Error err;
        try {
          err = (*fn_ptr)(task, worker);
        } catch (const std::exception& e) {
          err = ffi::Error::Internal(std::string("jax_distops: ") + e.what());
        } catch (...) {
          err = ffi::Error::Internal("jax_distops: unknown C++ exception");
        }
        if (err.failure()) {  // the block's later tasks are skipped: they cannot fail lower
          std::lock_guard<std::mutex> lock(state->mu);
          if (state->failed_task < 0 || task < state->failed_task) {
            state->failed_task = task;
            state->error = std::move(err);
          }
          break;
        }
      }
      // acq_rel: the tasks' writes (outputs, a recorded error) happen before the caller's return.
      if (state->done.fetch_add(last - first, std::memory_order_acq_rel) + (last - first) == num_tasks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min({max_workers, threads, num_tasks}) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    auto copy = work;
    pool->Schedule(std::move(copy));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load(std::memory_order_acquire) >= num_tasks; });
  return state->failed_task >= 0 ? std::move(state->error) : ffi::Error::Success();
}

// The placement step of a parallel count-then-place pass (a stable partition of items into
// parts): counts[c * parts + p] holds how many items of chunk c fall in part p, and becomes the
// position where chunk c writes its first item of part p. Parts follow one another from `at`, and
// the chunks follow one another within a part, so each part keeps the items' order. Writes each
// part's first position to starts[p], and the end to starts[parts], when `starts` is not null;
// returns the end.
inline int64_t CountsToPositions(int64_t* counts, int64_t chunks, int64_t parts, int64_t at,
                                 int64_t* starts) {
  for (int64_t p = 0; p < parts; ++p) {
    if (starts != nullptr) starts[p] = at;
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t& slot = counts[c * parts + p];
      const int64_t count = slot;
      slot = at;
      at += count;
    }
  }
  if (starts != nullptr) starts[parts] = at;
  return at;
}

// Runs `body()` (returning ffi::Error), turning any C++ exception into an ffi::Error.
template <typename Body>
ffi::Error CatchAll(const char* op, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(op) + ": " + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string(op) + ": unknown C++ exception");
  }
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_FFI_HELPERS_H_
