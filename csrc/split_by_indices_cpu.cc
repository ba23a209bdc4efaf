// split_by_indices and its gradient, CPU handlers. Semantics: spec/monolith_ops.md section 1.
//
// Forward: values[dest(i)] = tensor[i], where dest(i) is row i's position in split-major stable order
// (partition.h). Gradient (the transpose, Monolith's MonolithSplitByIndicesGradient):
// out[i] = grads[dest(i)], the inverse permutation. Both move whole rows of any dtype as bytes.
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "ffi_helpers.h"
#include "partition.h"
#include "rows.h"

namespace jax_distops {
namespace {

constexpr const char* kSplitOp = "split_by_indices";
constexpr const char* kSplitGradOp = "split_by_indices_gradient";
// Bytes moved below which the call runs on the calling thread.
constexpr int64_t kMinBytesForThreads = 1 << 20;

// Copies row i of `src` to row `dest` of `dst` (kGather = false) or row `dest` of `src` to row i
// of `dst` (kGather = true), for every row. kRowBytes > 0 fixes the row size at compile time (a
// single move for scalar rows); 0 means `row_bytes`.
template <size_t kRowBytes, bool kGather, typename Partition>
ffi::Error MoveRows(Partition& partition, const char* src, int64_t src_stride,
                    char* dst, int64_t dst_stride, size_t row_bytes) {
  const size_t bytes = kRowBytes > 0 ? kRowBytes : row_bytes;
  return partition.Run([&](int64_t b, int64_t i, int64_t dest) {
    const int64_t from = kGather ? dest : i, to = kGather ? i : dest;
    CopyRow<kRowBytes>(dst + b * dst_stride + to * bytes, src + b * src_stride + from * bytes, bytes);
  });
}

template <bool kGather, typename Partition>
ffi::Error MoveRowsDispatch(Partition& partition, const char* src, int64_t src_stride,
                            char* dst, int64_t dst_stride, size_t row_bytes) {
  return DispatchRowBytes(row_bytes, [&](auto row_size) {
    return MoveRows<decltype(row_size)::value, kGather>(partition, src, src_stride, dst, dst_stride,
                                                        row_bytes);
  });
}

// Both directions: `src` / `dst` are [*batch, N, *row] with `row_ndim` row dimensions (an unbatched
// src is shared by the batch), `indices` is [*batch, N] or [N]; `sizes` ([*batch, S]) may be null.
template <typename Index, bool kGather>
ffi::Error SplitImpl(ffi::ThreadPool& pool, const char* op, const ffi::AnyBuffer& indices,
                     const ffi::AnyBuffer& src, ffi::Result<ffi::AnyBuffer>& dst, int32_t* sizes,
                     int64_t num_splits, int64_t row_ndim) {
  const auto out_dims = dst->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 1 + row_ndim, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t n = out_dims[split.batch_ndim];
  FFI_ASSIGN_OR_RETURN(int64_t index_stride,
                       OperandBatchStride(indices.dimensions(), 1, batch_dims, op, "indices"));
  FFI_ASSIGN_OR_RETURN(int64_t src_stride,
                       OperandBatchStride(src.dimensions(), 1 + row_ndim, batch_dims, op, "tensor"));
  if (indices.dimensions().back() != n) {
    return InvalidArgument(op, "indices and tensor have different numbers of rows");
  }
  if (src.element_type() != dst->element_type()) {
    return InvalidArgument(op, "input and output dtypes differ");
  }
  const size_t elem_bytes = ffi::ByteWidth(src.element_type());
  const size_t row_bytes = n > 0 ? split.core_size / n * elem_bytes : 0;
  const int64_t moved = split.batch * split.core_size * static_cast<int64_t>(elem_bytes);
  const int64_t workers = moved >= kMinBytesForThreads ? std::max<int64_t>(1, pool.num_threads()) : 1;

  auto partition = PartitionByIndexArray(&pool, workers, indices.typed_data<Index>(), index_stride,
                                         split.batch, n, num_splits);
  FFI_RETURN_IF_ERROR(partition.Count(op, "indices", sizes));
  if (row_bytes == 0) return ffi::Error::Success();
  AdviseHugePages(dst->untyped_data(), static_cast<size_t>(moved));
  return MoveRowsDispatch<kGather>(partition, static_cast<const char*>(src.untyped_data()),
                                   src_stride * static_cast<int64_t>(elem_bytes),
                                   static_cast<char*>(dst->untyped_data()),
                                   split.core_size * static_cast<int64_t>(elem_bytes), row_bytes);
}

template <typename Index, typename... Args>
ffi::Error SplitForwardImpl(Args&&... args) {
  return SplitImpl<Index, false>(std::forward<Args>(args)...);
}

template <typename Index, typename... Args>
ffi::Error SplitGradImpl(Args&&... args) {
  return SplitImpl<Index, true>(std::forward<Args>(args)...);
}

ffi::Error CheckAttrs(const char* op, int64_t num_splits, int64_t row_ndim) {
  if (num_splits < 1 || num_splits > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument(op, "num_splits must be in [1, 2^31), got " + std::to_string(num_splits));
  }
  if (row_ndim < 0) return InvalidArgument(op, "row_ndim must be >= 0");
  return ffi::Error::Success();
}

ffi::Error SplitDispatch(ffi::ThreadPool pool, ffi::AnyBuffer indices, ffi::AnyBuffer tensor,
                         ffi::Result<ffi::AnyBuffer> values, ffi::Result<ffi::Buffer<ffi::S32>> sizes,
                         int64_t num_splits, int64_t row_ndim) {
  return CatchAll(kSplitOp, [&]() -> ffi::Error {
    FFI_RETURN_IF_ERROR(CheckAttrs(kSplitOp, num_splits, row_ndim));
    DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, indices.element_type(), kSplitOp, SplitForwardImpl, pool,
                           kSplitOp, indices, tensor, values, sizes->typed_data(), num_splits,
                           row_ndim);
  });
}

ffi::Error SplitGradDispatch(ffi::ThreadPool pool, ffi::AnyBuffer indices, ffi::AnyBuffer grads,
                             ffi::Result<ffi::AnyBuffer> out, int64_t num_splits, int64_t row_ndim) {
  return CatchAll(kSplitGradOp, [&]() -> ffi::Error {
    FFI_RETURN_IF_ERROR(CheckAttrs(kSplitGradOp, num_splits, row_ndim));
    DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, indices.element_type(), kSplitGradOp, SplitGradImpl,
                           pool, kSplitGradOp, indices, grads, out, nullptr, num_splits, row_ndim);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SplitByIndices, SplitDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // indices [*batch, N]
                                  .Arg<ffi::AnyBuffer>()          // tensor [*batch, N, *row]
                                  .Ret<ffi::AnyBuffer>()          // values [*batch, N, *row]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // split_sizes [*batch, S]
                                  .Attr<int64_t>("num_splits")    // S
                                  .Attr<int64_t>("row_ndim"));    // rank of a row

XLA_FFI_DEFINE_HANDLER_SYMBOL(SplitByIndicesGradient, SplitGradDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // indices [*batch, N]
                                  .Arg<ffi::AnyBuffer>()          // grads [*batch, N, *row], split-major
                                  .Ret<ffi::AnyBuffer>()          // tensor gradient [*batch, N, *row]
                                  .Attr<int64_t>("num_splits")    // S
                                  .Attr<int64_t>("row_ndim"));    // rank of a row

}  // namespace jax_distops
