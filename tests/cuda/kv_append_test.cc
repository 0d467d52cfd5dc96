// kernels/cuda KvAppend run in the CUDA-on-CPU harness against kernels/ref KvAppendRef, for
// every (activation dtype, cache dtype) pair: the whole cache (K, V and the int8 scale/zero
// arrays, including every slot the batch does not touch) must match bit for bit, since the
// kernel uses the reference's float formula operation for operation (kv_append.cuh).
#include "kernels/cuda/kv_append.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ref/ops_ref.h"
#include "tests/cuda/cuda_test_util.h"

namespace tandem::kernels::cuda {
namespace {

using namespace testing;  // NOLINT(build/namespaces): the test helpers

struct Shape {
  int n_tokens, n_kv_heads, head_dim, block_size;
};

// A cache of random bytes (stale contents the append must leave alone where it does not write).
struct Cache {
  std::vector<unsigned char> k, v;
  std::vector<float> k_sz, v_sz;

  Cache(const KvCacheView& c, std::mt19937& rng) {
    const size_t elems =
        static_cast<size_t>(c.n_layers) * c.n_blocks * c.n_kv_heads * c.block_size * c.head_dim;
    const size_t rows = elems / c.head_dim;
    std::uniform_int_distribution<int> byte(0, 255);
    k.resize(elems * KvElemBytes(c.dtype));
    v.resize(k.size());
    for (auto& b : k) b = static_cast<unsigned char>(byte(rng));
    for (auto& b : v) b = static_cast<unsigned char>(byte(rng));
    k_sz = RandomFloats(rows * 2, -1.f, 1.f, rng);
    v_sz = RandomFloats(rows * 2, -1.f, 1.f, rng);
  }
  void Attach(KvCacheView* c) {
    c->k = k.data();
    c->v = v.data();
    c->k_scale_zero = k_sz.data();
    c->v_scale_zero = v_sz.data();
  }
  bool operator==(const Cache& o) const {
    return k == o.k && v == o.v &&
           std::memcmp(k_sz.data(), o.k_sz.data(), k_sz.size() * sizeof(float)) == 0 &&
           std::memcmp(v_sz.data(), o.v_sz.data(), v_sz.size() * sizeof(float)) == 0;
  }
};

template <typename T>
class KvAppendTest : public ::testing::Test {};
TYPED_TEST_SUITE(KvAppendTest, ActTypes);

TYPED_TEST(KvAppendTest, MatchesReferenceBitForBit) {
  using T = TypeParam;
  std::mt19937 rng(51);
  std::vector<Shape> shapes = {{1, 1, 1, 4},   {7, 3, 5, 4},   {20, 2, 64, 16},
                               {5, 1, 80, 16}, {3, 2, 128, 8}, {9, 3, 33, 4}};
  std::uniform_int_distribution<int> tokens(1, 12), heads(1, 4), dim(1, 140), bs(1, 16);
  for (int i = 0; i < 3; ++i) shapes.push_back({tokens(rng), heads(rng), dim(rng), bs(rng)});
  for (const Shape& s : shapes) {
    for (KvDType kv : {KvDType::kF32, KvDType::kF16, KvDType::kInt8}) {
      KvCacheView c;
      c.dtype = kv;
      c.n_layers = 2;
      c.block_size = s.block_size;
      c.n_blocks = (s.n_tokens + s.block_size - 1) / s.block_size + 2;
      c.n_kv_heads = s.n_kv_heads;
      c.head_dim = s.head_dim;
      // Distinct slots scattered over the pool.
      std::vector<int32_t> slots(c.n_blocks * c.block_size);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(s.n_tokens);
      const size_t n = static_cast<size_t>(s.n_tokens) * s.n_kv_heads * s.head_dim;
      std::vector<float> kf = RandomFloats(n, -3.f, 3.f, rng);
      std::vector<float> vf = RandomFloats(n, -3.f, 3.f, rng);
      // One constant row (scale 0 for int8) and one of large magnitude.
      std::fill(kf.begin(), kf.begin() + s.head_dim, 0.375f);
      if (s.n_tokens > 1) {
        for (int i = 0; i < s.head_dim; ++i) vf[n - 1 - i] *= 1000.f;
      }
      const std::vector<T> k = ToActs<T>(kf), v = ToActs<T>(vf);
      const int layer = s.n_tokens % 2;

      Cache want(c, rng);
      Cache got = want;
      KvAppendParams p;
      const std::vector<float> k_in = FromActs(k), v_in = FromActs(v);
      p.k = k_in.data();
      p.v = v_in.data();
      p.slots = slots.data();
      p.n_tokens = s.n_tokens;
      p.layer = layer;
      p.cache = c;
      want.Attach(&p.cache);
      ref::KvAppendRef(p);
      DeviceCopy<T> dk(k), dv(v);
      DeviceCopy<int32_t> dslots(slots);
      DeviceCopy<unsigned char> dcache_k(got.k), dcache_v(got.v);
      DeviceCopy<float> dk_sz(got.k_sz), dv_sz(got.v_sz);
      p.k = reinterpret_cast<const float*>(dk.get());
      p.v = reinterpret_cast<const float*>(dv.get());
      p.slots = dslots.get();
      p.cache.k = dcache_k.get();
      p.cache.v = dcache_v.get();
      p.cache.k_scale_zero = dk_sz.get();
      p.cache.v_scale_zero = dv_sz.get();
      KvAppend(p, ActTraits<T>::kDType, Stream{});
      dcache_k.ToHost(got.k);
      dcache_v.ToHost(got.v);
      dk_sz.ToHost(got.k_sz);
      dv_sz.ToHost(got.v_sz);
      EXPECT_TRUE(got == want) << "kv dtype " << static_cast<int>(kv) << " tokens " << s.n_tokens
                               << " heads " << s.n_kv_heads << " head_dim " << s.head_dim
                               << " block_size " << s.block_size;
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda
