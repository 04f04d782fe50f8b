import Training

// The OpenBLAS kernel must be chosen before the library loads: re-exec once with OPENBLAS_CORETYPE set.
Runtime.ensureOpenBLASKernel()
GPT2Dist.main(GPT2Dist.normalize(Array(CommandLine.arguments.dropFirst())))
