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

        // Reverse-mode autograd over coarse ops with hand-written kernels; knows nothing of files or MPI.
        .target(name: "Autograd", dependencies: ["CBLAS"], swiftSettings: fast),
        // The GPT-2 model on the autograd core.
        .target(name: "GPT2", dependencies: ["Autograd"], swiftSettings: fast),
        // GPT-2's byte-level BPE.
        .target(name: "Tokenizer", swiftSettings: fast),
        // SHA-256 blocks with the x86 SHA extensions (dataset manifests hash every shard).
        .target(name: "CSHA256", cSettings: [.unsafeFlags(["-O3"])]),
        // Token shards (llm.c .bin format), dataset manifests, and the batch order shared by train and eval.
        .target(name: "Data", dependencies: ["Autograd", "CSHA256"], swiftSettings: fast),
        // MPI behind a small Communicator; knows flat Float buffers only.
        .target(name: "Distributed", dependencies: ["CMPI"], swiftSettings: fast),
        // HDF5 checkpoints, metrics files and Hugging Face safetensors.
        .target(name: "Checkpoint", dependencies: ["CHDF5", "GPT2"], swiftSettings: fast),
        // Wires model, data, communicator and checkpoints into the training loop.
        .target(name: "Training", dependencies: ["GPT2", "Data", "Distributed", "Checkpoint", "Tokenizer", "CZlib",
                                             .product(name: "ArgumentParser", package: "swift-argument-parser")], swiftSettings: fast),
        // The command line: parses and calls.
        .executableTarget(
            name: "gpt2-dist",
            dependencies: ["Training", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: fast
        ),
        .testTarget(name: "GPT2DistTests", dependencies: ["Autograd", "GPT2", "Data", "Checkpoint", "Training", "Distributed"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Data"]),
    ],
    // The kernels pass raw buffers between threads by design; Swift 5 mode keeps that free of Sendable ceremony.
    swiftLanguageModes: [.v5]
)
