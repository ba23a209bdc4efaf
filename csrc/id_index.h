// IdIndex: an open-addressing hash index from 64-bit ids to dense numbers 0, 1, 2, ... in
// first-insertion order. The dedup structure of the CPU kernels (host only).
#ifndef JAX_DISTOPS_CSRC_ID_INDEX_H_
#define JAX_DISTOPS_CSRC_ID_INDEX_H_

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "sharding.h"

namespace jax_distops {

// Sizing policy of the dedup kernels: an input of up to kPresizedIds ids gets an index for all of
// them distinct (<= 1 MiB); a larger one dedups its first kSampleIds ids, then Reserve()s what the
// distinct fraction seen so far predicts (ExpectedUnique): big enough not to regrow, small enough to
// stay in cache. It still grows if the prefix was not representative.
inline constexpr int64_t kPresizedIds = 1 << 15;
inline constexpr int64_t kSampleIds = 4096;

// Indexes up to this size get a lower load factor (IdIndex::CapacityFor): about a core's L2.
inline constexpr int64_t kSparseIndexBytes = int64_t{1} << 20;

inline int64_t FirstSizing(int64_t n) { return n <= kPresizedIds ? n : kSampleIds; }

// Distinct ids expected among n, from `unique` among the first `seen`, plus 1/8 slack.
inline int64_t ExpectedUnique(int64_t unique, int64_t seen, int64_t n) {
  const int64_t expected = unique * n / std::max<int64_t>(seen, 1);
  return expected + expected / 8;
}

// Zero-initialised storage for the slots of an IdIndex. Arrays of 2 MiB and more sit on 2 MiB-aligned
// memory that asks for transparent huge pages: an index is probed at random, and on 4 KiB pages a
// large one misses the TLB on nearly every probe (page walks are slow, worse under virtualization).
// Indexes are pooled (IndexLease), so the one-time cost of getting huge pages is not paid per call.
template <typename T>
class ZeroedArray {
 public:
  ZeroedArray() = default;
  ~ZeroedArray() { std::free(data_); }
  ZeroedArray(const ZeroedArray&) = delete;
  ZeroedArray& operator=(const ZeroedArray&) = delete;

  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  void swap(ZeroedArray& other) {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }
  void Zero() {
    if (size_ > 0) std::memset(static_cast<void*>(data_), 0, size_ * sizeof(T));
  }
  // Makes it hold at least n elements, all zero: the old contents are dropped, not copied.
  void GrowDiscarding(size_t n) {
    if (n <= size_) return;
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t bytes = n * sizeof(T);
    const size_t align = bytes >= kHuge ? kHuge : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);
#endif
    std::memset(p, 0, rounded);
    std::free(data_);
    data_ = static_cast<T*>(p);
    size_ = rounded / sizeof(T);
  }
  void Release() {
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Linear probing at load factor <= 1/2 (<= 1/4 for small indexes: CapacityFor); the capacity is
// any size (a slot is picked by the high bits of hash * capacity, not by a power-of-two mask), so
// an index sized for its data stays as small as possible and more often fits the core's L2 cache.
// Meant to be reused: `Reset` empties it in O(1) by bumping a generation number (a slot is
// occupied only if it carries the current generation), so one worker can dedup many tables with
// one allocation.
class IdIndex {
 public:
  // Empties the index and sizes it for `expected_unique` ids.
  void Reset(int64_t expected_unique) {
    NextGeneration();
    SetCapacity(CapacityFor(expected_unique));
  }

  // Grows the index (keeping its contents) if it is smaller than `expected_unique` ids need.
  void Reserve(int64_t expected_unique) {
    const int64_t cap = CapacityFor(expected_unique);
    if (cap > capacity_) Rehash(cap);
  }

  int64_t capacity_bytes() const { return capacity_ * static_cast<int64_t>(sizeof(Slot)); }

  // Frees the spare buffer, then the one in use, while they hold more than `max_bytes` (the index
  // must be Reset before reuse).
  void ReleaseAbove(int64_t max_bytes) {
    if (static_cast<int64_t>((slots_.size() + spare_.size()) * sizeof(Slot)) <= max_bytes) return;
    spare_.Release();  // the spare buffer goes first: the one in use is the one Reset will reuse
    if (static_cast<int64_t>(slots_.size() * sizeof(Slot)) <= max_bytes) return;
    slots_.Release();
    capacity_ = 0;
  }

  const void* SlotAddress(uint64_t key) const { return &slots_[Home(key)]; }

  // Returns the number of `key`, inserting it with number `next` if absent (then *inserted = true).
  // Numbers are dense: `next` must be the number of keys inserted since Reset. (The index keeps no
  // size of its own: a member updated per id would be reloaded per id, since the slot stores may
  // alias it.)
  int32_t FindOrInsert(uint64_t key, int32_t next, bool* inserted) {
    return FindOrInsert(key, next, next, inserted);
  }

  // The same with any number: inserts `key` with `value` unless present, where `size` is the number
  // of keys inserted since Reset (it decides when to grow). Returns the key's number: the first
  // value inserted for it.
  int32_t FindOrInsert(uint64_t key, int32_t value, int64_t size, bool* inserted) {
    uint64_t i = Home(key);
    for (;;) {
      Slot& slot = slots_[i];
      if (slot.generation != generation_) {
        if (2 * (size + 1) > capacity_) {
          Rehash(2 * capacity_);
          return FindOrInsert(key, value, size, inserted);
        }
        slot = Slot{key, value, generation_};
        *inserted = true;
        return value;
      }
      if (slot.key == key) {
        *inserted = false;
        return slot.number;
      }
      i = i + 1 == static_cast<uint64_t>(capacity_) ? 0 : i + 1;
    }
  }

  // The number of `key`, or -1 if it was never inserted (numbers are >= 0).
  int32_t Find(uint64_t key) const {
    uint64_t i = Home(key);
    for (;;) {
      const Slot& slot = slots_[i];
      if (slot.generation != generation_) return -1;
      if (slot.key == key) return slot.number;
      i = i + 1 == static_cast<uint64_t>(capacity_) ? 0 : i + 1;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    int32_t number;
    uint32_t generation;  // the slot is occupied iff this equals generation_
  };

  // Load factor <= 1/4 while that fits in kSparseIndexBytes (fewer collisions, so fewer probes and
  // mispredicted branches: Monolith's fused test, 128 tables of 10240 new ids, ~7.0 -> ~4.9 ms),
  // else <= 1/2 (a larger index would spill further out of cache, which costs more).
  static int64_t CapacityFor(int64_t expected_unique) {
    const int64_t sparse = 4 * expected_unique + 2;
    const bool small = sparse * static_cast<int64_t>(sizeof(Slot)) <= kSparseIndexBytes;
    return small ? std::max<int64_t>(16, sparse) : 2 * expected_unique + 2;
  }

  uint64_t Home(uint64_t key) const { return MulHi64(HashId(key), static_cast<uint64_t>(capacity_)); }

  // A generation number never used before in either buffer, so every slot reads as empty.
  void NextGeneration() {
    if (++generation_ == 0) {  // wrapped: clear once, then start again at 1
      slots_.Zero();
      spare_.Zero();
      generation_ = 1;
    }
  }

  // New slots get generation 0, which is never current.
  // Only called when the contents are stale (after a new generation), so growing may drop them.
  static void EnsureSize(ZeroedArray<Slot>& slots, int64_t cap) {
    slots.GrowDiscarding(static_cast<size_t>(cap));
  }

  void SetCapacity(int64_t cap) {
    EnsureSize(slots_, cap);
    capacity_ = cap;
  }

  // Moves the current contents into the spare buffer, resized to `cap` slots, and swaps the two:
  // growing allocates nothing once both buffers are big enough. But small contents (an index
  // reused at a small size, e.g. sized from a prefix and then Reserve()d) are re-placed within the
  // buffer in use when it is big enough, through a copy of them: growing the spare buffer as well
  // would double the memory the index holds, and past kMaxPooledBytes the pool drops the spare
  // buffer, to be page-faulted in again on the next call (measured: a 2e6-id single-table
  // fused_reorder spent ~10% of its time in such page faults).
  void Rehash(int64_t cap) {
    if (static_cast<int64_t>(slots_.size()) >= cap &&
        capacity_ * static_cast<int64_t>(sizeof(Slot)) <= kSparseIndexBytes) {
      std::vector<Slot> live;
      for (int64_t j = 0; j < capacity_; ++j) {
        if (slots_[j].generation == generation_) live.push_back(slots_[j]);
      }
      NextGeneration();
      capacity_ = cap;
      for (const Slot& s : live) {
        uint64_t i = Home(s.key);
        while (slots_[i].generation == generation_) i = i + 1 == static_cast<uint64_t>(cap) ? 0 : i + 1;
        slots_[i] = Slot{s.key, s.number, generation_};
      }
      return;
    }
    const uint32_t old_generation = generation_;
    const bool wrap = generation_ == std::numeric_limits<uint32_t>::max();  // then both buffers are cleared, around the move
    if (wrap) {
      spare_.Zero();
      generation_ = 1;
    } else {
      ++generation_;
    }
    EnsureSize(spare_, cap);
    for (int64_t j = 0; j < capacity_; ++j) {
      const Slot& s = slots_[j];
      if (s.generation != old_generation) continue;
      uint64_t i = MulHi64(HashId(s.key), static_cast<uint64_t>(cap));
      while (spare_[i].generation == generation_) i = i + 1 == static_cast<uint64_t>(cap) ? 0 : i + 1;
      spare_[i] = Slot{s.key, s.number, generation_};
    }
    slots_.swap(spare_);
    capacity_ = cap;
    if (wrap) spare_.Zero();
  }

  ZeroedArray<Slot> slots_;
  ZeroedArray<Slot> spare_;  // the other buffer of Rehash
  uint32_t generation_ = 0;
  int64_t capacity_ = 0;
};

// An object borrowed from a process-wide free list of its type for one task or one call: the hash
// indexes of the dedup and lookup kernels, and their scratch buffers. They outlive the
// calls on purpose: fresh multi-MiB memory costs a page fault per 4 KiB on first touch (~0.45 ms
// per MiB measured on the project VM, a third of a 2e6-id fused_reorder call), while reused memory
// costs nothing. Only capacity survives -- every user starts by resetting what it borrowed -- and an
// object gives back anything above kMaxPooledBytes (T::ReleaseAbove) when it is returned. A free
// list holds at most as many objects as were ever in use at once (capped at kMaxPooledObjects); a
// lease may be used by other threads while its owner holds it (a call's scratch is written by all
// of its tasks).
inline constexpr int64_t kMaxPooledBytes = int64_t{64} << 20;
inline constexpr size_t kMaxPooledObjects = 256;

template <typename T>
class Lease {
 public:
  Lease() : object_(Take()) {}
  ~Lease() {
    if (object_ != nullptr) Give(std::move(object_));
  }
  Lease(Lease&&) = default;
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  T& operator*() const { return *object_; }
  T* operator->() const { return object_.get(); }

 private:
  struct FreeList {
    std::mutex mu;
    std::vector<std::unique_ptr<T>> objects;
  };
  static FreeList& Free() {
    static FreeList* free_list = new FreeList;  // never destroyed: leases may end during exit
    return *free_list;
  }
  static std::unique_ptr<T> Take() {
    FreeList& f = Free();
    {
      std::lock_guard<std::mutex> lock(f.mu);
      if (!f.objects.empty()) {
        std::unique_ptr<T> object = std::move(f.objects.back());
        f.objects.pop_back();
        return object;
      }
    }
    return std::make_unique<T>();
  }
  static void Give(std::unique_ptr<T> object) {
    object->ReleaseAbove(kMaxPooledBytes);
    FreeList& f = Free();
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.objects.size() < kMaxPooledObjects) f.objects.push_back(std::move(object));
  }

  std::unique_ptr<T> object_;
};

using IndexLease = Lease<IdIndex>;

// The bucket of a key among `buckets` (a power of two): hash bits disjoint from the top bits that
// pick its index slot, so the keys of one bucket still spread over their whole index.
inline int64_t HashBucket(uint64_t key, int64_t buckets) {
  return static_cast<int64_t>((HashId(key) >> 24) & static_cast<uint64_t>(buckets - 1));
}

}  // namespace jax_distops

#endif  // JAX_DISTOPS_CSRC_ID_INDEX_H_
