// Tests for common/ak_gguf.c: files built in memory by a small writer and read back
// (every value type, every tensor type), one crafted corrupt file per failure class
// with its status and message, truncation at every byte, allocation failures at
// every step, and the real SmolLM2 model when it is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

extern "C" {
#include "ak_alloc.h"
#include "ak_gguf.h"
#include "ak_quant.h"
}

namespace {

struct GgufCloser {
  void operator()(ak_gguf_t *g) const { ak_gguf_close(g); }
};
using GgufPtr = std::unique_ptr<ak_gguf_t, GgufCloser>;

// ---------------------------------------------------------------- the writer

void put_bytes(std::vector<uint8_t> &b, const void *p, size_t n) {
  b.insert(b.end(), (const uint8_t *)p, (const uint8_t *)p + n);
}
template <class T>
void put(std::vector<uint8_t> &b, T v) {
  put_bytes(b, &v, sizeof v);
}
void put_str(std::vector<uint8_t> &b, const std::string &s) {
  put<uint64_t>(b, s.size());
  put_bytes(b, s.data(), s.size());
}

// An encoded value without its type tag; arrays carry their element type and count.
struct Val {
  uint32_t type;
  std::vector<uint8_t> bytes;
};
template <class T>
Val scalar(uint32_t type, T v) {
  Val r{type, {}};
  put(r.bytes, v);
  return r;
}
Val vstr(const std::string &s) {
  Val r{AK_GGUF_STRING, {}};
  put_str(r.bytes, s);
  return r;
}
template <class T>
Val arr(uint32_t elem_type, const std::vector<T> &xs) {
  Val r{AK_GGUF_ARRAY, {}};
  put<uint32_t>(r.bytes, elem_type);
  put<uint64_t>(r.bytes, xs.size());
  for (const T &x : xs) put(r.bytes, x);
  return r;
}
Val arr_str(const std::vector<std::string> &xs) {
  Val r{AK_GGUF_ARRAY, {}};
  put<uint32_t>(r.bytes, AK_GGUF_STRING);
  put<uint64_t>(r.bytes, xs.size());
  for (const auto &x : xs) put_str(r.bytes, x);
  return r;
}
Val arr_arr(const std::vector<Val> &inner) {
  Val r{AK_GGUF_ARRAY, {}};
  put<uint32_t>(r.bytes, AK_GGUF_ARRAY);
  put<uint64_t>(r.bytes, inner.size());
  for (const auto &v : inner) put_bytes(r.bytes, v.bytes.data(), v.bytes.size());
  return r;
}

constexpr uint64_t kAutoOffset = UINT64_MAX;

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type;
  std::vector<uint8_t> data;   // empty: random bytes of the right size
  uint64_t offset_override = kAutoOffset;  // else placed after the previous tensor, aligned
};

// Where things landed in the built file, for tests that patch or cut it.
struct Layout {
  std::vector<uint8_t> bytes;
  std::vector<size_t> kv_pos;      // each kv's key length field
  std::vector<size_t> kv_val_pos;  // each kv's value (after the type tag)
  std::vector<size_t> tinfo_pos;   // each tensor info's name length field
  size_t tinfo_begin = 0, data_begin = 0;
  std::vector<uint64_t> offsets;
};

struct Builder {
  uint32_t version = 3;
  size_t alignment = 32;
  std::vector<std::pair<std::string, Val>> kvs;
  std::vector<TensorSpec> tensors;

  Builder &kv(const std::string &k, Val v) {
    kvs.emplace_back(k, std::move(v));
    return *this;
  }
  Builder &tensor(TensorSpec t) {
    tensors.push_back(std::move(t));
    return *this;
  }

  static size_t tensor_bytes(const TensorSpec &t) {
    uint64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); d++) rows *= t.ne[d];
    return t.ne.empty() ? 0 : ak_type_row_bytes((ak_ggml_type_t)t.type, (int64_t)t.ne[0]) * rows;
  }

  Layout build() {
    Layout L;
    auto &b = L.bytes;
    put_bytes(b, "GGUF", 4);
    put<uint32_t>(b, version);
    put<uint64_t>(b, tensors.size());
    put<uint64_t>(b, kvs.size());
    for (auto &[k, v] : kvs) {
      L.kv_pos.push_back(b.size());
      put_str(b, k);
      put<uint32_t>(b, v.type);
      L.kv_val_pos.push_back(b.size());
      put_bytes(b, v.bytes.data(), v.bytes.size());
    }
    std::mt19937 rng(11);
    uint64_t next = 0;
    L.tinfo_begin = b.size();
    for (auto &t : tensors) {
      if (t.data.empty()) {
        t.data.resize(tensor_bytes(t));
        for (auto &x : t.data) x = (uint8_t)rng();
      }
      uint64_t off = t.offset_override != kAutoOffset ? t.offset_override : (next + alignment - 1) / alignment * alignment;
      next = off + t.data.size();
      L.offsets.push_back(off);
      L.tinfo_pos.push_back(b.size());
      put_str(b, t.name);
      put<uint32_t>(b, (uint32_t)t.ne.size());
      for (uint64_t n : t.ne) put<uint64_t>(b, n);
      put<uint32_t>(b, t.type);
      put<uint64_t>(b, off);
    }
    if (!tensors.empty()) {
      b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
      L.data_begin = b.size();
      for (size_t i = 0; i < tensors.size(); i++) {
        // Crafted offsets may point past the end: write only what fits in a sane file.
        if (L.offsets[i] > (1u << 20)) continue;
        size_t at = L.data_begin + L.offsets[i];
        if (b.size() < at + tensors[i].data.size()) b.resize(at + tensors[i].data.size(), 0);
        memcpy(&b[at], tensors[i].data.data(), tensors[i].data.size());
      }
    }
    return L;
  }
};

