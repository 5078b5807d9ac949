// Philox4x32-10 uniform draws, bit-identical to Triton's tl.rand(seed, i) for int32 counters i
// and to pimm_fast.reference.philox_uniform. Host and device code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PIMM_HD __host__ __device__ __forceinline__
#else
#define PIMM_HD inline
#endif

namespace pimm_fast {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;

PIMM_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// u in [0, 1): counter (i, 0, 0, 0), key (seed lo, seed hi); first output word read as int32,
// folded to non-negative (x < 0 -> ~x) and scaled in fp32, as triton.language.random does.
PIMM_HD float philox_uniform(uint64_t seed, uint32_t counter) {
  uint32_t c0 = counter, c1 = 0, c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(kPhiloxRoundB, a2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, a0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * a2;
    c3 = kPhiloxRoundA * a0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  int32_t x = static_cast<int32_t>(c0);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

}  // namespace pimm_fast
