// Tests for kvpool/kv_tier_host.c: the backup-tier wrappers and the host tier —
// round trips, full tier, stale and double-freed ids, size checks, bad params, exact
// stats, no leak after destroy, and unwinding when an allocation fails at create; a slab
// the caller owns (blobs at slot * slot_bytes, never freed by the tier); kv_tier_reserve
// (a put whose bytes the caller writes at the slot it hands out), and its refusal by a
// tier without it (a fake tier built here over the public vtable).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
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

// --- kv_tier_reserve: a put without the copy ---

// The stats as a comparable value (the struct has no padding-free ==).
std::vector<uint64_t> stats_of(const kv_tier_t *t) {
  kv_tier_stats_t s;
  kv_tier_stats(t, &s);
  return {(uint64_t)s.n_slots, (uint64_t)s.n_used, s.bytes_used, s.bytes_capacity, s.puts,
          s.gets,              s.frees,             s.bytes_put,  s.bytes_got};
}

// A host tier over a caller slab of n slots of slot bytes (0xAB everywhere at first).
struct SlabTier {
  size_t slot = 0;
  int64_t n = 0;
  SlabPtr slab;
  TierPtr t;
  void make(size_t slot_bytes, int64_t n_slots) {
    slot = slot_bytes;
    n = n_slots;
    slab.reset((unsigned char *)malloc(slot * (size_t)n));
    ASSERT_TRUE(slab);
    memset(slab.get(), 0xAB, slot * (size_t)n);
    kv_tier_host_params_t p = kv_tier_host_params_default();
    p.capacity_bytes = slot * (size_t)n;
    p.slot_bytes = slot;
    p.slab = slab.get();
    kv_tier_t *raw = nullptr;
    ak_err_t err;
    ASSERT_EQ(kv_tier_host_create(&p, &err, &raw), AK_OK) << err.msg;
    t.reset(raw);
  }
  unsigned char *at(kv_backup_id_t id) const { return slab.get() + kv_tier_host_slot(id) * (int64_t)slot; }
};

TEST(KvTierReserve, HandsOutTheSlotOfTheIdInTheCallerSlab) {
  SlabTier st;
  ASSERT_NO_FATAL_FAILURE(st.make(96 + 5, 9));  // odd slot size: no alignment assumption
  kv_tier_t *t = st.t.get();
  std::mt19937 rng(31);
  std::vector<std::vector<unsigned char>> blobs;
  std::vector<kv_backup_id_t> ids;
  uint64_t bytes = 0;
  for (int i = 0; i < 9; i++) {
    // full slots, partial ones (a partial last page), one byte; every third one a plain put
    const size_t len = i % 4 == 0 ? st.slot : i % 4 == 1 ? 1 : 1 + rng() % st.slot;
    blobs.push_back(random_bytes(rng, len));
    kv_backup_id_t id = KV_BACKUP_NONE;
    if (i % 3 == 2) {
      ASSERT_EQ(kv_tier_put(t, blobs.back().data(), len, &id), AK_OK) << kv_tier_errmsg(t);
    } else {
      void *dst = nullptr;
      ASSERT_EQ(kv_tier_reserve(t, len, &id, &dst), AK_OK) << kv_tier_errmsg(t);
      EXPECT_STREQ(kv_tier_errmsg(t), "");
      ASSERT_GE(id, 0);
      EXPECT_EQ(kv_tier_host_slot(id), i) << "reserve takes the free slots in put's order";
      ASSERT_EQ(dst, (void *)st.at(id)) << "blob " << i << ": not slot " << kv_tier_host_slot(id) << " of the slab";
      // the bytes past len are the slot's rest: a reserve writes nothing there itself
      EXPECT_EQ(((unsigned char *)dst)[len - 1], 0xAB) << "reserve wrote into the slot";
      memcpy(dst, blobs.back().data(), len);
    }
    bytes += len;
    ids.push_back(id);
    kv_tier_stats_t s;
    kv_tier_stats(t, &s);
    EXPECT_EQ(s.puts, (uint64_t)i + 1) << "a reserve counts as a put";
    EXPECT_EQ(s.bytes_put, bytes);
    EXPECT_EQ(s.n_used, i + 1);
    EXPECT_EQ(s.bytes_used, bytes);
    EXPECT_EQ(s.gets, 0u);
  }
  // each blob reads back from its id, reserved or put, and sits at its slot
  for (int i = 8; i >= 0; i--) {
    const size_t len = blobs[i].size();
    std::vector<unsigned char> out(len + 1, 0);  // room for the too-large get below
    ASSERT_EQ(kv_tier_get(t, ids[i], out.data(), len), AK_OK) << kv_tier_errmsg(t);
    EXPECT_EQ(std::vector<unsigned char>(out.begin(), out.begin() + (long)len), blobs[i]) << "blob " << i;
    EXPECT_EQ(memcmp(st.at(ids[i]), blobs[i].data(), len), 0) << "blob " << i;
    if (len < st.slot) {  // a reserved blob's size is what was reserved: get must ask for it exactly
      EXPECT_EQ(kv_tier_get(t, ids[i], out.data(), len + 1), AK_ERR_INVALID_ARG);
    }
  }
  kv_tier_stats_t s;
  kv_tier_stats(t, &s);
  EXPECT_EQ(s.gets, 9u);
  // freeing a reserved blob is a free like any other
  for (kv_backup_id_t id : ids) ASSERT_EQ(kv_tier_free(t, id), AK_OK) << kv_tier_errmsg(t);
  kv_tier_stats(t, &s);
  EXPECT_EQ(s.n_used, 0);
  EXPECT_EQ(s.bytes_used, 0u);
  EXPECT_EQ(s.frees, 9u);
  EXPECT_EQ(s.puts, 9u);
  EXPECT_EQ(s.bytes_put, bytes);
}