// One tensor of every type we read, with odd shapes.
Builder every_type_builder() {
  Builder B;
  B.kv("general.architecture", vstr("llama"))
      .kv("k.u8", scalar<uint8_t>(AK_GGUF_UINT8, 200))
      .kv("k.i8", scalar<int8_t>(AK_GGUF_INT8, -5))
      .kv("k.u16", scalar<uint16_t>(AK_GGUF_UINT16, 60000))
      .kv("k.i16", scalar<int16_t>(AK_GGUF_INT16, -30000))
      .kv("k.u32", scalar<uint32_t>(AK_GGUF_UINT32, 4000000000u))
      .kv("k.i32", scalar<int32_t>(AK_GGUF_INT32, -7))
      .kv("k.f32", scalar<float>(AK_GGUF_FLOAT32, 1e-5f))
      .kv("k.bool", scalar<uint8_t>(AK_GGUF_BOOL, 1))
      .kv("k.u64", scalar<uint64_t>(AK_GGUF_UINT64, UINT64_MAX))
      .kv("k.i64", scalar<int64_t>(AK_GGUF_INT64, INT64_MIN))
      .kv("k.f64", scalar<double>(AK_GGUF_FLOAT64, 10000.5))
      .kv("k.empty_str", vstr(""))
      .kv("k.arr_i32", arr<int32_t>(AK_GGUF_INT32, {1, -2, 3}))
      .kv("k.arr_f32", arr<float>(AK_GGUF_FLOAT32, {0.5f, -1.0f}))
      .kv("k.arr_u64", arr<uint64_t>(AK_GGUF_UINT64, {UINT64_MAX}))
      .kv("k.arr_str", arr_str({"<s>", "", "hello world"}))
      .kv("k.arr_empty", arr_str({}))
      .kv("k.arr_arr", arr_arr({arr<uint8_t>(AK_GGUF_UINT8, {1, 2}), arr_str({"x"})}));
  B.tensor({"t.f32", {8, 3}, AK_TYPE_F32, {}})
      .tensor({"t.f16", {17}, AK_TYPE_F16, {}})
      .tensor({"t.bf16", {4, 2, 2}, AK_TYPE_BF16, {}})
      .tensor({"t.q4_0", {64, 2}, AK_TYPE_Q4_0, {}})
      .tensor({"t.q4_1", {32}, AK_TYPE_Q4_1, {}})
      .tensor({"t.q8_0", {32, 1, 1, 2}, AK_TYPE_Q8_0, {}})
      .tensor({"t.q8_1", {96}, AK_TYPE_Q8_1, {}});
  return B;
}

// A 64-byte-aligned copy, so tensor data alignment can be asserted.
struct AlignedBuf {
  uint8_t *p = nullptr;
  size_t n = 0;
  explicit AlignedBuf(const std::vector<uint8_t> &v) : n(v.size()) {
    p = (uint8_t *)std::aligned_alloc(64, (v.size() + 63) / 64 * 64 + 64);
    memcpy(p, v.data(), v.size());
  }
  ~AlignedBuf() { std::free(p); }
};

std::string str_of(const char *s, size_t n) { return std::string(s, n); }

// Every test asserts that host allocations return to where they were.
class AkGguf : public ::testing::Test {
 protected:
  void SetUp() override { before_ = ak_alloc_outstanding_bytes(AK_MEM_HOST); }
  void TearDown() override { EXPECT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before_) << "host bytes leaked"; }

  // Opens `bytes` (exactly that many, so ASan catches any overread), expecting failure.
  void expect_fail(const std::vector<uint8_t> &bytes, ak_status_t want, const std::string &substr) {
    std::vector<uint8_t> exact(bytes);
    ak_err_t err;
    ak_err_clear(&err);
    ak_gguf_t *g = reinterpret_cast<ak_gguf_t *>(0x1);  // must stay untouched on failure
    ak_status_t st = ak_gguf_open_buffer(exact.data(), exact.size(), &err, &g);
    EXPECT_EQ(st, want) << ak_status_str(st) << ": " << err.msg;
    EXPECT_EQ(g, reinterpret_cast<ak_gguf_t *>(0x1));
    EXPECT_NE(std::string(err.msg).find(substr), std::string::npos) << "message: " << err.msg;
    EXPECT_EQ(std::string(err.msg).rfind("ak_gguf_open_buffer: ", 0), 0u) << err.msg;
  }

  int64_t before_ = 0;
};

