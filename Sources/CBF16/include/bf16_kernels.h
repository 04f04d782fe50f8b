// bf16 conversions for mixed-precision products, in C so they vectorise (Swift's SIMD masks do not: its
// compare-and-select compiled to a scalar loop). Each kernel has AVX-512, AVX2 and baseline clones, chosen at load.
#ifndef GD_BF16_KERNELS_H
#define GD_BF16_KERNELS_H
#include <stddef.h>
#include <stdint.h>
// out[i] = a[i] rounded to the nearest bf16 (ties to even), as fp32 (low 16 bits zero); NaN stays NaN. out may be a.
void gd_bf16_round(const float *a, float *out, size_t n);
// out[i] = the bf16 bits of a[i] rounded to nearest even; NaN stays NaN (quiet).
void gd_bf16_convert(const float *a, uint16_t *out, size_t n);
// out[i] = the fp32 value of bf16 bits h[i] (exact).
void gd_bf16_widen(const uint16_t *h, float *out, size_t n);
#endif
