// Tests for kvpool/kv_tier_host.c: the backup-tier wrappers and the host tier —
// round trips, full tier, stale and double-freed ids, size checks, bad params, exact
// stats, no leak after destroy, and unwinding when an allocation fails at create; a slab
// the caller owns (blobs at slot * slot_bytes, never freed by the tier).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "kv_tier.h"
}

namespace {
struct TierDel {
  void operator()(kv_tier_t *t) const { kv_tier_destroy(t); }
};
using TierPtr = std::unique_ptr<kv_tier_t, TierDel>;

TierPtr make_host(size_t capacity_bytes, size_t slot_bytes) {
  kv_tier_host_params_t p = kv_tier_host_params_default();
  p.capacity_bytes = capacity_bytes;
  p.slot_bytes = slot_bytes;
  kv_tier_t *t = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_tier_host_create(&p, &err, &t), AK_OK) << err.msg;
  return TierPtr(t);
}

std::vector<unsigned char> random_bytes(std::mt19937 &rng, size_t n) {
  std::vector<unsigned char> b(n);
  for (auto &x : b) x = (unsigned char)(rng() & 0xff);
  return b;
}

TEST(KvTierHost, NameAndEmptyStats) {
  TierPtr t = make_host(10 * 64, 64);
  ASSERT_TRUE(t);
  EXPECT_STREQ(kv_tier_name(t.get()), "host");
  EXPECT_STREQ(kv_tier_errmsg(t.get()), "");
  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.n_slots, 10);
  EXPECT_EQ(s.n_used, 0);
  EXPECT_EQ(s.bytes_used, 0u);
  EXPECT_EQ(s.bytes_capacity, 640u);
  EXPECT_EQ(s.puts, 0u);
  EXPECT_EQ(s.gets, 0u);
}

TEST(KvTierHost, CapacityRemainderIsDropped) {
  TierPtr t = make_host(10 * 100 + 99, 100);
  ASSERT_TRUE(t);
  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.n_slots, 10);
  EXPECT_EQ(s.bytes_capacity, 1000u);
}

TEST(KvTierHost, RoundTripManySlots) {
  const size_t slot = 4096 + 7;  // odd size: no alignment assumption
  const int n = 200;
  TierPtr t = make_host(slot * n, slot);
  ASSERT_TRUE(t);
  std::mt19937 rng(1234);
  std::vector<std::vector<unsigned char>> blobs;
  std::vector<kv_backup_id_t> ids;
  std::set<kv_backup_id_t> seen;
  for (int i = 0; i < n; i++) {
    blobs.push_back(random_bytes(rng, slot));
    kv_backup_id_t id = KV_BACKUP_NONE;
    ASSERT_EQ(kv_tier_put(t.get(), blobs.back().data(), slot, &id), AK_OK) << kv_tier_errmsg(t.get());
    EXPECT_GE(id, 0);
    EXPECT_TRUE(seen.insert(id).second) << "duplicate id " << id;
    ids.push_back(id);
  }
  // Read back in reverse order, twice: get leaves the blob stored.
  for (int rep = 0; rep < 2; rep++) {
    for (int i = n - 1; i >= 0; i--) {
      std::vector<unsigned char> out(slot, 0xAB);
      ASSERT_EQ(kv_tier_get(t.get(), ids[i], out.data(), slot), AK_OK) << kv_tier_errmsg(t.get());
      ASSERT_EQ(out, blobs[i]) << "slot " << i;
    }
  }
  // Free every other one, put new blobs into the freed slots, check all again.
  for (int i = 0; i < n; i += 2) ASSERT_EQ(kv_tier_free(t.get(), ids[i]), AK_OK);
  for (int i = 0; i < n; i += 2) {
    blobs[i] = random_bytes(rng, slot);
    ASSERT_EQ(kv_tier_put(t.get(), blobs[i].data(), slot, &ids[i]), AK_OK);
  }
  for (int i = 0; i < n; i++) {
    std::vector<unsigned char> out(slot);
    ASSERT_EQ(kv_tier_get(t.get(), ids[i], out.data(), slot), AK_OK);
    ASSERT_EQ(out, blobs[i]) << "slot " << i;
  }
}