template <class T>
void patch(std::vector<uint8_t> &b, size_t at, T v) {
  memcpy(&b[at], &v, sizeof v);
}

}  // namespace

// ----------------------------------------------------------------- valid files

TEST_F(AkGguf, ReadsEveryValueAndTensorType) {
  Builder B = every_type_builder();
  Layout L = B.build();
  AlignedBuf buf(L.bytes);
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open_buffer(buf.p, buf.n, &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  EXPECT_EQ(ak_gguf_version(g.get()), 3u);
  EXPECT_EQ(ak_gguf_alignment(g.get()), 32u);
  ASSERT_EQ(ak_gguf_n_kv(g.get()), (int64_t)B.kvs.size());
  ASSERT_EQ(ak_gguf_n_tensors(g.get()), (int64_t)B.tensors.size());

  for (int64_t i = 0; i < (int64_t)B.kvs.size(); i++) {
    size_t len;
    const char *k = ak_gguf_kv_key(g.get(), i, &len);
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(str_of(k, len), B.kvs[i].first);
    EXPECT_EQ((uint32_t)ak_gguf_kv_type(g.get(), i), B.kvs[i].second.type);
    EXPECT_EQ(ak_gguf_find_key(g.get(), B.kvs[i].first.c_str()), i);
  }
  EXPECT_EQ(ak_gguf_find_key(g.get(), "missing"), -1);
  EXPECT_EQ(ak_gguf_kv_key(g.get(), -1, nullptr), nullptr);
  EXPECT_EQ(ak_gguf_kv_key(g.get(), ak_gguf_n_kv(g.get()), nullptr), nullptr);

  const char *s;
  size_t len;
  ASSERT_EQ(ak_gguf_get_str(g.get(), "general.architecture", &err, &s, &len), AK_OK);
  EXPECT_EQ(str_of(s, len), "llama");
  ASSERT_EQ(ak_gguf_get_str(g.get(), "k.empty_str", &err, &s, &len), AK_OK);
  EXPECT_EQ(len, 0u);

  uint32_t u32;
  int64_t i64;
  float f;
  int b;
  ASSERT_EQ(ak_gguf_get_u32(g.get(), "k.u8", &err, &u32), AK_OK);
  EXPECT_EQ(u32, 200u);
  ASSERT_EQ(ak_gguf_get_u32(g.get(), "k.u16", &err, &u32), AK_OK);
  EXPECT_EQ(u32, 60000u);
  ASSERT_EQ(ak_gguf_get_u32(g.get(), "k.u32", &err, &u32), AK_OK);
  EXPECT_EQ(u32, 4000000000u);
  ASSERT_EQ(ak_gguf_get_i64(g.get(), "k.i8", &err, &i64), AK_OK);
  EXPECT_EQ(i64, -5);
  ASSERT_EQ(ak_gguf_get_i64(g.get(), "k.i16", &err, &i64), AK_OK);
  EXPECT_EQ(i64, -30000);
  ASSERT_EQ(ak_gguf_get_i64(g.get(), "k.i32", &err, &i64), AK_OK);
  EXPECT_EQ(i64, -7);
  ASSERT_EQ(ak_gguf_get_i64(g.get(), "k.i64", &err, &i64), AK_OK);
  EXPECT_EQ(i64, INT64_MIN);
  ASSERT_EQ(ak_gguf_get_i64(g.get(), "k.u32", &err, &i64), AK_OK);
  EXPECT_EQ(i64, 4000000000);
  ASSERT_EQ(ak_gguf_get_f32(g.get(), "k.f32", &err, &f), AK_OK);
  EXPECT_EQ(f, 1e-5f);
  ASSERT_EQ(ak_gguf_get_f32(g.get(), "k.f64", &err, &f), AK_OK);
  EXPECT_EQ(f, 10000.5f);
  ASSERT_EQ(ak_gguf_get_bool(g.get(), "k.bool", &err, &b), AK_OK);
  EXPECT_EQ(b, 1);

  ak_gguf_value_type_t et;
  int64_t n;
  ASSERT_EQ(ak_gguf_get_arr(g.get(), "k.arr_i32", &err, &et, &n), AK_OK);
  EXPECT_EQ(et, AK_GGUF_INT32);
  EXPECT_EQ(n, 3);
  const void *data;
  ASSERT_EQ(ak_gguf_get_arr_data(g.get(), "k.arr_i32", &err, &data), AK_OK);
  int32_t ints[3];
  memcpy(ints, data, sizeof ints);
  EXPECT_EQ(ints[1], -2);
  ASSERT_EQ(ak_gguf_get_arr_i64(g.get(), "k.arr_i32", 2, &err, &i64), AK_OK);
  EXPECT_EQ(i64, 3);
  ASSERT_EQ(ak_gguf_get_arr_f32(g.get(), "k.arr_f32", 1, &err, &f), AK_OK);
  EXPECT_EQ(f, -1.0f);
  ASSERT_EQ(ak_gguf_get_arr(g.get(), "k.arr_str", &err, &et, &n), AK_OK);
  EXPECT_EQ(et, AK_GGUF_STRING);
  ASSERT_EQ(n, 3);
  const char *want_strs[] = {"<s>", "", "hello world"};
  for (int64_t i = 0; i < n; i++) {
    ASSERT_EQ(ak_gguf_get_arr_str(g.get(), "k.arr_str", i, &err, &s, &len), AK_OK);
    EXPECT_EQ(str_of(s, len), want_strs[i]);
  }
  ASSERT_EQ(ak_gguf_get_arr(g.get(), "k.arr_empty", &err, &et, &n), AK_OK);
  EXPECT_EQ(n, 0);
  ASSERT_EQ(ak_gguf_get_arr(g.get(), "k.arr_arr", &err, &et, &n), AK_OK);
  EXPECT_EQ(et, AK_GGUF_ARRAY);
  EXPECT_EQ(n, 2);

  for (int64_t i = 0; i < (int64_t)B.tensors.size(); i++) {
    const TensorSpec &spec = B.tensors[i];
    const ak_gguf_tensor_t *t = ak_gguf_tensor(g.get(), i);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(ak_gguf_find_tensor(g.get(), spec.name.c_str()), t);
    EXPECT_EQ(str_of(t->name, t->name_len), spec.name);
    EXPECT_EQ((uint32_t)t->type, spec.type);
    EXPECT_EQ(t->n_dims, (int32_t)spec.ne.size());
    for (int d = 0; d < 4; d++) EXPECT_EQ(t->ne[d], d < (int)spec.ne.size() ? (int64_t)spec.ne[d] : 1) << spec.name;
    EXPECT_EQ(t->n_bytes, spec.data.size()) << spec.name;
    EXPECT_EQ((uintptr_t)t->data % 32, 0u) << spec.name;
    EXPECT_EQ((const uint8_t *)t->data, buf.p + L.data_begin + L.offsets[i]);
    EXPECT_EQ(memcmp(t->data, spec.data.data(), spec.data.size()), 0) << spec.name;
  }
  EXPECT_EQ(ak_gguf_find_tensor(g.get(), "t.missing"), nullptr);
  EXPECT_EQ(ak_gguf_find_tensor(g.get(), "t.f3"), nullptr);  // a prefix is not a match
  EXPECT_EQ(ak_gguf_tensor(g.get(), -1), nullptr);
  EXPECT_EQ(ak_gguf_tensor(g.get(), 7), nullptr);
}

TEST_F(AkGguf, GettersReportMismatchesAndLeaveOutputsAlone) {
  Layout L = every_type_builder().build();
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open_buffer(L.bytes.data(), L.bytes.size(), &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  uint32_t u32 = 77;
  int64_t i64 = 77;
  float f = 77;
  int b = 77;
  const char *s = nullptr;
  size_t len = 77;
  auto msg_has = [&](const char *sub) { return std::string(err.msg).find(sub) != std::string::npos; };

  EXPECT_EQ(ak_gguf_get_u32(g.get(), "nope", &err, &u32), AK_ERR_NOT_FOUND);
  EXPECT_TRUE(msg_has("key 'nope' not found")) << err.msg;
  EXPECT_EQ(ak_gguf_get_u32(g.get(), "general.architecture", &err, &u32), AK_ERR_FORMAT);
  EXPECT_TRUE(msg_has("'general.architecture' has type string, want an integer")) << err.msg;
  EXPECT_EQ(ak_gguf_get_u32(g.get(), "k.i32", &err, &u32), AK_ERR_FORMAT);  // -7
  EXPECT_TRUE(msg_has("does not fit in u32")) << err.msg;
  EXPECT_EQ(ak_gguf_get_u32(g.get(), "k.u64", &err, &u32), AK_ERR_FORMAT);
  EXPECT_EQ(ak_gguf_get_u32(g.get(), "k.bool", &err, &u32), AK_ERR_FORMAT);
  EXPECT_TRUE(msg_has("has type bool")) << err.msg;
  EXPECT_EQ(ak_gguf_get_u32(g.get(), "k.f32", &err, &u32), AK_ERR_FORMAT);
  EXPECT_EQ(u32, 77u);
  EXPECT_EQ(ak_gguf_get_i64(g.get(), "k.u64", &err, &i64), AK_ERR_FORMAT);
  EXPECT_TRUE(msg_has("does not fit in i64")) << err.msg;
  EXPECT_EQ(ak_gguf_get_i64(g.get(), "k.arr_i32", &err, &i64), AK_ERR_FORMAT);
  EXPECT_TRUE(msg_has("array of i32")) << err.msg;
  EXPECT_EQ(i64, 77);
  EXPECT_EQ(ak_gguf_get_f32(g.get(), "k.u32", &err, &f), AK_ERR_FORMAT);
  EXPECT_EQ(f, 77.0f);
  EXPECT_EQ(ak_gguf_get_bool(g.get(), "k.u8", &err, &b), AK_ERR_FORMAT);
  EXPECT_EQ(b, 77);
  EXPECT_EQ(ak_gguf_get_str(g.get(), "k.arr_str", &err, &s, &len), AK_ERR_FORMAT);
  EXPECT_EQ(s, nullptr);

  ak_gguf_value_type_t et = AK_GGUF_BOOL;
  int64_t n = 77;
  const void *data = nullptr;
  EXPECT_EQ(ak_gguf_get_arr(g.get(), "k.u8", &err, &et, &n), AK_ERR_FORMAT);
  EXPECT_EQ(n, 77);
  EXPECT_EQ(ak_gguf_get_arr_str(g.get(), "k.arr_str", 3, &err, &s, &len), AK_ERR_RANGE);
  EXPECT_TRUE(msg_has("index 3 outside array 'k.arr_str' of 3")) << err.msg;
  EXPECT_EQ(ak_gguf_get_arr_str(g.get(), "k.arr_str", -1, &err, &s, &len), AK_ERR_RANGE);
  EXPECT_EQ(ak_gguf_get_arr_str(g.get(), "k.arr_i32", 0, &err, &s, &len), AK_ERR_FORMAT);
  EXPECT_EQ(ak_gguf_get_arr_data(g.get(), "k.arr_str", &err, &data), AK_ERR_FORMAT);
  EXPECT_EQ(ak_gguf_get_arr_data(g.get(), "k.arr_arr", &err, &data), AK_ERR_FORMAT);
  EXPECT_EQ(data, nullptr);
  EXPECT_EQ(ak_gguf_get_arr_i64(g.get(), "k.arr_f32", 0, &err, &i64), AK_ERR_FORMAT);
  EXPECT_EQ(ak_gguf_get_arr_i64(g.get(), "k.arr_u64", 0, &err, &i64), AK_ERR_FORMAT);
  EXPECT_EQ(ak_gguf_get_arr_i64(g.get(), "k.arr_i32", 3, &err, &i64), AK_ERR_RANGE);
  EXPECT_EQ(ak_gguf_get_arr_f32(g.get(), "k.arr_i32", 0, &err, &f), AK_ERR_FORMAT);
  EXPECT_EQ(i64, 77);
  EXPECT_EQ(f, 77.0f);
  EXPECT_STREQ(ak_gguf_value_type_name(AK_GGUF_FLOAT64), "f64");
  EXPECT_STREQ(ak_gguf_value_type_name((ak_gguf_value_type_t)13), "unknown");
}

TEST_F(AkGguf, Version2AndCustomAlignment) {
  Builder B;
  B.version = 2;
  B.alignment = 64;
  B.kv("general.alignment", scalar<uint32_t>(AK_GGUF_UINT32, 64));
  B.tensor({"a", {32}, AK_TYPE_F16, {}}).tensor({"b", {32}, AK_TYPE_Q8_0, {}});
  Layout L = B.build();
  AlignedBuf buf(L.bytes);
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open_buffer(buf.p, buf.n, &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  EXPECT_EQ(ak_gguf_version(g.get()), 2u);
  EXPECT_EQ(ak_gguf_alignment(g.get()), 64u);
  EXPECT_EQ(L.offsets[1], 64u);  // 64 bytes of f16, then the next multiple of 64
  const ak_gguf_tensor_t *t = ak_gguf_find_tensor(g.get(), "b");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ((uintptr_t)t->data % 64, 0u);
  EXPECT_EQ(memcmp(t->data, B.tensors[1].data.data(), 34), 0);
}

TEST_F(AkGguf, NoTensorsAndNoKvs) {
  Layout L = Builder().build();
  ASSERT_EQ(L.bytes.size(), 24u);
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open_buffer(L.bytes.data(), L.bytes.size(), &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  EXPECT_EQ(ak_gguf_n_kv(g.get()), 0);
  EXPECT_EQ(ak_gguf_n_tensors(g.get()), 0);
  EXPECT_EQ(ak_gguf_find_tensor(g.get(), "x"), nullptr);
}

TEST_F(AkGguf, OpensAFileByPath) {
  Layout L = every_type_builder().build();
  char path[] = "/tmp/ak_gguf_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, L.bytes.data(), L.bytes.size()), (ssize_t)L.bytes.size());
  close(fd);
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open(path, &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  const ak_gguf_tensor_t *t = ak_gguf_find_tensor(g.get(), "t.q4_1");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ((uintptr_t)t->data % 32, 0u);  // the mapping is page aligned
  EXPECT_EQ(memcmp(t->data, &L.bytes[L.data_begin + L.offsets[4]], t->n_bytes), 0);
  g.reset();

  // Empty and truncated files fail the same way as buffers, named after ak_gguf_open.
  ASSERT_EQ(truncate(path, 0), 0);
  ASSERT_EQ(ak_gguf_open(path, &err, &raw), AK_ERR_FORMAT);
  EXPECT_NE(std::string(err.msg).find("ak_gguf_open: truncated: header magic"), std::string::npos) << err.msg;
  unlink(path);
  EXPECT_EQ(ak_gguf_open(path, &err, &raw), AK_ERR_NOT_FOUND);
  EXPECT_NE(std::string(err.msg).find(path), std::string::npos) << err.msg;
  EXPECT_EQ(ak_gguf_open("/tmp", &err, &raw), AK_ERR_IO);
}

// -------------------------------------------------- one corrupt file per class

TEST_F(AkGguf, RejectsBadMagic) {
  Layout L = every_type_builder().build();
  L.bytes[0] = 'X';
  expect_fail(L.bytes, AK_ERR_FORMAT, "bad magic");
}

TEST_F(AkGguf, RejectsBadVersion) {
  Layout L = every_type_builder().build();
  patch<uint32_t>(L.bytes, 4, 1);
  expect_fail(L.bytes, AK_ERR_FORMAT, "unsupported version 1, want 2 or 3");
  patch<uint32_t>(L.bytes, 4, 4);
  expect_fail(L.bytes, AK_ERR_FORMAT, "unsupported version 4");
  patch<uint32_t>(L.bytes, 4, 0x03000000u);
  expect_fail(L.bytes, AK_ERR_FORMAT, "big-endian");
}

TEST_F(AkGguf, RejectsTruncatedHeader) {
  Layout L = every_type_builder().build();
  L.bytes.resize(20);
  expect_fail(L.bytes, AK_ERR_FORMAT, "truncated: header n_kv at offset 16 needs 8 bytes, 4 left");
}

TEST_F(AkGguf, RejectsTruncatedKv) {
  Builder B;
  B.kv("a.key", scalar<uint32_t>(AK_GGUF_UINT32, 5)).kv("b.key", scalar<uint64_t>(AK_GGUF_UINT64, 5));
  Layout L = B.build();
  L.bytes.resize(L.kv_val_pos[1] + 3);
  expect_fail(L.bytes, AK_ERR_FORMAT, "truncated: kv 1 'b.key' u64");
}

TEST_F(AkGguf, RejectsTruncatedTensorTable) {
  Layout L = every_type_builder().build();
  L.bytes.resize(L.tinfo_pos[2] + 8 + 6 + 4 + 8);  // inside ne of 't.bf16'
  expect_fail(L.bytes, AK_ERR_FORMAT, "truncated: tensor 2 't.bf16' ne");
}

TEST_F(AkGguf, RejectsTruncatedData) {
  Layout L = every_type_builder().build();
  L.bytes.resize(L.bytes.size() - 1);
  expect_fail(L.bytes, AK_ERR_FORMAT, "tensor 't.q8_1' data [");
  expect_fail(L.bytes, AK_ERR_FORMAT, std::string("exceeds file size ") + std::to_string(L.bytes.size()));
}

TEST_F(AkGguf, RejectsStringLengthPastEof) {
  Layout L = every_type_builder().build();
  patch<uint64_t>(L.bytes, L.kv_val_pos[0], L.bytes.size());  // general.architecture's length
  expect_fail(L.bytes, AK_ERR_FORMAT, "kv 0 'general.architecture' string value length");
}

TEST_F(AkGguf, RejectsHugeArrayCountQuickly) {
  Builder B;
  B.kv("tokens", arr_str({"a", "b"}));
  Layout L = B.build();
  patch<uint64_t>(L.bytes, L.kv_val_pos[0] + 4, UINT64_C(1) << 60);
  auto t0 = std::chrono::steady_clock::now();
  expect_fail(L.bytes, AK_ERR_FORMAT, "kv 0 'tokens' array of 1152921504606846976 string elements");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  patch<uint32_t>(L.bytes, L.kv_val_pos[0], AK_GGUF_UINT64);  // fixed-size elements too
  expect_fail(L.bytes, AK_ERR_FORMAT, "cannot fit");
}

TEST_F(AkGguf, RejectsHugeCountsInTheHeader) {
  Layout L = every_type_builder().build();
  patch<uint64_t>(L.bytes, 8, UINT64_C(1) << 60);
  expect_fail(L.bytes, AK_ERR_FORMAT, "n_tensors 1152921504606846976 cannot fit");
  L = every_type_builder().build();
  patch<uint64_t>(L.bytes, 16, UINT64_MAX);
  expect_fail(L.bytes, AK_ERR_FORMAT, "n_kv 18446744073709551615 cannot fit");
}

TEST_F(AkGguf, RejectsBadValueType) {
  Layout L = every_type_builder().build();
  patch<uint32_t>(L.bytes, L.kv_val_pos[2] - 4, 13);  // k.i8's type tag
  expect_fail(L.bytes, AK_ERR_FORMAT, "kv 2 'k.i8' has unknown value type 13");
}

TEST_F(AkGguf, RejectsBadArrayElementType) {
  Builder B;
  B.kv("arr", arr<uint8_t>(AK_GGUF_UINT8, {1}));
  Layout L = B.build();
  patch<uint32_t>(L.bytes, L.kv_val_pos[0], 99);
  expect_fail(L.bytes, AK_ERR_FORMAT, "kv 0 'arr' array has unknown element type 99");
}

TEST_F(AkGguf, RejectsDeeplyNestedArrays) {
  Val v = arr<uint8_t>(AK_GGUF_UINT8, {1});
  for (int i = 0; i < 9; i++) v = arr_arr({v});
  Builder B;
  B.kv("deep", v);
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "arrays nested deeper than 8");
}

TEST_F(AkGguf, RejectsBadGgmlType) {
  Builder B;
  B.tensor({"w", {32}, AK_TYPE_F32, {}});
  Layout L = B.build();
  patch<uint32_t>(L.bytes, L.tinfo_pos[0] + 8 + 1 + 4 + 8, 6);  // Q5_0: not supported
  expect_fail(L.bytes, AK_ERR_FORMAT, "tensor 0 'w' has unknown or unsupported ggml type 6");
}

TEST_F(AkGguf, RejectsZeroDims) {
  Builder B;
  B.tensor({"w", {}, AK_TYPE_F32, {1, 2, 3, 4}});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 0 'w' has n_dims 0, want 1..4");
}

TEST_F(AkGguf, RejectsFiveDims) {
  Builder B;
  B.tensor({"w", {1, 1, 1, 1, 1}, AK_TYPE_F32, {1, 2, 3, 4}});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 0 'w' has n_dims 5, want 1..4");
}

TEST_F(AkGguf, RejectsZeroAndOverflowingShapes) {
  Builder B;
  B.tensor({"w", {32, 0}, AK_TYPE_F32, {1}});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 0 'w' has ne[1] = 0");
  Builder C;
  C.tensor({"w", {UINT64_C(1) << 32, UINT64_C(1) << 32}, AK_TYPE_F32, {1}});
  expect_fail(C.build().bytes, AK_ERR_FORMAT, "element count overflows int64 at ne[1]");
  Builder D;  // the element count fits but the bytes do not
  D.tensor({"w", {UINT64_C(1) << 31, UINT64_C(1) << 31}, AK_TYPE_F32, {1}});
  expect_fail(D.build().bytes, AK_ERR_FORMAT, "byte size overflows");
}

TEST_F(AkGguf, RejectsRowNotMultipleOfBlock) {
  Builder B;
  B.tensor({"blk.0.ffn_up.weight", {48, 2}, AK_TYPE_Q4_1, {1}});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "ne[0] = 48 is not a multiple of the q4_1 block size 32");
}

TEST_F(AkGguf, RejectsMisalignedOffset) {
  Builder B;
  B.tensor({"a", {32}, AK_TYPE_F32, {}}).tensor({"b", {32}, AK_TYPE_F32, {}, 144});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 1 'b' data offset 144 is not a multiple of the alignment 32");
}

TEST_F(AkGguf, RejectsDataPastEof) {
  Builder B;
  B.tensor({"a", {32}, AK_TYPE_F32, {}}).tensor({"b", {32}, AK_TYPE_F32, {}, UINT64_C(1) << 40});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 'b' data [");
  Builder C;  // an offset so large that offset + size wraps around 2^64
  C.tensor({"a", {32}, AK_TYPE_F32, {}}).tensor({"b", {32}, AK_TYPE_F32, {}, UINT64_MAX - 63});
  expect_fail(C.build().bytes, AK_ERR_FORMAT, "exceeds file size");
}

TEST_F(AkGguf, RejectsOverlappingTensors) {
  Builder B;
  B.tensor({"a", {64}, AK_TYPE_F32, {}}).tensor({"b", {32}, AK_TYPE_F32, {}, 128});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "overlaps tensor 'a'");
}

TEST_F(AkGguf, RejectsDuplicateKey) {
  Builder B;
  B.kv("general.name", vstr("a")).kv("x", vstr("")).kv("general.name", vstr("b"));
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "kv 2 'general.name' duplicates the key of kv 0");
}

TEST_F(AkGguf, RejectsDuplicateTensorName) {
  Builder B;
  B.tensor({"w", {32}, AK_TYPE_F32, {}}).tensor({"w", {32}, AK_TYPE_F16, {}});
  expect_fail(B.build().bytes, AK_ERR_FORMAT, "tensor 1 'w' duplicates the name of tensor 0");
}

TEST_F(AkGguf, RejectsAlignmentNotPowerOfTwo) {
  for (uint32_t a : {48u, 0u}) {
    Builder B;
    B.kv("general.alignment", scalar<uint32_t>(AK_GGUF_UINT32, a));
    B.tensor({"w", {32}, AK_TYPE_F32, {}});
    expect_fail(B.build().bytes, AK_ERR_FORMAT, "general.alignment " + std::to_string(a) + " is not a nonzero power of two");
  }
  Builder C;
  C.kv("general.alignment", vstr("32"));
  expect_fail(C.build().bytes, AK_ERR_FORMAT, "general.alignment has type string");
}

// ------------------------------------------------------ exhaustive robustness

TEST_F(AkGguf, EveryTruncationFailsCleanly) {
  Layout L = every_type_builder().build();
  for (size_t n = 0; n < L.bytes.size(); n++) {
    std::vector<uint8_t> cut(L.bytes.begin(), L.bytes.begin() + n);  // exact size: ASan sees overreads
    ak_err_t err;
    ak_err_clear(&err);
    ak_gguf_t *g = nullptr;
    ASSERT_EQ(ak_gguf_open_buffer(cut.data(), cut.size(), &err, &g), AK_ERR_FORMAT) << "length " << n;
    ASSERT_EQ(g, nullptr);
    ASSERT_EQ(std::string(err.msg).rfind("ak_gguf_open_buffer: ", 0), 0u) << err.msg;
    ASSERT_GT(strlen(err.msg), strlen("ak_gguf_open_buffer: ")) << n;
    ASSERT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before_) << "leak at length " << n;
  }
}

TEST_F(AkGguf, RandomByteFlipsNeverCrash) {
  Layout L = every_type_builder().build();
  std::mt19937 rng(1234);
  int n_ok = 0;
  for (int iter = 0; iter < 3000; iter++) {
    std::vector<uint8_t> b(L.bytes.begin(), L.bytes.begin() + L.data_begin);  // the metadata only
    for (int k = 0; k < 3; k++) b[rng() % b.size()] ^= (uint8_t)(1u << (rng() % 8));
    ak_err_t err;
    ak_gguf_t *g = nullptr;
    ak_status_t st = ak_gguf_open_buffer(b.data(), b.size(), &err, &g);
    if (st == AK_OK) {
      n_ok++;
      ak_gguf_close(g);
    } else {
      ASSERT_EQ(st, AK_ERR_FORMAT) << err.msg;
    }
    ASSERT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before_) << iter;
  }
  EXPECT_LT(n_ok, 3000);  // the data section is cut off: most files must fail
}

