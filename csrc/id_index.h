// IdIndex: an open-addressing hash index from 64-bit ids to dense numbers 0, 1, 2, ... in
// first-insertion order. The dedup structure of the CPU kernels (host only).
#ifndef JAX_DISTOPS_CSRC_ID_INDEX_H_
#define JAX_DISTOPS_CSRC_ID_INDEX_H_

#include <sys/mman.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

// Indexes up to this size get a lower load factor (IdIndex::GroupsFor): about a core's L2.
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

// Open addressing over groups of 16 slots (as in Abseil's "Swiss tables"): each slot has a control
// byte, 0 when empty, else 0x80 | 7 bits of the key's hash (its tag). The control bytes sit in an
// array of their own; each slot's key and number share a 12-byte entry in another, so a probe that
// finds its key reads both from one cache line (measured against keys and numbers in arrays of
// their own, fused_reorder on 2 cores, alternating processes: Monolith's benchmark 10.7-11.2 ->
// 10.1-10.4 ms, its fused test 4.4-4.7 -> 4.3-4.4 ms). A key's home group is picked by the high
// bits of its hash times the group count (any count: an index sized for its data stays as small as
// possible and more often fits a core's L2 cache); a group that is full overflows into the next
// one. A group fills from its first slot and keys are never removed, so a key is in the occupied
// prefix of its home group, or of a later group when all before it were full.
//
// One probe compares the key's tag with the 16 control bytes of its home group at once (SSE2; a
// plain loop elsewhere). The common outcomes -- the first tag match holds the key, or no tag
// matches and the group has an empty slot -- take one straight path without a probe loop: the slot
// is picked by conditional expressions and written either way, and only the rare cases (a tag
// match holding another key, a full home group) branch off to a scalar loop over the groups. A
// linear-probing index instead branched per slot on "empty?" and "this key?", and dedup inputs are
// found or new in random order (each Monolith benchmark id occurs twice), so those branches
// mispredicted on most ids. Measured in a standalone loop (one thread, 30 tables of 33333 ids
// twice, shuffled): 8.8-9.5 ns per id with linear probing, 5.8-6.3 with groups.
//
// Load factor <= 1/4 while that fits in kSparseIndexBytes, else <= 1/2 (GroupsFor). Meant to be
// reused: `Reset` empties it by clearing the control bytes (one byte per slot), so one worker can
// dedup many tables with one allocation.
class IdIndex {
 public:
  // Empties the index and sizes it for `expected_unique` ids.
  void Reset(int64_t expected_unique) {
    groups_ = GroupsFor(expected_unique);
    slots_.Empty(groups_);
  }

  // Grows the index (keeping its contents) if it is smaller than `expected_unique` ids need.
  void Reserve(int64_t expected_unique) {
    const int64_t groups = GroupsFor(expected_unique);
    if (groups > groups_) Rehash(groups);
  }

  int64_t capacity_bytes() const { return groups_ * kGroup * kSlotBytes; }

  // Frees the spare buffer, then the one in use, while they hold more than `max_bytes` (the index
  // must be Reset before reuse).
  void ReleaseAbove(int64_t max_bytes) {
    if ((slots_.slots() + spare_.slots()) * kSlotBytes <= max_bytes) return;
    spare_.Release();  // the spare buffer goes first: the one in use is the one Reset will reuse
    if (slots_.slots() * kSlotBytes <= max_bytes) return;
    slots_.Release();
    groups_ = 0;
  }

  // Prefetches what a probe for `key` reads first: its home group's control bytes and entries.
  // Always inlined: GCC deems a function whose only effect is a prefetch pure and may delete calls.
  __attribute__((always_inline)) void Prefetch(uint64_t key) const {
    const int64_t g = Home(HashId(key));
    __builtin_prefetch(slots_.control() + g * kGroup);
    const char* entries = reinterpret_cast<const char*>(slots_.entries() + g * kGroup);
    for (int line = 0; line < 3; ++line) __builtin_prefetch(entries + 64 * line);
  }