TEST(KvTierHost, PartialBlobRoundTrip) {
  TierPtr t = make_host(4 * 256, 256);
  ASSERT_TRUE(t);
  std::mt19937 rng(7);
  for (size_t n : {size_t(1), size_t(17), size_t(255), size_t(256)}) {
    auto b = random_bytes(rng, n);
    kv_backup_id_t id;
    ASSERT_EQ(kv_tier_put(t.get(), b.data(), n, &id), AK_OK);
    std::vector<unsigned char> out(n);
    ASSERT_EQ(kv_tier_get(t.get(), id, out.data(), n), AK_OK);
    EXPECT_EQ(out, b);
    ASSERT_EQ(kv_tier_free(t.get(), id), AK_OK);
  }
}

TEST(KvTierHost, FullThenFreeOneThenPut) {
  const size_t slot = 128;
  TierPtr t = make_host(4 * slot, slot);
  ASSERT_TRUE(t);
  std::vector<unsigned char> b(slot, 3);
  kv_backup_id_t ids[4];
  for (auto &id : ids) ASSERT_EQ(kv_tier_put(t.get(), b.data(), slot, &id), AK_OK);

  kv_backup_id_t extra = 12345;
  EXPECT_EQ(kv_tier_put(t.get(), b.data(), slot, &extra), AK_ERR_POOL_FULL);
  EXPECT_EQ(extra, 12345) << "id_p written on failure";
  std::string msg = kv_tier_errmsg(t.get());
  EXPECT_NE(msg.find("host tier full: 4 of 4 slots (512 bytes)"), std::string::npos) << msg;
  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.puts, 4u) << "a failed put is not counted";
  EXPECT_EQ(s.n_used, 4);

  ASSERT_EQ(kv_tier_free(t.get(), ids[2]), AK_OK);
  EXPECT_STREQ(kv_tier_errmsg(t.get()), "") << "a successful call clears the last error";
  std::vector<unsigned char> b2(slot, 9), out(slot);
  ASSERT_EQ(kv_tier_put(t.get(), b2.data(), slot, &extra), AK_OK);
  ASSERT_EQ(kv_tier_get(t.get(), extra, out.data(), slot), AK_OK);
  EXPECT_EQ(out, b2);
  EXPECT_EQ(kv_tier_put(t.get(), b.data(), slot, &ids[2]), AK_ERR_POOL_FULL);
}

TEST(KvTierHost, StaleIdAfterReuseIsNotFound) {
  const size_t slot = 32;
  TierPtr t = make_host(slot, slot);  // one slot: reuse is certain
  ASSERT_TRUE(t);
  std::vector<unsigned char> a(slot, 1), b(slot, 2), out(slot, 0);
  kv_backup_id_t old_id, new_id;
  ASSERT_EQ(kv_tier_put(t.get(), a.data(), slot, &old_id), AK_OK);
  ASSERT_EQ(kv_tier_free(t.get(), old_id), AK_OK);
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), slot, &new_id), AK_OK);
  EXPECT_NE(new_id, old_id);

  EXPECT_EQ(kv_tier_get(t.get(), old_id, out.data(), slot), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(kv_tier_errmsg(t.get())).find("stale"), std::string::npos) << kv_tier_errmsg(t.get());
  EXPECT_EQ(out, std::vector<unsigned char>(slot, 0)) << "dst written on failure";
  EXPECT_EQ(kv_tier_free(t.get(), old_id), AK_ERR_NOT_FOUND);
  // The stale free must not have dropped the new blob.
  ASSERT_EQ(kv_tier_get(t.get(), new_id, out.data(), slot), AK_OK);
  EXPECT_EQ(out, b);

  // Many cycles on one slot: every id is distinct and only the newest is live.
  std::set<kv_backup_id_t> ids{old_id, new_id};
  kv_backup_id_t cur = new_id;
  for (int i = 0; i < 100; i++) {
    ASSERT_EQ(kv_tier_free(t.get(), cur), AK_OK);
    ASSERT_EQ(kv_tier_put(t.get(), a.data(), slot, &cur), AK_OK);
    EXPECT_TRUE(ids.insert(cur).second);
  }
  for (kv_backup_id_t id : ids)
    EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), slot), id == cur ? AK_OK : AK_ERR_NOT_FOUND) << id;
}