TEST_F(AkGguf, EveryAllocationFailureUnwinds) {
  Layout L = every_type_builder().build();
  int n_fail = 0;
  for (int64_t k = 1; k < 100; k++) {
    ak_alloc_fail_after(k);
    ak_err_t err;
    ak_gguf_t *g = nullptr;
    ak_status_t st = ak_gguf_open_buffer(L.bytes.data(), L.bytes.size(), &err, &g);
    ak_alloc_fail_after(0);
    if (st == AK_OK) {
      ak_gguf_close(g);
      break;
    }
    n_fail++;
    ASSERT_EQ(st, AK_ERR_NO_MEMORY) << err.msg;
    ASSERT_NE(std::string(err.msg).find("no memory"), std::string::npos) << err.msg;
    ASSERT_EQ(ak_alloc_outstanding_bytes(AK_MEM_HOST), before_) << "leak when allocation " << k << " fails";
  }
  EXPECT_GE(n_fail, 6);  // handle, kvs, kv index, tensors, tensor index, string offsets, ...
}

// ------------------------------------------------------------ the real model

TEST_F(AkGguf, ReadsSmolLM2) {
  if (access(AK_MODEL_PATH, R_OK) != 0) GTEST_SKIP() << AK_MODEL_PATH << " is absent";
  ak_err_t err;
  ak_gguf_t *raw = nullptr;
  ASSERT_EQ(ak_gguf_open(AK_MODEL_PATH, &err, &raw), AK_OK) << err.msg;
  GgufPtr g(raw);
  const char *s;
  size_t len;
  ASSERT_EQ(ak_gguf_get_str(g.get(), "general.architecture", &err, &s, &len), AK_OK) << err.msg;
  EXPECT_EQ(str_of(s, len), "llama");
  uint32_t u32;
  ASSERT_EQ(ak_gguf_get_u32(g.get(), "llama.block_count", &err, &u32), AK_OK) << err.msg;
  EXPECT_EQ(u32, 30u);
  ASSERT_EQ(ak_gguf_get_u32(g.get(), "llama.embedding_length", &err, &u32), AK_OK) << err.msg;
  EXPECT_EQ(u32, 576u);
  EXPECT_EQ(ak_gguf_n_tensors(g.get()), 272);

  const ak_gguf_tensor_t *t = ak_gguf_find_tensor(g.get(), "token_embd.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, AK_TYPE_Q8_0);
  EXPECT_EQ(t->n_dims, 2);
  EXPECT_EQ(t->ne[0], 576);
  EXPECT_EQ(t->ne[1], 49152);
  EXPECT_EQ(t->n_bytes, (size_t)49152 * 576 / 32 * 34);
  std::vector<float> row(576);
  ASSERT_EQ(ak_dequant_row(t->type, t->data, row.data(), 576), AK_OK);
  float amax = 0;
  for (float v : row) {
    ASSERT_TRUE(std::isfinite(v));
    amax = std::max(amax, std::fabs(v));
  }
  EXPECT_GT(amax, 0.0f);

  ak_gguf_value_type_t et;
  int64_t n;
  ASSERT_EQ(ak_gguf_get_arr(g.get(), "tokenizer.ggml.tokens", &err, &et, &n), AK_OK) << err.msg;
  EXPECT_EQ(et, AK_GGUF_STRING);
  EXPECT_EQ(n, 49152);
  ASSERT_EQ(ak_gguf_get_arr_str(g.get(), "tokenizer.ggml.tokens", n - 1, &err, &s, &len), AK_OK);
  EXPECT_GT(len, 0u);
}