TEST(KvTierReserve, TheTiersOwnSlabToo) {
  TierPtr t = make_host(3 * 64, 64);
  ASSERT_TRUE(t);
  std::vector<unsigned char> b(64);
  for (size_t i = 0; i < b.size(); i++) b[i] = (unsigned char)(i * 7 + 1);
  kv_backup_id_t ids[3];
  void *dst[3];
  for (int i = 0; i < 3; i++) {
    ASSERT_EQ(kv_tier_reserve(t.get(), 64, &ids[i], &dst[i]), AK_OK) << kv_tier_errmsg(t.get());
    ASSERT_NE(dst[i], nullptr);
    memcpy(dst[i], b.data(), 64);
    b[0]++;
  }
  // consecutive slots of one slab
  EXPECT_EQ((unsigned char *)dst[1] - (unsigned char *)dst[0], 64);
  EXPECT_EQ((unsigned char *)dst[2] - (unsigned char *)dst[1], 64);
  std::vector<unsigned char> out(64);
  ASSERT_EQ(kv_tier_get(t.get(), ids[2], out.data(), 64), AK_OK);
  EXPECT_EQ(out[0], (unsigned char)(1 + 2));
  EXPECT_TRUE(std::equal(out.begin() + 1, out.end(), b.begin() + 1));
}

TEST(KvTierReserve, FullIsPoolFullAndChangesNothing) {
  SlabTier st;
  ASSERT_NO_FATAL_FAILURE(st.make(48, 3));
  kv_tier_t *t = st.t.get();
  std::vector<unsigned char> b(48, 0x11);
  kv_backup_id_t a = KV_BACKUP_NONE, c = KV_BACKUP_NONE, d = KV_BACKUP_NONE;
  void *da = nullptr, *dd = nullptr;
  ASSERT_EQ(kv_tier_reserve(t, 48, &a, &da), AK_OK);
  memset(da, 0x22, 48);
  ASSERT_EQ(kv_tier_put(t, b.data(), 20, &c), AK_OK);
  ASSERT_EQ(kv_tier_reserve(t, 30, &d, &dd), AK_OK);
  memset(dd, 0x33, 30);
  const std::vector<uint64_t> before = stats_of(t);
  const std::vector<unsigned char> slab0(st.slab.get(), st.slab.get() + 48 * 3);

  for (size_t n : {size_t(1), size_t(48)}) {
    kv_backup_id_t id = 777;
    void *dst = &id;
    EXPECT_EQ(kv_tier_reserve(t, n, &id, &dst), AK_ERR_POOL_FULL) << n;
    EXPECT_EQ(id, 777) << "id_p written on failure";
    EXPECT_EQ(dst, (void *)&id) << "dst_p written on failure";
    const std::string msg = kv_tier_errmsg(t);
    EXPECT_NE(msg.find("host tier full: 3 of 3 slots (144 bytes)"), std::string::npos) << msg;
    EXPECT_EQ(stats_of(t), before) << "a failed reserve is not counted";
  }
  // put fails the same way: reserves hold their slots like puts
  kv_backup_id_t id = 777;
  EXPECT_EQ(kv_tier_put(t, b.data(), 48, &id), AK_ERR_POOL_FULL);
  EXPECT_EQ(id, 777);
  EXPECT_EQ(stats_of(t), before);
  EXPECT_TRUE(std::equal(slab0.begin(), slab0.end(), st.slab.get())) << "the slab changed";
  // the blobs held are intact
  std::vector<unsigned char> out(48);
  ASSERT_EQ(kv_tier_get(t, a, out.data(), 48), AK_OK);
  EXPECT_EQ(out, std::vector<unsigned char>(48, 0x22));
  ASSERT_EQ(kv_tier_get(t, c, out.data(), 20), AK_OK);
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + 20, b.begin()));
  ASSERT_EQ(kv_tier_get(t, d, out.data(), 30), AK_OK);
  EXPECT_EQ(std::vector<unsigned char>(out.begin(), out.begin() + 30), std::vector<unsigned char>(30, 0x33));
  // room again after one free: the freed slot
  const int64_t freed_slot = kv_tier_host_slot(c);
  ASSERT_EQ(kv_tier_free(t, c), AK_OK);
  void *dst = nullptr;
  ASSERT_EQ(kv_tier_reserve(t, 48, &id, &dst), AK_OK) << kv_tier_errmsg(t);
  EXPECT_EQ(kv_tier_host_slot(id), freed_slot);
  EXPECT_EQ(dst, (void *)st.at(id));
}

TEST(KvTierReserve, BadArgumentsAreInvalidArgAndChangeNothing) {
  SlabTier st;
  ASSERT_NO_FATAL_FAILURE(st.make(64, 2));
  kv_tier_t *t = st.t.get();
  kv_backup_id_t held = KV_BACKUP_NONE;
  void *held_dst = nullptr;
  ASSERT_EQ(kv_tier_reserve(t, 64, &held, &held_dst), AK_OK);
  const std::vector<uint64_t> before = stats_of(t);
  struct Case {
    const char *what;
    size_t n_bytes;
    bool null_id, null_dst;
    const char *msg;
  } cases[] = {
      {"n_bytes > slot_bytes", 65, false, false, "n_bytes=65 exceeds slot_bytes=64"},
      {"n_bytes far past slot_bytes", SIZE_MAX, false, false, "exceeds slot_bytes=64"},
      {"n_bytes 0", 0, false, false, "n_bytes is 0"},
      {"id_p NULL", 8, true, false, "id_p or dst_p is NULL"},
      {"dst_p NULL", 8, false, true, "id_p or dst_p is NULL"},
      {"both NULL", 8, true, true, "id_p or dst_p is NULL"},
  };
  for (const Case &c : cases) {
    kv_backup_id_t id = 555;
    void *dst = &id;
    EXPECT_EQ(kv_tier_reserve(t, c.n_bytes, c.null_id ? nullptr : &id, c.null_dst ? nullptr : &dst),
              AK_ERR_INVALID_ARG)
        << c.what;
    const std::string msg = kv_tier_errmsg(t);
    EXPECT_NE(msg.find(c.msg), std::string::npos) << c.what << ": " << msg;
    EXPECT_NE(msg.find("kv_"), std::string::npos) << c.what << ": the function is named: " << msg;
    EXPECT_EQ(id, 555) << c.what;
    EXPECT_EQ(dst, (void *)&id) << c.what;
    EXPECT_EQ(stats_of(t), before) << c.what;
  }
  kv_backup_id_t id = 555;
  void *dst = nullptr;
  EXPECT_EQ(kv_tier_reserve(nullptr, 8, &id, &dst), AK_ERR_INVALID_ARG);
  EXPECT_EQ(id, 555);
  EXPECT_EQ(dst, nullptr);
  // the one free slot is still there, and the held blob is untouched by it all
  ASSERT_EQ(kv_tier_reserve(t, 64, &id, &dst), AK_OK) << kv_tier_errmsg(t);
  EXPECT_STREQ(kv_tier_errmsg(t), "") << "a successful reserve clears the last error";
  EXPECT_NE(id, held);
  EXPECT_NE(dst, held_dst);
}

TEST(KvTierReserve, FreeThenReserveReusesTheSlotWithANewId) {
  SlabTier st;
  ASSERT_NO_FATAL_FAILURE(st.make(40, 1));  // one slot: reuse is certain
  kv_tier_t *t = st.t.get();
  kv_backup_id_t old_id = KV_BACKUP_NONE, new_id = KV_BACKUP_NONE;
  void *d0 = nullptr, *d1 = nullptr;
  ASSERT_EQ(kv_tier_reserve(t, 40, &old_id, &d0), AK_OK);
  memset(d0, 1, 40);
  ASSERT_EQ(kv_tier_free(t, old_id), AK_OK);
  ASSERT_EQ(kv_tier_reserve(t, 25, &new_id, &d1), AK_OK) << kv_tier_errmsg(t);
  EXPECT_NE(new_id, old_id);
  EXPECT_EQ(kv_tier_host_slot(new_id), kv_tier_host_slot(old_id));
  EXPECT_EQ(d1, d0) << "the same slot, the same address";
  memset(d1, 2, 25);
  std::vector<unsigned char> out(40, 0);
  EXPECT_EQ(kv_tier_get(t, old_id, out.data(), 40), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(kv_tier_errmsg(t)).find("stale"), std::string::npos) << kv_tier_errmsg(t);
  EXPECT_EQ(kv_tier_get(t, old_id, out.data(), 25), AK_ERR_NOT_FOUND);
  EXPECT_EQ(kv_tier_free(t, old_id), AK_ERR_NOT_FOUND);
  EXPECT_EQ(out, std::vector<unsigned char>(40, 0)) << "dst written on failure";
  ASSERT_EQ(kv_tier_get(t, new_id, out.data(), 25), AK_OK) << "the stale free dropped the new blob";
  EXPECT_EQ(std::vector<unsigned char>(out.begin(), out.begin() + 25), std::vector<unsigned char>(25, 2));

  // reserve / free cycles, a blob never filled included: every id distinct, only the last live
  std::set<kv_backup_id_t> ids{old_id, new_id};
  kv_backup_id_t cur = new_id;
  for (int i = 0; i < 50; i++) {
    ASSERT_EQ(kv_tier_free(t, cur), AK_OK);
    void *d = nullptr;
    if (i % 2) {
      ASSERT_EQ(kv_tier_reserve(t, 40, &cur, &d), AK_OK);
      EXPECT_EQ(d, d0);
    } else {
      ASSERT_EQ(kv_tier_put(t, out.data(), 40, &cur), AK_OK);
    }
    EXPECT_TRUE(ids.insert(cur).second) << "id " << cur << " handed out twice";
  }
  for (kv_backup_id_t id : ids)
    EXPECT_EQ(kv_tier_get(t, id, out.data(), 40), id == cur ? AK_OK : AK_ERR_NOT_FOUND) << id;
  kv_tier_stats_t s;
  kv_tier_stats(t, &s);
  EXPECT_EQ(s.puts, 52u);
  EXPECT_EQ(s.frees, 51u);
  EXPECT_EQ(s.n_used, 1);
}

TEST(KvTierReserve, NeverAllocates) {
  TierPtr t = make_host(4 * 64, 64);
  ASSERT_TRUE(t);
  const int64_t before = ak_alloc_outstanding_bytes(AK_MEM_HOST);
  ak_alloc_fail_after(1);  // any allocation from here on fails
  kv_backup_id_t ids[4];
  for (auto &id : ids) {
    void *d = nullptr;
    EXPECT_EQ(kv_tier_reserve(t.get(), 64, &id, &d), AK_OK);
  }
  for (auto id : ids) EXPECT_EQ(kv_tier_free(t.get(), id), AK_OK);
  ak_alloc_fail_after(0);
  EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before);
}

// A tier without addressable memory (as a remote one will be): put/get/free/stats/destroy
// over a map, reserve left NULL. Built from the public base (kv_tier.h) like any tier.
struct CopyOnlyTier {
  kv_tier_t base;
  std::map<kv_backup_id_t, std::vector<unsigned char>> blobs;
  kv_backup_id_t next_id = 100;
  kv_tier_stats_t st{};
  int calls = 0;  // of any op but stats and destroy