TEST(KvTierHost, DoubleFreeIsNotFound) {
  TierPtr t = make_host(2 * 16, 16);
  ASSERT_TRUE(t);
  std::vector<unsigned char> a(16, 5);
  kv_backup_id_t id;
  ASSERT_EQ(kv_tier_put(t.get(), a.data(), 16, &id), AK_OK);
  ASSERT_EQ(kv_tier_free(t.get(), id), AK_OK);
  EXPECT_EQ(kv_tier_free(t.get(), id), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(kv_tier_errmsg(t.get())).find("freed or stale"), std::string::npos);
  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.n_used, 0);
  EXPECT_EQ(s.frees, 1u);
  // The double free did not push the slot twice: only 2 puts fit.
  kv_backup_id_t x, y, z;
  EXPECT_EQ(kv_tier_put(t.get(), a.data(), 16, &x), AK_OK);
  EXPECT_EQ(kv_tier_put(t.get(), a.data(), 16, &y), AK_OK);
  EXPECT_EQ(kv_tier_put(t.get(), a.data(), 16, &z), AK_ERR_POOL_FULL);
}

TEST(KvTierHost, UnknownIdsAreNotFound) {
  TierPtr t = make_host(4 * 16, 16);
  ASSERT_TRUE(t);
  std::vector<unsigned char> out(16);
  kv_backup_id_t live;
  ASSERT_EQ(kv_tier_put(t.get(), out.data(), 16, &live), AK_OK);  // slot 0 in use
  // Never handed out: NONE, negative, slot out of range, slot 0 with a wrong gen
  // (0, 2, max), a free slot.
  const kv_backup_id_t bad[] = {KV_BACKUP_NONE,         INT64_MIN, (int64_t(1) << 32) | 4,
                                0,                      int64_t(2) << 32, int64_t(0x7fffffff) << 32,
                                (int64_t(1) << 32) | 1, (int64_t(1) << 32) | 0xffffffffLL};
  for (kv_backup_id_t id : bad) {
    EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), 16), AK_ERR_NOT_FOUND) << id;
    EXPECT_EQ(kv_tier_free(t.get(), id), AK_ERR_NOT_FOUND) << id;
  }
  EXPECT_EQ(kv_tier_get(t.get(), live, out.data(), 16), AK_OK) << "a bad id disturbed a live one";
}

TEST(KvTierHost, WrongSizeIsInvalidArg) {
  TierPtr t = make_host(2 * 64, 64);
  ASSERT_TRUE(t);
  std::vector<unsigned char> big(65, 1), out(65, 0);
  kv_backup_id_t id = KV_BACKUP_NONE;
  EXPECT_EQ(kv_tier_put(t.get(), big.data(), 65, &id), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_tier_errmsg(t.get())).find("n_bytes=65 exceeds slot_bytes=64"), std::string::npos)
      << kv_tier_errmsg(t.get());
  EXPECT_EQ(id, KV_BACKUP_NONE);
  EXPECT_EQ(kv_tier_put(t.get(), big.data(), 0, &id), AK_ERR_INVALID_ARG);

  ASSERT_EQ(kv_tier_put(t.get(), big.data(), 40, &id), AK_OK);
  EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), 64), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kv_tier_errmsg(t.get())).find("holds 40 bytes, get asked for 64"), std::string::npos)
      << kv_tier_errmsg(t.get());
  EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), 39), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), 0), AK_ERR_INVALID_ARG);
  EXPECT_EQ(out, std::vector<unsigned char>(65, 0));
  ASSERT_EQ(kv_tier_get(t.get(), id, out.data(), 40), AK_OK);
  EXPECT_EQ(0, std::memcmp(out.data(), big.data(), 40));

  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.puts, 1u);
  EXPECT_EQ(s.gets, 1u);
}

