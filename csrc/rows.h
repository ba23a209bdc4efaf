// Row helpers shared by the ops that move or sum rows: a copy whose size is a compile-time constant
// for the common row sizes, and float element types with the type their sums are kept in (bfloat16
// sums in float32 and rounds once). Host only.
#ifndef JAX_DISTOPS_CSRC_ROWS_H_
#define JAX_DISTOPS_CSRC_ROWS_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace jax_distops {

// Calls fn(std::integral_constant<size_t, N>{}) with N = row_bytes for rows of 1 to 256 bytes whose
// size is a power of two, and with N = 0 (size known only at run time) for any other size. A
// memcpy of a constant size compiles to a few moves; a run-time size costs a library call per row.
template <typename Fn>
decltype(auto) DispatchRowBytes(size_t row_bytes, Fn&& fn) {
  switch (row_bytes) {
    case 1: return fn(std::integral_constant<size_t, 1>{});
    case 2: return fn(std::integral_constant<size_t, 2>{});
    case 4: return fn(std::integral_constant<size_t, 4>{});
    case 8: return fn(std::integral_constant<size_t, 8>{});
    case 16: return fn(std::integral_constant<size_t, 16>{});
    case 32: return fn(std::integral_constant<size_t, 32>{});
    case 64: return fn(std::integral_constant<size_t, 64>{});
    case 128: return fn(std::integral_constant<size_t, 128>{});
    case 256: return fn(std::integral_constant<size_t, 256>{});
    default: return fn(std::integral_constant<size_t, 0>{});
  }
}

// Copies one row: kRowBytes bytes, or row_bytes when kRowBytes is 0.
template <size_t kRowBytes>
inline void CopyRow(void* dst, const void* src, size_t row_bytes) {
  std::memcpy(dst, src, kRowBytes > 0 ? kRowBytes : row_bytes);
}

// Row reads and adds are prefetched only from buffers larger than this: a smaller one mostly sits
// in the caches, where the prefetches cost more than they hide (measured, 3e5 rows of 64 bytes
// gathered from a 1 / 4 / 16 / 64 MiB buffer, ms without / with prefetching: 0.34 / 0.49,
// 0.45 / 0.59, 0.83 / 0.65, 2.35 / 1.31).
inline constexpr size_t kRowPrefetchAboveBytes = size_t{8} << 20;

// Prefetches every cache line a row touches (for reading, or for writing with kWrite), the last
// one included when the row does not start on a line (a 64-byte row at offset 32 spans two lines).
// Always inlined: GCC deems a function whose only effect is a prefetch pure and may delete calls
// to it.
template <bool kWrite = false>
__attribute__((always_inline)) inline void PrefetchRow(const void* row, size_t row_bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(row);
  const uintptr_t last = (begin + row_bytes - 1) & ~uintptr_t{63};
  for (uintptr_t line = begin & ~uintptr_t{63}; line <= last; line += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(line), kWrite ? 1 : 0);
  }
}

// Asks for transparent huge pages on the 2 MiB pages inside [p, p + bytes) of a large output buffer,
// before the kernel first writes it. XLA hands a large output out as fresh memory, whose 4 KiB
// pages fault one by one on first touch and then miss the TLB on nearly every random row access;
// with 2 MiB pages both costs mostly go (measured: a 1e6 x 64 float scatter-add 105 -> 46 ms).
// A hint only: memory already touched, or a kernel without THP, keeps its pages.
inline void AdviseHugePages(void* p, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 2 * kHuge) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// bfloat16 as XLA stores it: the top 16 bits of a float32.
struct BFloat16 {
  uint16_t bits;
};

// Float element types (float, double, BFloat16) and the type their sums are kept in.
template <typename T>
struct Accumulator {
  using type = T;
  static T Load(T x) { return x; }
  static T Store(T x) { return x; }
};

template <>
struct Accumulator<BFloat16> {
  using type = float;
  static float Load(BFloat16 x) {
    const uint32_t u = uint32_t{x.bits} << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // Round to nearest even, as XLA and ml_dtypes convert; NaN stays a (quiet) NaN.
  static BFloat16 Store(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return BFloat16{static_cast<uint16_t>(u >> 16)};
  }
};

// to[e] += from[e] for e < width (kWidth when it is > 0: a compile-time width). A fixed-width row
// goes through a local copy, so the adds are vectorized: adding in place, the compiler must assume
// `to` and `from` overlap and emits one scalar load-add-store after the other, and a row whose
// cache line misses then stalls every element.
template <int64_t kWidth, typename T>
__attribute__((always_inline)) inline void AddRow(typename Accumulator<T>::type* to, const T* from,
                                                  int64_t width) {
  using Acc = typename Accumulator<T>::type;
  if constexpr (kWidth > 0) {
    Acc sum[kWidth];
    std::memcpy(sum, to, sizeof(sum));
    for (int64_t e = 0; e < kWidth; ++e) sum[e] += Accumulator<T>::Load(from[e]);
    std::memcpy(to, sum, sizeof(sum));
  } else {
    for (int64_t e = 0; e < width; ++e) to[e] += Accumulator<T>::Load(from[e]);
  }
}

#define DISTOPS_FLOAT_TYPES(X) X(F32, float) X(F64, double) X(BF16, ::jax_distops::BFloat16)

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_ROWS_H_
