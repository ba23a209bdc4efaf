// gather_embeddings_by_input, its gradient and the gradient's transpose, CPU handlers. Semantics:
// spec/monolith_ops.md section 9.
//
//   forward:   index_mapping[i] = first row j with ids[j] == input[i]; output[i] = embeddings[that row]
//              (lookup.h: one pass that probes the id -> row map and copies);
//   gradient:  out[index_mapping[k]] += grads[k], k in order (no hashing; deterministic scatter-add);
//   by_mapping (the gradient's transpose, used by higher-order autodiff):
//              out[i] = table[index_mapping[i]].
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "ffi_helpers.h"
#include "lookup.h"
#include "rows.h"

namespace jax_distops {
namespace {

constexpr const char* kGatherOp = "gather_embeddings_by_input";
constexpr const char* kGatherGradOp = "gather_embeddings_by_ids_gradient_back_prop";
constexpr const char* kByMappingOp = "gather_embeddings_by_mapping";

// Shapes of the two gathers: `table` [*batch?, M, D] and `rows` [*batch?, T] against `out`
// [*batch, T, D].
struct GatherShapes {
  BatchSplit split;
  int64_t table_stride, rows_stride;  // elements per batch element, 0 when shared
  int64_t num_rows, n, width;         // M, T, D
};

ffi::Error ReadShapes(const char* op, ffi::Span<const int64_t> out_dims,
                      ffi::Span<const int64_t> table_dims, const char* table_arg,
                      ffi::Span<const int64_t> rows_dims, const char* rows_arg, GatherShapes* s) {
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 2, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  FFI_ASSIGN_OR_RETURN(int64_t table_stride,
                       OperandBatchStride(table_dims, 2, batch_dims, op, table_arg));
  FFI_ASSIGN_OR_RETURN(int64_t rows_stride, OperandBatchStride(rows_dims, 1, batch_dims, op, rows_arg));
  *s = GatherShapes{split, table_stride, rows_stride, table_dims[table_dims.size() - 2],
                    rows_dims.back(), table_dims.back()};
  if (out_dims[split.batch_ndim] != s->n || out_dims.back() != s->width) {
    return InvalidArgument(op, std::string(table_arg) + ", " + rows_arg + " and output shapes differ");
  }
  return ffi::Error::Success();
}

template <typename Mapping, typename T>
ffi::Error GatherImpl(TypeTag<T>, ffi::ThreadPool& pool, const ffi::AnyBuffer& ids,
                      const ffi::AnyBuffer& embeddings, const ffi::AnyBuffer& input,
                      ffi::Result<ffi::AnyBuffer>& out, ffi::Result<ffi::AnyBuffer>& mapping,
                      bool use_threads) {
  const char* op = kGatherOp;
  GatherShapes s;
  FFI_RETURN_IF_ERROR(ReadShapes(op, out->dimensions(), embeddings.dimensions(), "embeddings",
                                 input.dimensions(), "input", &s));
  const auto batch_dims = out->dimensions().first(s.split.batch_ndim);
  FFI_ASSIGN_OR_RETURN(int64_t ids_stride, OperandBatchStride(ids.dimensions(), 1, batch_dims, op, "ids"));
  if (ids.dimensions().back() != s.num_rows) {
    return InvalidArgument(op, "See unmatched embedding dim " + std::to_string(s.num_rows) +
                                   " and id dim " + std::to_string(ids.dimensions().back()));
  }
  if (ids.element_type() != input.element_type() || embeddings.element_type() != out->element_type()) {
    return InvalidArgument(op, "ids and input, or embeddings and output, have different dtypes");
  }
  if (s.num_rows > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument(op, "more than int32 row numbers can address: " + std::to_string(s.num_rows));
  }
  IdArrays<T> id_arrays;
  id_arrays.Add(ids.typed_data<T>(), s.num_rows, ids_stride);
  const int64_t elem_bytes = static_cast<int64_t>(ffi::ByteWidth(out->element_type()));
  TableRows table(static_cast<size_t>(s.width * elem_bytes));
  table.Add(static_cast<char*>(embeddings.untyped_data()), s.num_rows, s.table_stride * elem_bytes);
  const int64_t workers = LookupWorkers(pool, use_threads);
  IdRows rows;
  FFI_RETURN_IF_ERROR(rows.Join(&pool, workers, id_arrays, s.split.batch, input.typed_data<T>(),
                                s.rows_stride, s.n));
  AdviseHugePages(mapping->untyped_data(), static_cast<size_t>(s.split.batch * s.n) * sizeof(Mapping));
  const MapResolver<T, Mapping> resolver{op,  "input", "ids", rows.rows(), input.typed_data<T>(),
                                         s.rows_stride, s.n, mapping->typed_data<Mapping>()};
  return GatherRows(&pool, workers, s.split.batch, s.n, &table,
                    static_cast<char*>(out->untyped_data()), resolver);
}

template <typename T, typename... Args>
ffi::Error GatherByMapping(const ffi::AnyBuffer& mapping_type, Args&&... args) {
  DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, mapping_type.element_type(), kGatherOp, GatherImpl,
                         TypeTag<T>{}, std::forward<Args>(args)...);
}

template <typename Index, typename F>
ffi::Error GatherGradImpl(TypeTag<F>, ffi::ThreadPool& pool, const ffi::AnyBuffer& grads,
                          const ffi::AnyBuffer& mapping, ffi::Result<ffi::AnyBuffer>& out) {
  const char* op = kGatherGradOp;
  const auto out_dims = out->dimensions();
  FFI_ASSIGN_OR_RETURN(BatchSplit split, SplitBatch(out_dims, 2, op, "output"));
  const auto batch_dims = out_dims.first(split.batch_ndim);
  const int64_t num_rows = out_dims[split.batch_ndim], width = out_dims.back();
  FFI_ASSIGN_OR_RETURN(int64_t grads_stride,
                       OperandBatchStride(grads.dimensions(), 2, batch_dims, op, "grads"));
  FFI_ASSIGN_OR_RETURN(int64_t mapping_stride,
                       OperandBatchStride(mapping.dimensions(), 1, batch_dims, op, "index_mapping"));
  const int64_t n = mapping.dimensions().back();
  const auto gdims = grads.dimensions();
  if (gdims[gdims.size() - 2] != n || gdims.back() != width) {
    return InvalidArgument(op, "grads must have shape [*index_mapping.shape, D]");
  }
  TableRows table(static_cast<size_t>(width) * sizeof(F));
  table.Add(static_cast<char*>(out->untyped_data()), num_rows,
            num_rows * width * static_cast<int64_t>(sizeof(F)));
  const IndexResolver<Index> resolver{op, "index_mapping", mapping.typed_data<Index>(), mapping_stride,
                                      num_rows};
  return ScatterAddRows(&pool, LookupWorkers(pool, true), split.batch, n, grads.typed_data<F>(),
                        grads_stride, width, table, resolver);
}

template <typename Index>
ffi::Error ByMappingImpl(ffi::ThreadPool& pool, const ffi::AnyBuffer& table_buffer,
                         const ffi::AnyBuffer& mapping, ffi::Result<ffi::AnyBuffer>& out) {
  const char* op = kByMappingOp;
  GatherShapes s;
  FFI_RETURN_IF_ERROR(ReadShapes(op, out->dimensions(), table_buffer.dimensions(), "table",
                                 mapping.dimensions(), "index_mapping", &s));
  if (table_buffer.element_type() != out->element_type()) {
    return InvalidArgument(op, "table and output dtypes differ");
  }
  const int64_t elem_bytes = static_cast<int64_t>(ffi::ByteWidth(out->element_type()));
  TableRows table(static_cast<size_t>(s.width * elem_bytes));
  table.Add(static_cast<char*>(table_buffer.untyped_data()), s.num_rows, s.table_stride * elem_bytes);
  const IndexResolver<Index> resolver{op, "index_mapping", mapping.typed_data<Index>(), s.rows_stride,
                                      s.num_rows};
  return GatherRows(&pool, LookupWorkers(pool, true), s.split.batch, s.n, &table,
                    static_cast<char*>(out->untyped_data()), resolver);
}

template <typename F, typename... Args>
ffi::Error GatherGradByIndex(const ffi::AnyBuffer& mapping, Args&&... args) {
  DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, mapping.element_type(), kGatherGradOp, GatherGradImpl,
                         TypeTag<F>{}, std::forward<Args>(args)...);
}