  static CopyOnlyTier *of(kv_tier_t *t) { return (CopyOnlyTier *)t->impl; }
  static ak_status_t put(kv_tier_t *t, const void *src, size_t n, kv_backup_id_t *id_p) {
    CopyOnlyTier *c = of(t);
    c->calls++;
    const unsigned char *b = (const unsigned char *)src;
    c->blobs[c->next_id].assign(b, b + n);
    *id_p = c->next_id++;
    c->st.puts++;
    c->st.bytes_put += n;
    c->st.n_used++;
    c->st.bytes_used += n;
    return AK_OK;
  }
  static ak_status_t get(kv_tier_t *t, kv_backup_id_t id, void *dst, size_t n) {
    CopyOnlyTier *c = of(t);
    c->calls++;
    auto it = c->blobs.find(id);
    if (it == c->blobs.end()) return AK_ERR(&t->err, AK_ERR_NOT_FOUND, "no blob %lld", (long long)id);
    if (n != it->second.size()) return AK_ERR(&t->err, AK_ERR_INVALID_ARG, "size %zu", n);
    memcpy(dst, it->second.data(), n);
    c->st.gets++;
    c->st.bytes_got += n;
    return AK_OK;
  }
  static ak_status_t free_(kv_tier_t *t, kv_backup_id_t id) {
    CopyOnlyTier *c = of(t);
    c->calls++;
    auto it = c->blobs.find(id);
    if (it == c->blobs.end()) return AK_ERR(&t->err, AK_ERR_NOT_FOUND, "no blob %lld", (long long)id);
    c->st.n_used--;
    c->st.bytes_used -= it->second.size();
    c->st.frees++;
    c->blobs.erase(it);
    return AK_OK;
  }
  static void stats(const kv_tier_t *t, kv_tier_stats_t *s) {
    const CopyOnlyTier *c = (const CopyOnlyTier *)t->impl;
    *s = c->st;
    s->n_slots = 1000;
    s->bytes_capacity = 1000 * 64;
  }
  static void destroy(kv_tier_t *t) { delete of(t); }
  static const kv_tier_ops_t ops;

  static kv_tier_t *create() {
    CopyOnlyTier *c = new CopyOnlyTier();
    c->base.ops = &ops;
    c->base.impl = c;
    ak_err_clear(&c->base.err);
    return &c->base;
  }
};
const kv_tier_ops_t CopyOnlyTier::ops = {"copy-only", put, get, free_, stats, destroy, nullptr};

TEST(KvTierReserve, ATierWithoutReserveIsUnsupported) {
  TierPtr t(CopyOnlyTier::create());
  CopyOnlyTier *c = CopyOnlyTier::of(t.get());
  ASSERT_EQ(t->ops->reserve, nullptr);
  EXPECT_STREQ(kv_tier_name(t.get()), "copy-only");
  std::vector<unsigned char> b(64, 9), out(64, 0);
  kv_backup_id_t held = KV_BACKUP_NONE;
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), 64, &held), AK_OK);
  const int calls0 = c->calls;
  const std::vector<uint64_t> before = stats_of(t.get());

  kv_backup_id_t id = 555;
  void *dst = &id;
  EXPECT_EQ(kv_tier_reserve(t.get(), 64, &id, &dst), AK_ERR_UNSUPPORTED);
  const std::string msg = kv_tier_errmsg(t.get());
  EXPECT_NE(msg.find("copy-only"), std::string::npos) << "the tier is named: " << msg;
  EXPECT_NE(msg.find("put"), std::string::npos) << "what to use instead: " << msg;
  EXPECT_EQ(id, 555);
  EXPECT_EQ(dst, (void *)&id);
  EXPECT_EQ(c->calls, calls0) << "the tier was called";
  EXPECT_EQ(stats_of(t.get()), before);
  // arguments are checked first, as for any tier
  EXPECT_EQ(kv_tier_reserve(t.get(), 0, &id, &dst), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_reserve(t.get(), 64, nullptr, &dst), AK_ERR_INVALID_ARG);
  EXPECT_EQ(kv_tier_reserve(t.get(), 64, &id, nullptr), AK_ERR_INVALID_ARG);
  // the tier still works through put, and a success clears the message
  kv_backup_id_t id2 = KV_BACKUP_NONE;
  ASSERT_EQ(kv_tier_put(t.get(), b.data(), 64, &id2), AK_OK);
  EXPECT_STREQ(kv_tier_errmsg(t.get()), "");
  ASSERT_EQ(kv_tier_get(t.get(), held, out.data(), 64), AK_OK);
  EXPECT_EQ(out, b);
  EXPECT_EQ(kv_tier_free(t.get(), held), AK_OK);
  EXPECT_EQ(kv_tier_free(t.get(), id2), AK_OK);
}

}  // namespace

