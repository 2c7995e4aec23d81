// atp.cpu::MatMulInt4 / MatMulInt8 on 64-bit Arm with the dot-product extension (Jetson Orin's Cortex-A78AE,
// Xavier's Carmel): sdot on signed codes, so no offset correction. Same layout of A's codes as the AVX-512 path
// (kernels.h): each 16-byte load of B holds 32 consecutive int4 weights (even ones in the low nibbles, lined up with
// 16 even A codes; odd ones in the high nibbles, with 16 odd A codes) or 16 int8 weights, all inside one block.
// Checked under qemu-aarch64 against the numpy reference (tests/unit/test_ort_cpu_kernels.py); not yet timed on
// a device, so the runtime's `auto` does not pick it (name the library in ATP_ORT_CPU_KERNELS to use it).
#pragma once

#include "kernels.h"

#if ATP_NEON_DOT
namespace atp_cpu {

// int4: 16 bytes of B at `q` = elements e0..e0 + 31 of the padded row; xe / xo: their 16 even / odd A codes
inline int32x4_t dot_int4(const uint8_t* q, const int8_t* xe, const int8_t* xo) {
  const uint8x16_t v = vld1q_u8(q);
  const int8x16_t lo = vreinterpretq_s8_u8(vsubq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), vdupq_n_u8(8)));
  const int8x16_t hi = vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8(v, 4), vdupq_n_u8(8)));
  return vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(xe)), hi, vld1q_s8(xo));
}

inline void rows_neon(const Problem& p, int64_t r0, int64_t r1) {
  for_each_output(p, r0, r1, [&p](const uint8_t* row, const float* sw, const int8_t* xq, const float* sx, int64_t) {
    float32x4_t acc = vdupq_n_f32(0.f);
    if (p.bits == 8) {
      for (int64_t e = 0; e < p.kp; e += 16) {  // 16 codes q + 128 -> signed by flipping the top bit
        const int8x16_t w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(row + e), vdupq_n_u8(0x80)));
        const int32x4_t d = vdotq_s32(vdupq_n_s32(0), w, vld1q_s8(xq + e));
        const int64_t b = e / p.bs;
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(d), sw[b] * sx[b]);
      }
    } else {
      for (int64_t e = 0; e < p.kp; e += 32) {  // 32 weights per 16-byte load
        const int64_t pos = code_pos(p, e), odd = e / 128 < p.npairs ? 64 : 32;
        const int32x4_t d = dot_int4(row + e / 2, xq + pos, xq + pos + odd);
        const int64_t b = e / p.bs;
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(d), sw[b] * sx[b]);
      }
    }
    return vaddvq_f32(acc);
  });
}

}  // namespace atp_cpu
#endif  // ATP_NEON_DOT