TEST(KvTierHost, NullArgumentsAreInvalidArg) {
  TierPtr t = make_host(2 * 8, 8);
  ASSERT_TRUE(t);
  unsigned char b[8] = {0};
  kv_backup_id_t id;
  EXPECT_EQ(kv_tier_put(nullptr, b, 8, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_put(t.get(), nullptr, 8, &id), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_put(t.get(), b, 8, nullptr), AK_ERR_INVALID_ARG);
  ASSERT_EQ(kv_tier_put(t.get(), b, 8, &id), AK_OK);
  EXPECT_EQ(kv_tier_get(nullptr, id, b, 8), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_get(t.get(), id, nullptr, 8), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_free(nullptr, id), AK_ERR_INVALID_ARG);
  EXPECT_STREQ(kv_tier_errmsg(nullptr), "tier is NULL");
  EXPECT_STREQ(kv_tier_name(nullptr), "none");
  kv_tier_stats_t s;
  std::memset(&s, 0xff, sizeof s);
  kv_tier_stats(nullptr, &s);
  EXPECT_EQ(s.n_slots, 0);
  EXPECT_EQ(s.puts, 0u);
  kv_tier_destroy(nullptr);
}

TEST(KvTierHost, BadParamsAreInvalidArg) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  struct Case {
    size_t capacity_bytes, slot_bytes;
    const char *msg;
  } cases[] = {
      {0, 64, "capacity_bytes=0 is less than one slot of 64 bytes"},
      {63, 64, "capacity_bytes=63 is less than one slot of 64 bytes"},
      {1024, 0, "slot_bytes is 0"},
      {0, 0, "slot_bytes is 0"},
      {(size_t(1) << 31) * 2, 1, "exceeds 2^31-1"},
  };
  for (const Case &c : cases) {
    kv_tier_host_params_t p = kv_tier_host_params_default();
    p.capacity_bytes = c.capacity_bytes;
    p.slot_bytes = c.slot_bytes;
    kv_tier_t *t = reinterpret_cast<kv_tier_t *>(0x1);
    ak_err_t err;
    EXPECT_EQ(kv_tier_host_create(&p, &err, &t), AK_ERR_INVALID_ARG) << c.capacity_bytes << "/" << c.slot_bytes;
    EXPECT_NE(std::string(err.msg).find(c.msg), std::string::npos) << err.msg;
    EXPECT_EQ(t, reinterpret_cast<kv_tier_t *>(0x1)) << "tier_p written on failure";
  }
  kv_tier_t *t = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_tier_host_create(nullptr, &err, &t), AK_ERR_INVALID_ARG);
  kv_tier_host_params_t p = kv_tier_host_params_default();
  p.capacity_bytes = 64;
  p.slot_bytes = 64;
  EXPECT_EQ(kv_tier_host_create(&p, &err, nullptr), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_host_create(&p, nullptr, nullptr), AK_ERR_INVALID_ARG);  // err may be NULL
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(KvTierHost, StatsAreExact) {
  const size_t slot = 100;
  TierPtr t = make_host(8 * slot, slot);
  ASSERT_TRUE(t);
  std::vector<unsigned char> b(slot, 7), out(slot);
  kv_backup_id_t a, c, d;
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), 100, &a), AK_OK);
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), 30, &c), AK_OK);
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), 1, &d), AK_OK);
  ASSERT_EQ(kv_tier_get(t.get(), a, out.data(), 100), AK_OK);
  ASSERT_EQ(kv_tier_get(t.get(), a, out.data(), 100), AK_OK);
  ASSERT_EQ(kv_tier_get(t.get(), c, out.data(), 30), AK_OK);
  EXPECT_EQ(kv_tier_get(t.get(), c, out.data(), 31), AK_ERR_INVALID_ARG);  // not counted
  ASSERT_EQ(kv_tier_free(t.get(), c), AK_OK);
  EXPECT_EQ(kv_tier_free(t.get(), c), AK_ERR_NOT_FOUND);  // not counted

  kv_tier_stats_t s;
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.n_slots, 8);
  EXPECT_EQ(s.n_used, 2);
  EXPECT_EQ(s.bytes_used, 101u);
  EXPECT_EQ(s.bytes_capacity, 800u);
  EXPECT_EQ(s.puts, 3u);
  EXPECT_EQ(s.gets, 3u);
  EXPECT_EQ(s.frees, 1u);
  EXPECT_EQ(s.bytes_put, 131u);
  EXPECT_EQ(s.bytes_got, 230u);

  ASSERT_EQ(kv_tier_free(t.get(), a), AK_OK);
  ASSERT_EQ(kv_tier_free(t.get(), d), AK_OK);
  kv_tier_stats(t.get(), &s);
  EXPECT_EQ(s.n_used, 0);
  EXPECT_EQ(s.bytes_used, 0u);
  EXPECT_EQ(s.puts, 3u) << "counters are cumulative";
  EXPECT_EQ(s.bytes_put, 131u);
}