  // Whether the index is small enough (<= kSmallGroups groups) that FindOrInsert<true> pays.
  bool small() const { return groups_ <= kSmallGroups; }

  // Returns the number of `key`, inserting it with number `next` if absent (then *inserted = true).
  // Numbers are dense: `next` must be the number of keys inserted since Reset. (The index keeps no
  // size of its own: a member updated per id would be reloaded per id, since the slot stores may
  // alias it.) kRewriteGroup: set a new key's control byte by rewriting its whole group
  // (SetControl), which pays in small indexes (small()) and costs in large ones (Monolith's
  // benchmark, whose 30 tables have indexes of ~800 KiB: ~5% more time in dedup).
  template <bool kRewriteGroup = false>
  __attribute__((always_inline)) int32_t FindOrInsert(uint64_t key, int32_t next, bool* inserted) {
    return FindOrInsert<kRewriteGroup>(key, next, next, inserted);
  }

  // The same with any number: inserts `key` with `value` unless present, where `size` is the number
  // of keys inserted since Reset (it decides when to grow). Returns the key's number: the first
  // value inserted for it.
  template <bool kRewriteGroup = false>
  __attribute__((always_inline)) int32_t FindOrInsert(uint64_t key, int32_t value, int64_t size,
                                                      bool* inserted) {
    if (2 * (size + 1) > groups_ * kGroup) Rehash(2 * std::max<int64_t>(groups_, 1));
    const uint64_t h = HashId(key);
    const Control tag = Tag(h);
    const int64_t base = Home(h) * kGroup;
    const Match m = MatchGroup(slots_.control() + base, tag);
    const int64_t first = base + __builtin_ctz(m.tag | (1u << kGroup));  // past the group if none
    const bool found = m.tag != 0 && slots_.entries()[std::min(first, base + kGroup - 1)].key == key;
    if (__builtin_expect(!found && (m.tag != 0 || m.empty == 0), 0)) {
      const int64_t slow = FindOrInsertSlow(key, h, value);  // (no pointer to *inserted escapes)
      *inserted = slow < 0;
      return static_cast<int32_t>(slow < 0 ? ~slow : slow);
    }
    const int64_t at = found ? first : base + __builtin_ctz(m.empty);
    const int32_t number = found ? slots_.entries()[at].number : value;
    if (kRewriteGroup) {
      SetControl(slots_.control() + base, at - base, tag);
    } else {
      slots_.control()[at] = tag;
    }
    slots_.entries()[at].key = key;
    slots_.entries()[at].number = number;
    *inserted = !found;
    return number;
  }

  // The number of `key`, or -1 if it was never inserted (numbers are >= 0).
  int32_t Find(uint64_t key) const {
    if (groups_ == 0) return -1;
    const Place place = Locate(slots_, groups_, key, HashId(key));
    return place.found ? slots_.entries()[place.at].number : -1;
  }

 private:
  static constexpr int64_t kGroup = 16;
  // An index has at least kMinGroups groups, so that a tiny table's ids seldom share one (see
  // SetControl).
  static constexpr int64_t kMinGroups = 8;
  static constexpr int64_t kSmallGroups = 64;
  // A control byte. Not a character type: a store through an unsigned char may alias anything, so
  // after each one the compiler would reload every pointer of the index from memory.
  enum class Control : uint8_t {};
  // A slot's key and number. Packed: 12 bytes, so that 16 of them fill 3 cache lines exactly.
  struct __attribute__((packed)) Entry {
    uint64_t key;
    int32_t number;
  };
  static_assert(sizeof(Entry) * kGroup == 3 * 64);
  static constexpr int64_t kSlotBytes = 1 + sizeof(Entry);  // control byte, key, number

