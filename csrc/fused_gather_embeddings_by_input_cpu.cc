// fused_gather_embeddings_by_input and its gradient, CPU handlers. Semantics: spec/monolith_ops.md
// section 10 (deviations: `scale` applied, deterministic sums, every offset checked).
//
//   forward:  out_m[j] = fused[off_m[j] : off_m[j] + dims[m]], in parallel over chunks of rows;
//   gradient: out[i] = scale * (sum of the grads elements that the forward read from element i),
//             summed table by table, row by row, one task per batch element: sums in a fixed
//             order whatever the number of threads, no races between tables that overlap.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffi_helpers.h"
#include "fused_gather_embeddings_by_input.h"
#include "rows.h"

namespace jax_distops {
namespace {

constexpr const char* kFusedGatherOp = "fused_gather_embeddings_by_input";
constexpr const char* kFusedGatherGradOp = "fused_gather_embeddings_by_input_gradient";
// Rows per forward task below which a task is not worth it.
constexpr int64_t kRowsPerTask = 1 << 13;
// Rows are prefetched this many offsets ahead (measured on the fused d16 gradient: 8 ahead 11-13 ms,
// 16 ahead 9.8, 32 ahead 6.9-7.3, 64 ahead 5.4-6.0).
constexpr int64_t kPrefetch = 64;

// One table's offsets: [*batch?, L] of Index, batch stride 0 when shared.
template <typename Index>
struct Offsets {
  const Index* data;
  int64_t stride, length, dim;
};

ffi::Error OffsetOutOfBounds(const char* op, const char* arg, int64_t table, int64_t value,
                             int64_t position, int64_t dim, int64_t size) {
  return InvalidArgument(op, std::string(arg) + "[" + std::to_string(table) + "] has value " +
                                 std::to_string(value) + " at position " + std::to_string(position) +
                                 ": its row [" + std::to_string(value) + ", " +
                                 std::to_string(value + dim) + ") lies outside the fused buffer of " +
                                 std::to_string(size) + " elements");
}

// Reads the M offset arrays args[first, first + M), checking dtypes and batch dims.
template <typename Index>
ffi::Error ReadOffsets(const char* op, const ffi::RemainingArgs& args, size_t first,
                       ffi::Span<const int64_t> dims, ffi::Span<const int64_t> batch_dims,
                       std::vector<Offsets<Index>>* offsets) {
  for (size_t m = 0; m < dims.size(); ++m) {
    FFI_ASSIGN_OR_RETURN(ffi::AnyBuffer buffer, args.get<ffi::AnyBuffer>(first + m));
    if (ffi::ByteWidth(buffer.element_type()) != sizeof(Index) ||
        (buffer.element_type() != ffi::DataType::S32 && buffer.element_type() != ffi::DataType::S64)) {
      return InvalidArgument(op, "fused_embedding_offsets must all have one dtype, int32 or int64");
    }
    FFI_ASSIGN_OR_RETURN(int64_t stride, OperandBatchStride(buffer.dimensions(), 1, batch_dims, op,
                                                            "fused_embedding_offsets"));
    if (dims[m] < 1) return InvalidArgument(op, "embedding_dims must be >= 1");
    offsets->push_back({buffer.typed_data<Index>(), stride, buffer.dimensions().back(), dims[m]});
  }
  return ffi::Error::Success();
}

template <typename Index>
ffi::Error FusedGatherImpl(ffi::ThreadPool& pool, const ffi::AnyBuffer& fused,
                           const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                           ffi::Span<const int64_t> dims) {
  const char* op = kFusedGatherOp;
  const size_t num_tables = dims.size();
  if (args.size() != num_tables || rets.size() != num_tables) {
    return InvalidArgument(op, "expected one offsets array and one output per embedding dim");
  }
  if (num_tables == 0) return ffi::Error::Success();
  FFI_ASSIGN_OR_RETURN(ffi::Result<ffi::AnyBuffer> first, rets.get<ffi::AnyBuffer>(0));
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(first->dimensions(), 2, op, "output"));
  const auto batch_dims = first->dimensions().first(split.batch_ndim);
  FFI_ASSIGN_OR_RETURN(int64_t fused_stride,
                       OperandBatchStride(fused.dimensions(), 1, batch_dims, op, "fused_embeddings"));
  const int64_t size = fused.dimensions().back();
  const int64_t elem = static_cast<int64_t>(ffi::ByteWidth(fused.element_type()));
  std::vector<Offsets<Index>> offsets;
  FFI_RETURN_IF_ERROR(ReadOffsets(op, args, 0, dims, batch_dims, &offsets));
  // Tasks: chunks of rows of (batch element, table); short tables take several batch elements per
  // task (a vmap over many small examples would otherwise make a task of every few rows).
  struct Task {
    int64_t b0, b1, m, begin, end;  // rows [begin, end) of table m in batch elements [b0, b1)
  };
  std::vector<Task> tasks;
  std::vector<char*> out(num_tables);
  int64_t bytes = 0;
  for (size_t m = 0; m < num_tables; ++m) {
    FFI_ASSIGN_OR_RETURN(ffi::Result<ffi::AnyBuffer> buffer, rets.get<ffi::AnyBuffer>(m));
    const auto d = buffer->dimensions();
    const int64_t length = offsets[m].length;
    if (buffer->element_type() != fused.element_type() || d.size() != split.batch_ndim + 2 ||
        !std::equal(batch_dims.begin(), batch_dims.end(), d.begin()) ||
        d[split.batch_ndim] != length || d.back() != dims[m]) {
      return InvalidArgument(op, "output " + std::to_string(m) + " does not match its offsets and dim");
    }
    out[m] = static_cast<char*>(buffer->untyped_data());
    AdviseHugePages(out[m], static_cast<size_t>(split.batch * length * dims[m] * elem));
    bytes += split.batch * length * dims[m] * elem;
    const int64_t per_task = std::max<int64_t>(1, kRowsPerTask / std::max<int64_t>(length, 1));
    for (int64_t b = 0; b < split.batch; b += per_task) {
      const int64_t b1 = std::min(split.batch, b + per_task);
      for (int64_t begin = 0; begin < length; begin += kRowsPerTask) {
        tasks.push_back({b, b1, static_cast<int64_t>(m), begin, std::min(length, begin + kRowsPerTask)});
      }
    }
  }
  const int64_t workers = bytes >= (int64_t{1} << 20) ? std::max<int64_t>(1, pool.num_threads()) : 1;
  const char* src = static_cast<const char*>(fused.untyped_data());
  const bool prefetch = static_cast<size_t>(size * elem) > kRowPrefetchAboveBytes;
  return ParallelFor(&pool, static_cast<int64_t>(tasks.size()), workers, [&](int64_t t, int64_t) {
    const Task& task = tasks[t];
    const Offsets<Index>& off = offsets[task.m];
    const int64_t dim = off.dim, row_bytes = dim * elem;
    return DispatchRowBytes(static_cast<size_t>(row_bytes), [&](auto row_size) -> ffi::Error {
      constexpr size_t kRowBytes = decltype(row_size)::value;
      for (int64_t b = task.b0; b < task.b1; ++b) {
        const Index* o = off.data + b * off.stride;
        const char* from = src + b * fused_stride * elem;
        char* to = out[task.m] + b * off.length * row_bytes;
        for (int64_t j = task.begin; j < task.end; ++j) {
          if (prefetch && j + kPrefetch < task.end) {  // scattered rows of a large buffer
            const int64_t ahead = static_cast<int64_t>(o[j + kPrefetch]);
            if (FusedRowInBounds(ahead, dim, size)) PrefetchRow(from + ahead * elem, row_bytes);
          }
          const int64_t offset = static_cast<int64_t>(o[j]);
          if (!FusedRowInBounds(offset, dim, size)) {
            return OffsetOutOfBounds(op, "fused_embedding_offsets", task.m, offset,
                                     b * off.stride + j, dim, size);
          }
          CopyRow<kRowBytes>(to + j * row_bytes, from + offset * elem, static_cast<size_t>(row_bytes));
        }
      }
      return ffi::Error::Success();
    });
  });
}

template <typename Index, typename F>
ffi::Error FusedGatherGradImpl(TypeTag<F>, ffi::ThreadPool& pool, const ffi::AnyBuffer& scale,
                               const ffi::RemainingArgs& args, ffi::Result<ffi::AnyBuffer>& out,
                               ffi::Span<const int64_t> dims) {
  using Acc = typename Accumulator<F>::type;
  constexpr bool kDirect = std::is_same_v<Acc, F>;  // sum in the output itself
  const char* op = kFusedGatherGradOp;
  const size_t num_tables = dims.size();
  if (args.size() != 2 * num_tables) {
    return InvalidArgument(op, "expected one grads array and one offsets array per embedding dim");
  }
  const auto out_dims = out->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 1, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t size = out_dims.back(), batch = split.batch;
  FFI_ASSIGN_OR_RETURN(int64_t scale_stride,
                       OperandBatchStride(scale.dimensions(), 0, batch_dims, op, "scale"));
  if (ffi::ByteWidth(scale.element_type()) != sizeof(Acc)) {
    return InvalidArgument(op, "scale must be float64 for float64 grads, else float32");
  }
  std::vector<Offsets<Index>> offsets;
  FFI_RETURN_IF_ERROR(ReadOffsets(op, args, num_tables, dims, batch_dims, &offsets));
  std::vector<const F*> grads(num_tables);
  std::vector<int64_t> grads_stride(num_tables);
  for (size_t m = 0; m < num_tables; ++m) {
    FFI_ASSIGN_OR_RETURN(ffi::AnyBuffer g, args.get<ffi::AnyBuffer>(m));
    const auto d = g.dimensions();
    FFI_ASSIGN_OR_RETURN(grads_stride[m], OperandBatchStride(d, 2, batch_dims, op, "grads"));
    if (g.element_type() != out->element_type() || d[d.size() - 2] != offsets[m].length ||
        d.back() != dims[m]) {
      return InvalidArgument(op, "grads[" + std::to_string(m) + "] does not match its offsets and dim");
    }
    grads[m] = g.typed_data<F>();
  }
  // One task per batch element, summing in (table, row) order: deterministic, and no races when
  // tables overlap. (Splitting one element's output between threads measured slower: every thread
  // must still read every row, and half of its branches mispredict.)
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  const Acc* scales = scale.typed_data<Acc>();
  F* result = out->typed_data<F>();
  AdviseHugePages(result, static_cast<size_t>(batch * size) * sizeof(F));
  const bool prefetch = static_cast<size_t>(size) * sizeof(Acc) > kRowPrefetchAboveBytes;
  return ParallelFor(&pool, batch, workers, [&](int64_t b, int64_t) -> ffi::Error {
    F* dst = result + b * size;
    std::vector<Acc> scratch;
    Acc* acc;  // the sums: the output itself, or float32 scratch for bfloat16
    if constexpr (std::is_same_v<Acc, F>) {
      acc = dst;
      std::fill(acc, acc + size, Acc{0});
    } else {
      scratch.assign(static_cast<size_t>(size), Acc{0});
      acc = scratch.data();
    }
    for (size_t m = 0; m < num_tables; ++m) {
      const Offsets<Index>& off = offsets[m];
      const int64_t length = off.length;
      const Index* o = off.data + b * off.stride;
      const F* g = grads[m] + b * grads_stride[m];
      // A tight loop (a bounds check and the adds of a row of fixed width) whose target rows are
      // prefetched far ahead: the adds land at random, and this VM's memory latency is high.
      FFI_RETURN_IF_ERROR(DispatchRowBytes(static_cast<size_t>(off.dim) * sizeof(F), [&](auto row_size) {
        constexpr int64_t kDim = static_cast<int64_t>(decltype(row_size)::value / sizeof(F));
        const int64_t width = kDim > 0 ? kDim : off.dim;
        for (int64_t j = 0; j < length; ++j) {
          if (prefetch && j + kPrefetch < length) {
            const int64_t ahead = static_cast<int64_t>(o[j + kPrefetch]);
            if (FusedRowInBounds(ahead, width, size)) {
              PrefetchRow<true>(acc + ahead, width * sizeof(Acc));
            }
          }
          const int64_t offset = static_cast<int64_t>(o[j]);
          if (!FusedRowInBounds(offset, width, size)) {
            return OffsetOutOfBounds(op, "embedding_offsets", static_cast<int64_t>(m), offset,
                                     b * off.stride + j, width, size);
          }
          AddRow<kDim>(acc + offset, g + j * width, width);
        }
        return ffi::Error::Success();
      }));
    }
    // Sums in the output itself need no pass for scale 1 (jax.grad's transpose of the gather):
    // x * 1 is x, and every sum is already a quiet NaN if a NaN.
    const Acc s = scales[b * scale_stride];
    if (kDirect && s == Acc{1}) return ffi::Error::Success();
    for (int64_t e = 0; e < size; ++e) dst[e] = Accumulator<F>::Store(acc[e] * s);
    return ffi::Error::Success();
  });
}

ffi::DataType OffsetsDtype(const ffi::RemainingArgs& args, size_t index) {
  if (index >= args.size()) return ffi::DataType::S32;  // no tables: nothing is read
  auto buffer = args.get<ffi::AnyBuffer>(index);
  return buffer.has_value() ? buffer.value().element_type() : ffi::DataType::INVALID;
}

template <typename F, typename... Args>
ffi::Error FusedGatherGradByIndex(ffi::DataType index_dtype, Args&&... args) {
  DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, index_dtype, kFusedGatherGradOp, FusedGatherGradImpl,
                         TypeTag<F>{}, std::forward<Args>(args)...);
}