ffi::Error GatherDispatch(ffi::ThreadPool pool, ffi::AnyBuffer ids, ffi::AnyBuffer embeddings,
                          ffi::AnyBuffer input, ffi::Result<ffi::AnyBuffer> out,
                          ffi::Result<ffi::AnyBuffer> mapping, bool use_multi_threads) {
  return CatchAll(kGatherOp, [&]() -> ffi::Error {
    const ffi::AnyBuffer mapping_type = *mapping;
    DISTOPS_DTYPE_DISPATCH(DISTOPS_ID_TYPES, input.element_type(), kGatherOp, GatherByMapping,
                           mapping_type, pool, ids, embeddings, input, out, mapping, use_multi_threads);
  });
}

ffi::Error GatherGradDispatch(ffi::ThreadPool pool, ffi::AnyBuffer grads, ffi::AnyBuffer mapping,
                              ffi::Result<ffi::AnyBuffer> out) {
  return CatchAll(kGatherGradOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_FLOAT_TYPES, grads.element_type(), kGatherGradOp, GatherGradByIndex,
                           mapping, pool, grads, mapping, out);
  });
}

ffi::Error ByMappingDispatch(ffi::ThreadPool pool, ffi::AnyBuffer table, ffi::AnyBuffer mapping,
                             ffi::Result<ffi::AnyBuffer> out) {
  return CatchAll(kByMappingOp, [&]() -> ffi::Error {
    DISTOPS_DTYPE_DISPATCH(DISTOPS_INDEX_TYPES, mapping.element_type(), kByMappingOp, ByMappingImpl,
                           pool, table, mapping, out);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherEmbeddingsByInput, GatherDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // ids [*batch, M]
                                  .Arg<ffi::AnyBuffer>()   // embeddings [*batch, M, D]
                                  .Arg<ffi::AnyBuffer>()   // input [*batch, T]
                                  .Ret<ffi::AnyBuffer>()   // output [*batch, T, D]
                                  .Ret<ffi::AnyBuffer>()   // index_mapping [*batch, T], int32/int64
                                  .Attr<bool>("use_multi_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherEmbeddingsByIdsGradient, GatherGradDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // grads [*batch, T, D]
                                  .Arg<ffi::AnyBuffer>()   // index_mapping [*batch, T]
                                  .Ret<ffi::AnyBuffer>()); // embeddings gradient [*batch, M, D]

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherEmbeddingsByMapping, ByMappingDispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // table [*batch, M, D]
                                  .Arg<ffi::AnyBuffer>()   // index_mapping [*batch, T]
                                  .Ret<ffi::AnyBuffer>()); // output [*batch, T, D]

}  // namespace jax_distops
