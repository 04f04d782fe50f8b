#include "bf16_kernels.h"
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// The bf16 bits of fp32 bits u: round to nearest even; a NaN keeps its sign and becomes a quiet NaN (a payload only
// in the low 16 bits would otherwise truncate into infinity).
static inline uint32_t bf16_bits(uint32_t u) {
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x40u;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded;
}

CLONES void gd_bf16_round(const float *a, float *out, size_t n) {
    const uint32_t *src = (const uint32_t *)a;
    uint32_t *dst = (uint32_t *)out;
    for (size_t i = 0; i < n; i++) dst[i] = bf16_bits(src[i]) << 16;
}

CLONES void gd_bf16_convert(const float *a, uint16_t *out, size_t n) {
    const uint32_t *src = (const uint32_t *)a;
    for (size_t i = 0; i < n; i++) out[i] = (uint16_t)bf16_bits(src[i]);
}

CLONES void gd_bf16_widen(const uint16_t *h, float *out, size_t n) {
    uint32_t *dst = (uint32_t *)out;
    for (size_t i = 0; i < n; i++) dst[i] = (uint32_t)h[i] << 16;
}