ffi::Error FusedGatherDispatch(ffi::ThreadPool pool, ffi::AnyBuffer fused, ffi::RemainingArgs args,
                               ffi::RemainingRets rets, ffi::Span<const int64_t> dims) {
  return CatchAll(kFusedGatherOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, OffsetsDtype(args, 0), kFusedGatherOp, FusedGatherImpl,
                           pool, fused, args, rets, dims);
  });
}

ffi::Error FusedGatherGradDispatch(ffi::ThreadPool pool, ffi::AnyBuffer scale, ffi::RemainingArgs args,
                                   ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int64_t> dims) {
  return CatchAll(kFusedGatherGradOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_FLOAT_TYPES, out->element_type(), kFusedGatherGradOp,
                           FusedGatherGradByIndex, OffsetsDtype(args, dims.size()), pool, scale, args,
                           out, dims);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedGatherEmbeddingsByInput, FusedGatherDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // fused_embeddings [*batch, E]
                                  .RemainingArgs()        // offsets: M x [*batch, L_m]
                                  .RemainingRets()        // M x [*batch, L_m, dims[m]]
                                  .Attr<ffi::Span<const int64_t>>("dims"));  // embedding_dims

XLA_FFI_DEFINE_HANDLER_SYMBOL(FusedGatherEmbeddingsByInputGradient, FusedGatherGradDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // scale [*batch]
                                  .RemainingArgs()        // grads: M x [*batch, L_m, dims[m]], then
                                                          // offsets: M x [*batch, L_m]
                                  .Ret<ffi::AnyBuffer>()  // [*batch, fused_embeddings_size]
                                  .Attr<ffi::Span<const int64_t>>("dims"));  // embedding_dims

}  // namespace jax_distops
