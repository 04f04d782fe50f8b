// oneDNN's bf16 matmul, loaded at run time (dlopen of libdnnl.so.2): fp32 runs never need the library.
#ifndef GD_DNNL_H
#define GD_DNNL_H
#include <stddef.h>
#include <stdint.h>

// Loads libdnnl and creates its CPU engine and stream; 0 on success, else writes why into `error`.
int gd_dnnl_load(char *error, size_t error_size);

// A bf16 x bf16 -> fp32 matmul primitive for one shape: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, with A and
// B stored as bf16 (row-major with leading dimensions lda, ldb; transposed when ta/tb), C row-major with leading
// dimension ldc.
typedef struct gd_matmul gd_matmul;

// NULL when oneDNN cannot make it (`error` says why); `impl` receives oneDNN's implementation name
// (e.g. "brg:avx512_core_bf16", "gemm:jit").
gd_matmul *gd_matmul_create(int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                            float alpha, float beta,
                            char *impl, size_t impl_size, char *error, size_t error_size);
// 0 on success.
int gd_matmul_run(gd_matmul *mm, const uint16_t *a, const uint16_t *b, float *c);
void gd_matmul_destroy(gd_matmul *mm);

// OpenMP threads oneDNN may use (its threading runtime), when that runtime is loaded.
void gd_dnnl_set_threads(int threads);

#endif
