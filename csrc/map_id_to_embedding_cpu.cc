// map_id_to_embedding and its gradient, CPU handlers. Semantics: spec/monolith_ops.md section 8.
//
// Both build an id -> row map over the S id arrays (lookup.h: first occurrence wins, built in
// parallel), then
//   forward:  out[i] = row map[input[i]] of the S embedding tables (one pass: probe and copy);
//   gradient: table row map[input[k]] += grads[k], k in order (resolve every row first, then a
//             deterministic scatter-add in which each thread owns a range of rows).
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ffi_helpers.h"
#include "lookup.h"
#include "rows.h"

namespace jax_distops {
namespace {

constexpr const char* kMapOp = "map_id_to_embedding";
constexpr const char* kMapGradOp = "map_id_to_embedding_gradient_back_prop";

// Reads the S id arrays args[0..S) into `ids` (checked against the id dtype and the batch dims).
template <typename T>
ffi::Error ReadIds(const char* op, const ffi::RemainingArgs& args, int64_t num_tables,
                   ffi::DataType id_dtype, ffi::Span<const int64_t> batch_dims, IdArrays<T>* ids) {
  int64_t total = 0;
  for (int64_t s = 0; s < num_tables; ++s) {
    FFI_ASSIGN_OR_RETURN(ffi::AnyBuffer id, args.get<ffi::AnyBuffer>(s));
    if (id.element_type() != id_dtype) return InvalidArgument(op, "ids_list and input dtypes differ");
    FFI_ASSIGN_OR_RETURN(int64_t stride,
                         OperandBatchStride(id.dimensions(), 1, batch_dims, op, "ids_list"));
    const int64_t n = id.dimensions().back();
    ids->Add(id.typed_data<T>(), n, stride);
    total += n;
  }
  if (total > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument(op, "ids_list holds " + std::to_string(total) +
                                   " ids, more than int32 row numbers can address");
  }
  return ffi::Error::Success();
}

template <typename T>
ffi::Error MapImpl(ffi::ThreadPool& pool, const ffi::AnyBuffer& input, const ffi::RemainingArgs& args,
                   ffi::Result<ffi::AnyBuffer>& out, bool use_threads) {
  const char* op = kMapOp;
  const auto out_dims = out->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 2, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t n = out_dims[split.batch_ndim], width = out_dims[split.batch_ndim + 1];
  FFI_ASSIGN_OR_RETURN(int64_t input_stride,
                       OperandBatchStride(input.dimensions(), 1, batch_dims, op, "input"));
  if (input.dimensions().back() != n) return InvalidArgument(op, "input and output lengths differ");
  if (args.size() == 0 || args.size() % 2 != 0) {
    return InvalidArgument(op, "expected S >= 1 id arrays followed by S embedding tables");
  }
  const int64_t num_tables = static_cast<int64_t>(args.size()) / 2;
  IdArrays<T> ids;
  FFI_RETURN_IF_ERROR(ReadIds(op, args, num_tables, input.element_type(), batch_dims, &ids));
  const int64_t elem_bytes = static_cast<int64_t>(ffi::ByteWidth(out->element_type()));
  TableRows tables(static_cast<size_t>(width * elem_bytes));
  for (int64_t s = 0; s < num_tables; ++s) {
    FFI_ASSIGN_OR_RETURN(ffi::AnyBuffer emb, args.get<ffi::AnyBuffer>(num_tables + s));
    if (emb.element_type() != out->element_type()) {
      return InvalidArgument(op, "embeddings_list and output dtypes differ");
    }
    const auto dims = emb.dimensions();
    FFI_ASSIGN_OR_RETURN(int64_t stride, OperandBatchStride(dims, 2, batch_dims, op, "embeddings_list"));
    if (dims[dims.size() - 2] != ids.length[s] || dims.back() != width) {
      return InvalidArgument(op, "embeddings_list[" + std::to_string(s) + "] has shape [" +
                                     std::to_string(dims[dims.size() - 2]) + ", " +
                                     std::to_string(dims.back()) + "], expected [" +
                                     std::to_string(ids.length[s]) + ", " + std::to_string(width) + "]");
    }
    tables.Add(static_cast<char*>(emb.untyped_data()), ids.length[s], stride * elem_bytes);
  }
  const int64_t workers = LookupWorkers(pool, use_threads);
  IdRows rows;
  FFI_RETURN_IF_ERROR(rows.Join(&pool, workers, ids, split.batch, input.typed_data<T>(), input_stride, n));
  const MapResolver<T, int32_t> resolver{op, "input", "ids_list", rows.rows(), input.typed_data<T>(),
                                         input_stride, n, nullptr};
  return GatherRows(&pool, workers, split.batch, n, &tables, static_cast<char*>(out->untyped_data()),
                    resolver);
}

template <typename F, typename T>
ffi::Error MapGradImpl(TypeTag<T>, ffi::ThreadPool& pool, const ffi::AnyBuffer& input,
                       const ffi::AnyBuffer& grads, const ffi::RemainingArgs& args,
                       const ffi::RemainingRets& rets) {
  const char* op = kMapGradOp;
  const int64_t num_tables = static_cast<int64_t>(args.size());
  if (num_tables == 0 || rets.size() != args.size()) {
    return InvalidArgument(op, "expected S >= 1 id arrays and S outputs");
  }
  FFI_ASSIGN_OR_RETURN(ffi::Result<ffi::AnyBuffer> first, rets.get<ffi::AnyBuffer>(0));
  const auto first_dims = first->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(first_dims, 2, op, "output"));
  const auto batch_dims = first_dims.first(split.batch_ndim);
  const int64_t width = first_dims.back();
  FFI_ASSIGN_OR_RETURN(int64_t input_stride,
                       OperandBatchStride(input.dimensions(), 1, batch_dims, op, "input"));
  FFI_ASSIGN_OR_RETURN(int64_t grads_stride,
                       OperandBatchStride(grads.dimensions(), 2, batch_dims, op, "grads"));
  const int64_t n = input.dimensions().back();
  const auto gdims = grads.dimensions();
  if (gdims[gdims.size() - 2] != n || gdims.back() != width) {
    return InvalidArgument(op, "grads must have shape [*input.shape, D]");
  }
  IdArrays<T> ids;
  FFI_RETURN_IF_ERROR(ReadIds(op, args, num_tables, input.element_type(), batch_dims, &ids));
  TableRows tables(static_cast<size_t>(width) * sizeof(F));
  for (int64_t s = 0; s < num_tables; ++s) {
    FFI_ASSIGN_OR_RETURN(ffi::Result<ffi::AnyBuffer> out, rets.get<ffi::AnyBuffer>(s));
    const auto dims = out->dimensions();
    if (out->element_type() != grads.element_type() || dims.size() != split.batch_ndim + 2 ||
        !std::equal(batch_dims.begin(), batch_dims.end(), dims.begin()) ||
        dims[split.batch_ndim] != ids.length[s] || dims.back() != width) {
      return InvalidArgument(op, "output " + std::to_string(s) + " does not match ids_list and grads");
    }
    tables.Add(static_cast<char*>(out->untyped_data()), ids.length[s],
               ids.length[s] * width * static_cast<int64_t>(sizeof(F)));
  }
  const int64_t workers = LookupWorkers(pool, true);
  // The row of every grads row, then the scatter-add.
  IdRows rows;
  FFI_RETURN_IF_ERROR(rows.Join(&pool, workers, ids, split.batch, input.typed_data<T>(), input_stride, n));
  const MapResolver<T, int32_t> resolver{op, "input", "ids_list", rows.rows(), input.typed_data<T>(),
                                         input_stride, n, nullptr};
  return ScatterAddRows(&pool, workers, split.batch, n, grads.typed_data<F>(), grads_stride, width,
                        tables, resolver);
}

template <typename T, typename... Args>
ffi::Error MapGradByFloat(const ffi::AnyBuffer& grads, Args&&... args) {
  DISTOPS_DTYPE_DISPATCH(DISTOPS_FLOAT_TYPES, grads.element_type(), kMapGradOp, MapGradImpl,
                         TypeTag<T>{}, std::forward<Args>(args)...);
}

ffi::Error MapDispatch(ffi::ThreadPool pool, ffi::AnyBuffer input, ffi::RemainingArgs args,
                       ffi::Result<ffi::AnyBuffer> out, bool use_multi_threads) {
  return CatchAll(kMapOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_ID_TYPES, input.element_type(), kMapOp, MapImpl, pool, input, args,
                           out, use_multi_threads);
  });
}

ffi::Error MapGradDispatch(ffi::ThreadPool pool, ffi::AnyBuffer input, ffi::AnyBuffer grads,
                           ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return CatchAll(kMapGradOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_ID_TYPES, input.element_type(), kMapGradOp, MapGradByFloat,
                           grads, pool, input, grads, args, rets);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MapIdToEmbedding, MapDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // input [*batch, T]
                                  .RemainingArgs()        // ids_list: S x [*batch, K_s], then
                                                          // embeddings_list: S x [*batch, K_s, D]
                                  .Ret<ffi::AnyBuffer>()  // output [*batch, T, D]
                                  .Attr<bool>("use_multi_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MapIdToEmbeddingGradient, MapGradDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // input [*batch, T]
                                  .Arg<ffi::AnyBuffer>()  // grads [*batch, T, D]
                                  .RemainingArgs()        // ids_list: S x [*batch, K_s]
                                  .RemainingRets());      // S x [*batch, K_s, D]

}  // namespace jax_distops