  // The slots of an index: control bytes and entries, in arrays of their own. Grown only
  // (Empty), so a reused index allocates nothing.
  class Slots {
   public:
    int64_t slots() const {  // (each array's size is rounded up on its own)
      return static_cast<int64_t>(std::min({control_.size(), entries_.size()}));
    }
    Control* control() { return &control_[0]; }
    const Control* control() const { return &control_[0]; }
    Entry* entries() { return &entries_[0]; }
    const Entry* entries() const { return &entries_[0]; }
    // Makes it hold `groups` empty groups, dropping what it held (grown, if at all, without copying).
    void Empty(int64_t groups) {
      const int64_t n = groups * kGroup;
      if (n > slots()) {
        control_.GrowDiscarding(static_cast<size_t>(n));
        entries_.GrowDiscarding(static_cast<size_t>(n));
      }
      if (groups <= kSmallGroups) {  // inline 16-byte stores: a library call costs more per tiny table
        for (int64_t g = 0; g < groups; ++g) std::memset(control() + g * kGroup, 0, kGroup);
      } else {
        std::memset(control(), 0, static_cast<size_t>(n));
      }
    }
    void swap(Slots& other) {
      control_.swap(other.control_);
      entries_.swap(other.entries_);
    }
    void Release() {
      control_.Release();
      entries_.Release();
    }

   private:
    ZeroedArray<Control> control_;
    ZeroedArray<Entry> entries_;
  };

  // Bit j of `tag`: control byte j of the group equals the tag; of `empty`: it is 0.
  struct Match {
    uint32_t tag, empty;
  };
  static Match MatchGroup(const Control* control, Control tag) {
#ifdef __SSE2__
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(control));
    const __m128i t = _mm_set1_epi8(static_cast<char>(tag));  // (0: empty slots)
    return {static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(c, t))),
            static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(c, _mm_setzero_si128())))};
#else
    Match m{0, 0};
    for (int j = 0; j < kGroup; ++j) {
      m.tag |= static_cast<uint32_t>(control[j] == tag) << j;
      m.empty |= static_cast<uint32_t>(control[j] == Control{0}) << j;
    }
    return m;
#endif
  }

  // Sets control byte j of a group to `tag`, storing the group's 16 bytes at once: the next probe
  // of a small index often loads the same group (a table of 30 ids has 8), and a 16-byte load
  // overlapping a pending one-byte store cannot take its data from the store, so it stalls until
  // the store is written to the cache (there half of a vmap of 30-id tables' dedup time went).
  static void SetControl(Control* group, int64_t j, Control tag) {
#ifdef __SSE2__
    // 16 zero bytes, 0xff, 15 zero bytes: loaded from kGroup - j, a mask of byte j.
    alignas(16) static constexpr uint8_t kByte[2 * kGroup] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                             0, 0, 0, 0, 0xff};
    const __m128i mask = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kByte + kGroup - j));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(group));
    const __m128i t = _mm_set1_epi8(static_cast<char>(tag));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(group),
                     _mm_or_si128(_mm_andnot_si128(mask, c), _mm_and_si128(mask, t)));
#else
    group[j] = tag;
