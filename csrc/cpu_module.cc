// The `jax_distops._cpu` extension: exposes every CPU FFI handler as a capsule, keyed by its FFI
// target name "jax_distops_<op>". jax_distops/_ffi.py registers them with XLA at import.
#include <nanobind/nanobind.h>

#include "ops.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;

namespace jax_distops {
#define DISTOPS_DECLARE_(name, symbol) XLA_FFI_DECLARE_HANDLER_SYMBOL(symbol);
DISTOPS_CPU_OPS(DISTOPS_DECLARE_)
#undef DISTOPS_DECLARE_
}  // namespace jax_distops

NB_MODULE(_cpu, m) {
  m.def("registrations", []() {
    nb::dict targets;
#define DISTOPS_REGISTER_(name, symbol) \
  targets["jax_distops_" #name] = nb::capsule(reinterpret_cast<void*>(jax_distops::symbol));
    DISTOPS_CPU_OPS(DISTOPS_REGISTER_)
#undef DISTOPS_REGISTER_
    return targets;
  });
}