TEST(KvTierHost, NothingOutstandingAfterDestroy) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  {
    TierPtr t = make_host(64 * 1024 + 5, 1024);
    ASSERT_TRUE(t);
    EXPECT_GE(ak_alloc_outstanding_bytes(AK_MEM_HOST) - before, 64 * 1024);
    std::vector<unsigned char> b(1024, 1);
    kv_backup_id_t id;
    for (int i = 0; i < 10; i++) ASSERT_EQ(kv_tier_put(t.get(), b.data(), 1024, &id), AK_OK);
    EXPECT_EQ(kv_tier_free(t.get(), id), AK_OK);
    // Destroyed with 9 blobs still stored.
  }
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

TEST(KvTierHost, AllocationFailureUnwinds) {
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  kv_tier_host_params_t p = kv_tier_host_params_default();
  p.capacity_bytes = 16 * 256;
  p.slot_bytes = 256;
  int n_failed = 0;
  for (int64_t k = 1; k < 64; k++) {
    ak_alloc_fail_after(k);
    kv_tier_t *t = reinterpret_cast<kv_tier_t *>(0x1);
    ak_err_t err;
    ak_status_t st = kv_tier_host_create(&p, &err, &t);
    ak_alloc_fail_after(0);
    if (st == AK_OK) {
      kv_tier_destroy(t);
      EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
      break;
    }
    n_failed++;
    EXPECT_EQ(st, AK_ERR_NO_MEMORY) << "k=" << k;
    EXPECT_NE(std::string(err.msg).find("kv_tier_host_create"), std::string::npos) << err.msg;
    EXPECT_EQ(t, reinterpret_cast<kv_tier_t *>(0x1)) << "tier_p written on failure, k=" << k;
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "leak after failing allocation " << k;
  }
  EXPECT_GE(n_failed, 4) << "each of the four allocations failed once";
}

TEST(KvTierHost, PutsNeverAllocate) {
  TierPtr t = make_host(4 * 64, 64);
  ASSERT_TRUE(t);
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  std::vector<unsigned char> b(64, 1), out(64);
  ak_alloc_fail_after(1);  // any allocation from here on fails
  kv_backup_id_t ids[4];
  for (auto &id : ids) EXPECT_EQ(kv_tier_put(t.get(), b.data(), 64, &id), AK_OK);
  for (auto id : ids) EXPECT_EQ(kv_tier_get(t.get(), id, out.data(), 64), AK_OK);
  for (auto id : ids) EXPECT_EQ(kv_tier_free(t.get(), id), AK_OK);
  ak_alloc_fail_after(0);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// --- a slab the caller owns (kv_tier_host_params_t.slab) ---

struct FreeDel {
  void operator()(unsigned char *p) const { free(p); }
};
using SlabPtr = std::unique_ptr<unsigned char, FreeDel>;

TEST(KvTierHost, CallerSlabHoldsEachBlobAtItsSlot) {
  const size_t slot = 96 + 3;  // odd size: no alignment assumption
  const int n = 12;
  const size_t cap = slot * n + 17;  // the remainder below one slot is not used
  SlabPtr slab((unsigned char *)malloc(cap));  // not the tier's allocator: a free by the tier would be caught
  ASSERT_TRUE(slab);
  memset(slab.get(), 0xAB, cap);
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  kv_tier_host_params_t p = kv_tier_host_params_default();
  EXPECT_EQ(p.slab, nullptr);
  p.capacity_bytes = cap;
  p.slot_bytes = slot;
  p.slab = slab.get();
  kv_tier_t *raw = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_tier_host_create(&p, &err, &raw), AK_OK) << err.msg;
  TierPtr t(raw);
  // the tier allocated its tables, not a slab
  EXPECT_LT(ak_alloc_outstanding_bytes(AK_MEM_HOST) - before, (int64_t)(slot * n));
  kv_tier_stats_t st;
  kv_tier_stats(t.get(), &st);
  EXPECT_EQ(st.n_slots, n);
  EXPECT_EQ(st.bytes_capacity, slot * n);

  std::mt19937 rng(77);
  std::vector<std::vector<unsigned char>> blobs;
  std::vector<kv_backup_id_t> ids;
  for (int i = 0; i < n; i++) {
    size_t len = i == 0 ? slot : 1 + rng() % slot;  // partial pages too
    blobs.push_back(random_bytes(rng, len));
    kv_backup_id_t id = KV_BACKUP_NONE;
    ASSERT_EQ(kv_tier_put(t.get(), blobs.back().data(), len, &id), AK_OK) << kv_tier_errmsg(t.get());
    EXPECT_EQ(kv_tier_host_slot(id), i) << "a fresh tier fills slots 0, 1, 2, ... in order";
    ids.push_back(id);
  }
  for (int i = 0; i < n; i++) {
    int64_t s = kv_tier_host_slot(ids[i]);
    ASSERT_GE(s, 0);
    ASSERT_LT(s, n);
    const size_t len = blobs[i].size();
    EXPECT_EQ(memcmp(slab.get() + s * (int64_t)slot, blobs[i].data(), len), 0) << "blob " << i << " at slot " << s;
    std::vector<unsigned char> out(len);
    ASSERT_EQ(kv_tier_get(t.get(), ids[i], out.data(), len), AK_OK) << kv_tier_errmsg(t.get());
    EXPECT_EQ(out, blobs[i]) << "blob " << i;
  }
  for (size_t b = slot * n; b < cap; b++) EXPECT_EQ(slab.get()[b], 0xAB) << "byte " << b << " past the last slot";
  kv_backup_id_t full_id;
  EXPECT_EQ(kv_tier_put(t.get(), blobs[0].data(), slot, &full_id), AK_ERR_POOL_FULL);

  // the tier reads the caller's memory, not a copy: a byte written there is what get returns
  slab.get()[0] ^= 0xff;
  std::vector<unsigned char> out(slot);
  ASSERT_EQ(kv_tier_get(t.get(), ids[0], out.data(), slot), AK_OK);
  EXPECT_EQ(out[0], (unsigned char)(blobs[0][0] ^ 0xff));
  EXPECT_TRUE(std::equal(out.begin() + 1, out.end(), blobs[0].begin() + 1));

  // a freed slot is reused (and overwritten) by the next put; the stale id still names its
  // slot (kv_tier_host_slot says nothing about validity) but is not found
  ASSERT_EQ(kv_tier_free(t.get(), ids[5]), AK_OK);
  std::vector<unsigned char> x = random_bytes(rng, slot);
  kv_backup_id_t id2 = KV_BACKUP_NONE;
  ASSERT_EQ(kv_tier_put(t.get(), x.data(), slot, &id2), AK_OK);
  EXPECT_NE(id2, ids[5]);
  EXPECT_EQ(kv_tier_host_slot(id2), 5);
  EXPECT_EQ(kv_tier_host_slot(ids[5]), 5);
  EXPECT_EQ(memcmp(slab.get() + 5 * slot, x.data(), slot), 0);
  EXPECT_EQ(kv_tier_get(t.get(), ids[5], out.data(), blobs[5].size()), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_tier_host_slot(KV_BACKUP_NONE), -1);

  t.reset();  // destroy: the tier's tables go, the slab stays the caller's
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
  EXPECT_EQ(memcmp(slab.get() + 5 * slot, x.data(), slot), 0);  // still ours, still intact
  memset(slab.get(), 0, cap);
}  // slab freed here, once

