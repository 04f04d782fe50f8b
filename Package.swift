// swift-tools-version:6.0
// gpt2-dist: data-parallel GPT-2 training over MPI, on a BLAS-backed autograd core.
import PackageDescription

// Release builds are what people train with, and what the multi-rank, fault and CLI tests run: -O keeps every
// precondition (-Ounchecked measured the same within noise: 124M, 8x128, 2 threads, six paired rounds, mean
// ratio 1.00). Debug builds optimise too: the in-process tests train real (small) models.
let fast: [SwiftSetting] = [
    .unsafeFlags(["-O"], .when(configuration: .release)),
    .unsafeFlags(["-O"], .when(configuration: .debug)),
]

let package = Package(
    name: "gpt2-dist",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "gpt2-dist", targets: ["gpt2-dist"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Native libraries, found by pkg-config, each behind a small C shim header.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5-serial", providers: [.apt(["libhdf5-dev"])]),
        // zlib: prepare reads .txt.gz / .jsonl.gz inputs.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Shared by every module below: JSON values, the one error type, the work queue, counter-based random numbers,
        // human-readable sizes and file/directory/glob arguments.
        .target(name: "Common", swiftSettings: fast),
        // Reverse-mode autograd over coarse ops with hand-written kernels; knows nothing of files or MPI.
        // oneDNN's bf16 matmul, opened at run time (dlopen): fp32 runs never need the library; the build needs its
        // header (Debian's libdnnl-dev, which Launch/setup installs).
        .target(name: "CDNNL", cSettings: [.unsafeFlags(["-O2"])], linkerSettings: [.linkedLibrary("dl")]),
        // bf16 conversions (round, to bits, widen), in C so they vectorise, with per-ISA clones.
        .target(name: "CBF16", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "Autograd", dependencies: ["CBLAS", "CDNNL", "CBF16", "Common"], swiftSettings: fast),
        // The GPT-2 model on the autograd core: the block defined once (Block.swift), its layout, graph and decoder.
        .target(name: "GPT2", dependencies: ["Autograd"], swiftSettings: fast),
        // GPT-2's byte-level BPE.
        .target(name: "Tokenizer", dependencies: ["Common"], swiftSettings: fast),
        // SHA-256 blocks with the x86 SHA extensions (dataset manifests hash every shard).
        .target(name: "CSHA256", cSettings: [.unsafeFlags(["-O3"])]),
        // Token shards (llm.c .bin format), dataset manifests, and the batch order shared by train and eval.
        .target(name: "Data", dependencies: ["Common", "CSHA256"], swiftSettings: fast),
        // MPI behind a small Communicator; knows flat Float buffers only.
        .target(name: "Distributed", dependencies: ["CMPI"], swiftSettings: fast),
        // Every file format of a run directory: HDF5 checkpoints (model and training state), metrics.h5, status.json;
        // and Hugging Face safetensors.
        .target(name: "Checkpoint", dependencies: ["CHDF5", "GPT2"], swiftSettings: fast),
        // The process and its machine: BLAS kernel and threads, the console writer, stop signals.
        .target(name: "Machine", dependencies: ["Autograd"], swiftSettings: fast),
        // What a run will cost before it runs: memory per rank (one formula) and the step-time model of `plan`.
        .target(name: "Planning", dependencies: ["GPT2", "Distributed", "Machine"], swiftSettings: fast),
        // `prepare`: reading a corpus of any size (text, JSONL, gzip) into token shards through a streaming pipeline.
        .target(name: "Prepare", dependencies: ["Tokenizer", "Data", "Machine", "CZlib"], swiftSettings: fast),
        // Benchmarks scored by log-likelihood (HellaSwag): reading and tokenizing their items.
        .target(name: "Tasks", dependencies: ["Common", "Tokenizer", "CZlib"], swiftSettings: fast),
        // The training loop: options, AdamW, the trainer, evaluation; wires model, data, communicator and checkpoints.
        .target(name: "Training", dependencies: ["GPT2", "Data", "Distributed", "Checkpoint", "Machine", "Planning", "Tasks", "Tokenizer"],
                swiftSettings: fast),
        // The command line: parses and calls.
        .executableTarget(
            name: "gpt2-dist",
            dependencies: ["Common", "Autograd", "GPT2", "Tokenizer", "Data", "Distributed", "Checkpoint", "Machine", "Planning",
                           "Prepare", "Tasks", "Training", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: fast
        ),
        .testTarget(name: "GPT2DistTests", dependencies: ["Common", "Autograd", "GPT2", "Data", "Checkpoint", "Machine", "Planning",
                                                          "Prepare", "Tasks", "Training", "Distributed", "Tokenizer"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Data"]),
    ],
    // The kernels pass raw buffers between threads by design; Swift 5 mode keeps that free of Sendable ceremony.
    swiftLanguageModes: [.v5]
)
