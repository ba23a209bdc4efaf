// Randomized check of csrc/id_index.h's IdIndex against std::unordered_map, compiled and run by
// tests/test_id_index.py (with SSE2, and with its portable fallback: -U__SSE2__). Exits 1 and
// prints the first mismatch, or prints "ok".
//
// Covers what the op tests reach only by chance: both FindOrInsert variants (one-byte and
// whole-group control stores), growth from a too-small index (Rehash, both of its paths), keys
// whose low bits repeat, and reuse of one index across many Resets of different sizes.
#include <cstdio>
#include <random>
#include <unordered_map>

#include "id_index.h"

using jax_distops::IdIndex;

int main() {
  std::mt19937_64 rng(3);
  IdIndex index;
  for (int round = 0; round < 300; ++round) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % (round % 10 == 0 ? 60000 : 3000));
    const uint64_t domain = 1 + rng() % (2 * static_cast<uint64_t>(n));
    const bool presized = rng() % 2 == 0;
    const bool rewrite = rng() % 2 == 0;
    index.Reset(presized ? n : 1 + static_cast<int64_t>(rng() % 16));
    std::unordered_map<uint64_t, int32_t> want;
    int32_t next = 0;
    for (int64_t i = 0; i < n; ++i) {
      // Keys spaced 2^16 apart (their low bits repeat) in some rounds, spread in others.
      const uint64_t draw = rng() % domain;
      const uint64_t key = round % 3 == 0 ? draw << 16 : draw * 0x9E3779B97F4A7C15ull;
      bool inserted;
      const int32_t got = rewrite ? index.FindOrInsert<true>(key, next, &inserted)
                                  : index.FindOrInsert<false>(key, next, &inserted);
      const auto it = want.find(key);
      const bool want_inserted = it == want.end();
      const int32_t want_number = want_inserted ? next : it->second;
      if (got != want_number || inserted != want_inserted) {
        std::printf("round %d id %lld: key %llu gave %d (inserted %d), want %d (inserted %d)\n",
                    round, static_cast<long long>(i), static_cast<unsigned long long>(key), got,
                    inserted, want_number, want_inserted);
        return 1;
      }
      if (want_inserted) want.emplace(key, next++);
    }
    for (const auto& [key, number] : want) {
      if (index.Find(key) != number) {
        std::printf("round %d: Find(%llu) = %d, want %d\n", round,
                    static_cast<unsigned long long>(key), index.Find(key), number);
        return 1;
      }
    }
    for (int k = 0; k < 100; ++k) {  // keys never inserted (odd multiples of 2^15 or above domain)
      const uint64_t absent = round % 3 == 0 ? (rng() << 16) | (1u << 15) : domain + 1 + rng() % 1000;
      const uint64_t key = round % 3 == 0 ? absent : absent * 0x9E3779B97F4A7C15ull;
      if (want.count(key) == 0 && index.Find(key) != -1) {
        std::printf("round %d: Find(%llu) found a key never inserted\n", round,
                    static_cast<unsigned long long>(key));
        return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
