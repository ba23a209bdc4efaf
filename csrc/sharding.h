// Sharding arithmetic shared by the CPU handlers and (later) the CUDA kernels: the shard of an id and
// the id hash used by the dedup tables. Header-only, no XLA or nanobind includes, host/device ready.
#ifndef JAX_DISTOPS_CSRC_SHARDING_H_
#define JAX_DISTOPS_CSRC_SHARDING_H_

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define DISTOPS_HD __host__ __device__ __forceinline__
#else
#define DISTOPS_HD inline
#endif

namespace jax_distops {

DISTOPS_HD uint64_t MulHi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// `n mod d` for a divisor fixed per call, without a hardware division per element (a 64-bit `div`
// costs tens of cycles, about as much as the rest of the per-id work). Powers of two use a mask;
// other divisors the round-up multiply-shift quotient of Granlund & Montgomery (PLDI'94, Fig. 4.1),
// exact for every 64-bit n. Requires 1 <= d < 2^63.
class FastMod {
 public:
  FastMod() = default;
  explicit FastMod(uint64_t d) : d_(d) {
    if ((d & (d - 1)) == 0) {
      mask_ = d - 1;
      return;
    }
    int l = 64 - __builtin_clzll(d - 1);  // ceil(log2(d)), in [2, 63]
    magic_ = static_cast<uint64_t>((static_cast<unsigned __int128>((uint64_t{1} << l) - d) << 64) / d) + 1;
    shift_ = l - 1;
  }

  DISTOPS_HD uint64_t operator()(uint64_t n) const {
    if (magic_ == 0) return n & mask_;
    uint64_t t = MulHi64(magic_, n);
    uint64_t q = (t + ((n - t) >> 1)) >> shift_;
    return n - q * d_;
  }

  DISTOPS_HD uint64_t divisor() const { return d_; }

 private:
  uint64_t d_ = 1;
  uint64_t mask_ = 0;
  uint64_t magic_ = 0;
  int shift_ = 0;
};

// shard(v) = floormod(v, S - r) + r for signed ids and (v mod (S - r)) + r for unsigned ids, where S
// is num_of_shards and r = 1 when shard 0 is kept empty ("rank0_empty_shard"), else 0. Floor-mod is a
// deliberate deviation from Monolith's truncating remainder, which sends negative ids to negative
// (out-of-bounds) shards; it is what every other Monolith call site uses (tf.math.floormod).
class ShardFn {
 public:
  ShardFn() = default;
  ShardFn(int64_t num_shards, int64_t first_shard)
      : mod_(static_cast<uint64_t>(num_shards - first_shard)), first_(first_shard) {}

  template <typename T>
  DISTOPS_HD int64_t operator()(T v) const {
    if constexpr (std::is_signed_v<T>) {
      // For x < 0, floormod(x, d) = d - 1 - ((-x - 1) mod d), and -x - 1 = ~x never overflows.
      int64_t x = static_cast<int64_t>(v);
      uint64_t neg = static_cast<uint64_t>(x >> 63);  // all ones when x < 0
      uint64_t r = mod_(static_cast<uint64_t>(x) ^ neg);
      r = (r ^ neg) + (neg & mod_.divisor());  // x < 0: ~r + d == d - 1 - r
      return static_cast<int64_t>(r) + first_;
    } else {
      return static_cast<int64_t>(mod_(static_cast<uint64_t>(v))) + first_;
    }
  }

 private:
  FastMod mod_;
  int64_t first_ = 0;
};

// Mixes all 64 bits of an id; callers take the top bits (multiplicative "Fibonacci" hashing), so ids
// that differ only in their high bits (Monolith's `slot << 54 | hash`) still spread.
DISTOPS_HD uint64_t HashId(uint64_t x) {
  x ^= x >> 31;
  return x * 0x9E3779B97F4A7C15ull;
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_SHARDING_H_
