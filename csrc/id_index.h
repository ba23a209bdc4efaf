// IdIndex: an open-addressing hash index from 64-bit ids to dense numbers 0, 1, 2, ... in
// first-insertion order. The dedup structure of the CPU kernels (host only).
#ifndef JAX_DISTOPS_CSRC_ID_INDEX_H_
#define JAX_DISTOPS_CSRC_ID_INDEX_H_

#include <cstdint>
#include <vector>

#include "sharding.h"

namespace jax_distops {

// Linear probing, power-of-two capacity, load factor at most 1/2 (it doubles when needed). Meant to
// be reused: `Reset` empties it in O(1) by bumping a generation number (a slot is occupied only if
// it carries the current generation), so one worker can dedup many tables with one allocation.
class IdIndex {
 public:
  // Empties the index and sizes it for about `expected_unique` ids.
  void Reset(int64_t expected_unique) {
    int64_t cap = 16;
    while (cap < 2 * expected_unique) cap *= 2;
    NextGeneration();
    Reserve(cap);
    SetCapacity(cap);
    size_ = 0;
  }

  const void* SlotAddress(uint64_t key) const { return &slots_[HashId(key) >> shift_]; }

  // Returns the number of `key`, inserting it with number `next` if absent (then *inserted = true).
  int32_t FindOrInsert(uint64_t key, int32_t next, bool* inserted) {
    uint64_t i = HashId(key) >> shift_;
    for (;;) {
      Slot& slot = slots_[i];
      if (slot.generation != generation_) {
        if (2 * (size_ + 1) > capacity_) {
          Grow();
          return FindOrInsert(key, next, inserted);
        }
        slot = Slot{key, next, generation_};
        ++size_;
        *inserted = true;
        return next;
      }
      if (slot.key == key) {
        *inserted = false;
        return slot.number;
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    int32_t number;
    uint32_t generation;  // the slot is occupied iff this equals generation_
  };

  void SetCapacity(int64_t cap) {
    capacity_ = cap;
    mask_ = static_cast<uint64_t>(cap) - 1;
    shift_ = 64 - __builtin_ctzll(static_cast<uint64_t>(cap));
  }

  // A generation number never used before in this buffer, so every slot reads as empty.
  void NextGeneration() {
    if (++generation_ == 0) {  // wrapped: clear once, then start again at 1
      std::fill(slots_.begin(), slots_.end(), Slot{0, 0, 0});
      generation_ = 1;
    }
  }

  // New slots get generation 0, which is never current.
  void Reserve(int64_t cap) {
    if (static_cast<size_t>(cap) > slots_.size()) slots_.resize(static_cast<size_t>(cap), Slot{0, 0, 0});
  }

  void Grow() {
    std::vector<Slot> old(slots_.begin(), slots_.begin() + capacity_);
    const uint32_t old_generation = generation_;
    NextGeneration();
    Reserve(2 * capacity_);
    SetCapacity(2 * capacity_);
    for (const Slot& s : old) {
      if (s.generation != old_generation) continue;
      uint64_t i = HashId(s.key) >> shift_;
      while (slots_[i].generation == generation_) i = (i + 1) & mask_;
      slots_[i] = Slot{s.key, s.number, generation_};
    }
  }

  std::vector<Slot> slots_;
  uint32_t generation_ = 0;
  int64_t capacity_ = 0;
  uint64_t mask_ = 0;
  int shift_ = 0;
  int64_t size_ = 0;
};

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_ID_INDEX_H_