TEST(KvTierHost, CallerSlabIsNotFreedWhenCreateFails) {
  const size_t slot = 256, cap = 16 * slot;
  SlabPtr slab((unsigned char *)malloc(cap));
  ASSERT_TRUE(slab);
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  kv_tier_host_params_t p = kv_tier_host_params_default();
  p.capacity_bytes = cap;
  p.slot_bytes = slot;
  p.slab = slab.get();
  int n_failed = 0;
  for (int64_t k = 1; k < 64; k++) {
    memset(slab.get(), (int)k, cap);
    ak_alloc_fail_after(k);
    kv_tier_t *t = reinterpret_cast<kv_tier_t *>(0x1);
    ak_err_t err;
    ak_status_t st = kv_tier_host_create(&p, &err, &t);
    ak_alloc_fail_after(0);
    if (st == AK_OK) {
      kv_tier_destroy(t);
      EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
      break;
    }
    n_failed++;
    EXPECT_EQ(st, AK_ERR_NO_MEMORY) << "k=" << k;
    EXPECT_EQ(t, reinterpret_cast<kv_tier_t *>(0x1)) << "tier_p written on failure, k=" << k;
    EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before) << "after failing allocation " << k;
    for (size_t b = 0; b < cap; b++) ASSERT_EQ(slab.get()[b], (unsigned char)k) << "slab touched, k=" << k;
  }
  EXPECT_EQ(n_failed, 3) << "struct, slot table and free stack: the slab is not allocated";
  memset(slab.get(), 0, cap);  // still ours (ASan: not freed by an unwinding create)
}

}  // namespace
