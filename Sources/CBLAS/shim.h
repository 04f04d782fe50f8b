// CBLAS from OpenBLAS plus the OpenBLAS control functions (thread count, kernel name).
#ifndef GPT2DIST_CBLAS_SHIM_H
#define GPT2DIST_CBLAS_SHIM_H
#include <cblas.h>
#endif
