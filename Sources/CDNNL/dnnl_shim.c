#include "gd_dnnl.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <oneapi/dnnl/dnnl.h>

// Each oneDNN function this file uses, as a pointer filled by dlsym.
#define GD_FUNCTIONS(X) \
    X(dnnl_engine_create) X(dnnl_stream_create) X(dnnl_memory_desc_init_by_strides) X(dnnl_matmul_desc_init) \
    X(dnnl_primitive_attr_create) X(dnnl_primitive_attr_destroy) X(dnnl_primitive_attr_set_output_scales) \
    X(dnnl_post_ops_create) X(dnnl_post_ops_destroy) X(dnnl_post_ops_append_sum) X(dnnl_primitive_attr_set_post_ops) \
    X(dnnl_primitive_desc_create) X(dnnl_primitive_desc_destroy) X(dnnl_primitive_desc_query) \
    X(dnnl_primitive_create) X(dnnl_primitive_destroy) X(dnnl_primitive_execute) X(dnnl_stream_wait) \
    X(dnnl_memory_create) X(dnnl_memory_destroy) X(dnnl_memory_set_data_handle)
#define GD_DECLARE(name) static __typeof__(&name) p_##name;
GD_FUNCTIONS(GD_DECLARE)

static dnnl_engine_t engine;
static dnnl_stream_t stream;

int gd_dnnl_load(char *error, size_t error_size) {
    if (engine) return 0;
    // oneDNN threads through OpenMP, whose threads by default spin for a while after each product: on cores that
    // our own kernels need next, that spinning costs ~10% of a bf16 step (124M, 2 threads). Passive unless the user chose.
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
        snprintf(error, error_size, "cannot load oneDNN (libdnnl.so.2: install Debian's libdnnl-dev, as Launch/setup does): %s", dlerror());
        return 1;
    }
#define GD_LOAD(name) \
    p_##name = (__typeof__(&name))dlsym(lib, #name); \
    if (!p_##name) { snprintf(error, error_size, "oneDNN has no %s (version 2.x expected)", #name); return 1; }
    GD_FUNCTIONS(GD_LOAD)
    if (p_dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success || p_dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        engine = NULL;
        snprintf(error, error_size, "oneDNN could not create its CPU engine");
        return 1;
    }
    return 0;
}

void gd_dnnl_set_threads(int threads) {
    void (*set)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (set) set(threads);
}

struct gd_matmul {
    dnnl_primitive_t primitive;
    dnnl_memory_t a, b, c;
};

gd_matmul *gd_matmul_create(int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                            float alpha, float beta,
                            char *impl, size_t impl_size, char *error, size_t error_size) {
    if (!engine) { snprintf(error, error_size, "oneDNN is not loaded"); return NULL; }
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_dims_t a_dims = {m, k}, b_dims = {k, n}, c_dims = {m, n};
    // Row-major storage with leading dimensions, transposed or not, as strides of the logical matrices.
    dnnl_dims_t a_strides = {ta ? 1 : lda, ta ? lda : 1}, b_strides = {tb ? 1 : ldb, tb ? ldb : 1}, c_strides = {ldc, 1};
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    gd_matmul *mm = NULL;
    const char *what = "memory descriptors";
    if (p_dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, dnnl_bf16, a_strides) != dnnl_success ||
        p_dnnl_memory_desc_init_by_strides(&b_md, 2, b_dims, dnnl_bf16, b_strides) != dnnl_success ||
        p_dnnl_memory_desc_init_by_strides(&c_md, 2, c_dims, dnnl_f32, c_strides) != dnnl_success) goto fail;
    what = "the matmul descriptor";
    if (p_dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md) != dnnl_success) goto fail;
    what = "attributes";
    if (p_dnnl_primitive_attr_create(&attr) != dnnl_success) goto fail;
    if (alpha != 1.0f && p_dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) != dnnl_success) goto fail;
    if (beta != 0.0f) {
        if (p_dnnl_post_ops_create(&post_ops) != dnnl_success || p_dnnl_post_ops_append_sum(post_ops, beta) != dnnl_success ||
            p_dnnl_primitive_attr_set_post_ops(attr, post_ops) != dnnl_success) goto fail;
    }
    what = "the primitive descriptor (no bf16 matmul on this CPU?)";
    dnnl_status_t status = p_dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    if (status != dnnl_success) { snprintf(error, error_size, "oneDNN: %s: status %d", what, (int)status); goto cleanup; }
    const char *name = NULL;
    if (p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name) snprintf(impl, impl_size, "%s", name);
    mm = calloc(1, sizeof *mm);
    what = "the primitive and its memory";
    if (!mm || p_dnnl_primitive_create(&mm->primitive, pd) != dnnl_success ||
        p_dnnl_memory_create(&mm->a, &a_md, engine, DNNL_MEMORY_NONE) != dnnl_success ||
        p_dnnl_memory_create(&mm->b, &b_md, engine, DNNL_MEMORY_NONE) != dnnl_success ||
        p_dnnl_memory_create(&mm->c, &c_md, engine, DNNL_MEMORY_NONE) != dnnl_success) {
        gd_matmul_destroy(mm);
        mm = NULL;
        goto fail;
    }
    goto cleanup;
fail:
    snprintf(error, error_size, "oneDNN could not create %s", what);
cleanup:
    if (pd) p_dnnl_primitive_desc_destroy(pd);
    if (post_ops) p_dnnl_post_ops_destroy(post_ops);
    if (attr) p_dnnl_primitive_attr_destroy(attr);
    return mm;
}

int gd_matmul_run(gd_matmul *mm, const uint16_t *a, const uint16_t *b, float *c) {
    if (p_dnnl_memory_set_data_handle(mm->a, (void *)a) != dnnl_success ||
        p_dnnl_memory_set_data_handle(mm->b, (void *)b) != dnnl_success ||
        p_dnnl_memory_set_data_handle(mm->c, c) != dnnl_success) return 1;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, mm->a}, {DNNL_ARG_WEIGHTS, mm->b}, {DNNL_ARG_DST, mm->c}};
    if (p_dnnl_primitive_execute(mm->primitive, stream, 3, args) != dnnl_success) return 1;
    return p_dnnl_stream_wait(stream) == dnnl_success ? 0 : 1;
}

void gd_matmul_destroy(gd_matmul *mm) {
    if (!mm) return;
    if (mm->primitive) p_dnnl_primitive_destroy(mm->primitive);
    if (mm->a) p_dnnl_memory_destroy(mm->a);
    if (mm->b) p_dnnl_memory_destroy(mm->b);
    if (mm->c) p_dnnl_memory_destroy(mm->c);
    free(mm);
}