#endif
  }

  // Hash bits 40-46: clear of the bits 24-35 that HashBucket partitions by (keys of one partition
  // share those) and of the top bits that pick the home group in indexes of up to 2^17 groups
  // (the largest the kernels build has 2^16: a table of 2^19 distinct ids).
  static Control Tag(uint64_t h) { return Control(0x80u | ((h >> 40) & 0x7fu)); }

  // Groups for `expected_unique` ids at load factor <= 1/4, or <= 1/2 for large indexes: fewer
  // collisions mean fewer slow probes (Monolith's fused test, 128 tables of 10240 new ids, took
  // ~7.0 -> ~4.9 ms at 1/4 with linear probing), but a larger index would spill further out of
  // cache, which costs more.
  static int64_t GroupsFor(int64_t expected_unique) {
    const int64_t sparse = 4 * expected_unique + 2;
    const int64_t slots = sparse * kSlotBytes <= kSparseIndexBytes ? sparse : 2 * expected_unique + 2;
    return std::max<int64_t>(kMinGroups, (slots + kGroup - 1) / kGroup);
  }

  static int64_t HomeGroup(uint64_t h, int64_t groups) {
    return static_cast<int64_t>(MulHi64(h, static_cast<uint64_t>(groups)));
  }
  int64_t Home(uint64_t h) const { return HomeGroup(h, groups_); }

  // Where `key` (whose hash is h) is in `slots` of `groups` groups, or (found = false) the empty
  // slot that ends the chain of full groups from its home group: where it goes.
  struct Place {
    int64_t at;
    bool found;
  };
  static Place Locate(const Slots& slots, int64_t groups, uint64_t key, uint64_t h) {
    const Control tag = Tag(h);
    for (int64_t g = HomeGroup(h, groups);; g = g + 1 == groups ? 0 : g + 1) {
      const Match m = MatchGroup(slots.control() + g * kGroup, tag);
      for (uint32_t bits = m.tag; bits != 0; bits &= bits - 1) {
        const int64_t at = g * kGroup + __builtin_ctz(bits);
        if (slots.entries()[at].key == key) return {at, true};
      }
      if (m.empty != 0) return {g * kGroup + __builtin_ctz(m.empty), false};
    }
  }

  static void Store(Slots& slots, int64_t at, uint64_t h, uint64_t key, int32_t number) {
    slots.control()[at] = Tag(h);
    slots.entries()[at].key = key;
    slots.entries()[at].number = number;
  }

  // FindOrInsert's other cases: returns the key's number, or ~value if it was inserted now.
  __attribute__((noinline)) int64_t FindOrInsertSlow(uint64_t key, uint64_t h, int32_t value) {
    const Place place = Locate(slots_, groups_, key, h);
    if (place.found) return slots_.entries()[place.at].number;
    Store(slots_, place.at, h, key, value);
    return ~int64_t{value};
  }

  // Inserts a key known to be absent (Rehash).
  static void Insert(Slots& slots, int64_t groups, uint64_t key, int32_t number) {
    const uint64_t h = HashId(key);
    Store(slots, Locate(slots, groups, key, h).at, h, key, number);
  }

  // Re-places the contents into `groups` groups. Small contents (an index reused at a small size,
  // e.g. sized from a prefix and then Reserve()d) are re-placed within the buffer in use when it is
  // big enough, through a copy of them: growing the spare buffer as well would double the memory
  // the index holds, and past kMaxPooledBytes the pool drops the spare buffer, to be page-faulted
  // in again on the next call (measured: a 2e6-id single-table fused_reorder spent ~10% of its
  // time in such page faults). Otherwise they move to the spare buffer, and the two are swapped:
  // growing allocates nothing once both buffers are big enough.
  __attribute__((noinline)) void Rehash(int64_t groups) {
    const int64_t old_slots = groups_ * kGroup;
    if (slots_.slots() >= groups * kGroup && old_slots * kSlotBytes <= kSparseIndexBytes) {
      std::vector<Entry> live;
      for (int64_t j = 0; j < old_slots; ++j) {
        if (slots_.control()[j] != Control{0}) live.push_back(slots_.entries()[j]);
      }
      slots_.Empty(groups);
      groups_ = groups;
      for (const Entry& e : live) Insert(slots_, groups, e.key, e.number);
      return;
    }
    spare_.Empty(groups);
    for (int64_t j = 0; j < old_slots; ++j) {
      if (slots_.control()[j] != Control{0}) {
        Insert(spare_, groups, slots_.entries()[j].key, slots_.entries()[j].number);
      }
    }
    slots_.swap(spare_);
    groups_ = groups;
  }

  Slots slots_;
  Slots spare_;  // the other buffer of Rehash
  int64_t groups_ = 0;
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