// alias_slab_bytes (benchmarks): the accounting is capacity_bytes' slots, the bytes live
// in a smaller slab at slot % slab slots, so aliased blobs overwrite each other; nothing
// is written outside the slab.
TEST(KvTierHost, AliasedSlabMapsSlotsModuloAndKeepsTheAccounting) {
  const size_t slot = 64;
  const int n = 10, n_slab = 3;
  std::vector<unsigned char> mem(slot * n_slab + 32, 0xCD);  // 32 guard bytes after the slab
  kv_tier_host_params_t p = kv_tier_host_params_default();
  EXPECT_EQ(p.alias_slab_bytes, 0u);
  p.capacity_bytes = slot * n;
  p.slot_bytes = slot;
  p.slab = mem.data();
  p.alias_slab_bytes = slot * n_slab + 5;  // a remainder below one slot is not used
  kv_tier_t *raw = nullptr;
  ak_err_t err;
  ASSERT_EQ(kv_tier_host_create(&p, &err, &raw), AK_OK) << err.msg;
  TierPtr t(raw);
  kv_tier_stats_t st;
  kv_tier_stats(t.get(), &st);
  EXPECT_EQ(st.n_slots, n);
  EXPECT_EQ(st.bytes_capacity, slot * n);
  std::vector<kv_backup_id_t> ids;
  for (int i = 0; i < n; i++) {
    std::vector<unsigned char> blob(slot, (unsigned char)(i + 1));
    kv_backup_id_t id = KV_BACKUP_NONE;
    ASSERT_EQ(kv_tier_put(t.get(), blob.data(), slot, &id), AK_OK) << kv_tier_errmsg(t.get());
    EXPECT_EQ(kv_tier_host_slot(id), i);
    ids.push_back(id);
  }
  kv_backup_id_t extra;
  EXPECT_EQ(kv_tier_put(t.get(), mem.data(), slot, &extra), AK_ERR_POOL_FULL) << "full at capacity_bytes' slots";
  // slab slot j holds the last blob put at a slot i with i % 3 == j: blobs 9, 7 and 8
  for (int j = 0; j < n_slab; j++) {
    int last = j + n_slab * ((n - 1 - j) / n_slab);
    EXPECT_EQ(mem[j * slot], (unsigned char)(last + 1)) << "slab slot " << j;
  }
  for (size_t b = slot * n_slab; b < mem.size(); b++) EXPECT_EQ(mem[b], 0xCD) << "byte " << b << " past the slab";
  // a get returns what the aliased slab slot holds: blob 0's slot now has blob 9's bytes
  std::vector<unsigned char> out(slot);
  ASSERT_EQ(kv_tier_get(t.get(), ids[0], out.data(), slot), AK_OK);
  EXPECT_EQ(out[0], (unsigned char)10);
  // reserve hands out the aliased address too
  ASSERT_EQ(kv_tier_free(t.get(), ids[4]), AK_OK);
  kv_backup_id_t rid = KV_BACKUP_NONE;
  void *dst = nullptr;
  ASSERT_EQ(kv_tier_reserve(t.get(), slot, &rid, &dst), AK_OK) << kv_tier_errmsg(t.get());
  EXPECT_EQ(dst, mem.data() + (kv_tier_host_slot(rid) % n_slab) * slot);
}

TEST(KvTierHost, AliasedSlabRefusesBadSizes) {
  std::vector<unsigned char> mem(1024);
  kv_tier_host_params_t p = kv_tier_host_params_default();
  p.capacity_bytes = 640;
  p.slot_bytes = 64;
  p.alias_slab_bytes = 128;
  kv_tier_t *raw = nullptr;
  ak_err_t err;
  EXPECT_EQ(kv_tier_host_create(&p, &err, &raw), AK_ERR_INVALID_ARG) << "an aliased slab must be the caller's";
  EXPECT_NE(std::string(err.msg).find("needs the caller's slab"), std::string::npos) << err.msg;
  p.slab = mem.data();
  p.alias_slab_bytes = 63;
  EXPECT_EQ(kv_tier_host_create(&p, &err, &raw), AK_ERR_INVALID_ARG);
  EXPECT_NE(std::string(err.msg).find("alias_slab_bytes=63"), std::string::npos) << err.msg;
  p.alias_slab_bytes = 640;  // not smaller than the capacity: nothing to alias
  EXPECT_EQ(kv_tier_host_create(&p, &err, &raw), AK_ERR_INVALID_ARG);
  EXPECT_EQ(raw, nullptr);
}
