import Autograd
import Distributed
import GPT2

/// Bytes one rank needs: parameters and gradients (4 + 4 B per parameter; bf16 adds the parameters' bf16 copy,
/// 2 B), AdamW m and v (8 B, or 8/N with
/// ZeRO-1), the activations of one micro-batch (counted exactly by building the training graph, which touches no
/// memory), and the runtime itself (Swift, MPI, OpenBLAS and HDF5 libraries and buffers: ~65 MiB measured here).
/// With ZeRO-1, every rank holds a receive buffer of one gradient bucket, and rank 0 a buffer of the largest tensor
/// into which checkpoints gather the AdamW state.
public struct MemoryEstimate {
    public var parameters = 0.0, gradients = 0.0, optimizer = 0.0, activations = 0.0, checkpointGather = 0.0
    /// ZeRO-1's ring reduce-scatter receives into a buffer of one bucket.
    public var communication = 0.0
    public static let runtimeOverhead = 65.0 * 1_048_576
    /// Every rank but rank 0.
    public var total: Double { parameters + gradients + optimizer + activations + communication + Self.runtimeOverhead }
    /// Rank 0, the largest.
    public var rootTotal: Double { total + checkpointGather }

    public init(config: GPT2Config, microBatch: Int, seqLen: Int, ranks: Int, zero: Bool, recompute: Bool,
                activationBytes: Int? = nil, bucketMb: Double = BucketSchedule.defaultBucketMb,
                precision: MatmulPrecision = .fp32) {
        let n = Double(config.parameterCount)
        parameters = Double(Parameters.valueBytes(count: config.parameterCount, bf16Copy: precision == .bf16))
        gradients = 4 * n
        let sharded = zero && ranks > 1
        optimizer = sharded ? 8 * (n / Double(ranks)).rounded(.up) : 8 * n
        checkpointGather = sharded ? 4 * Double(config.vocabSize * config.embDim) : 0
        communication = sharded ? min(bucketMb * 1_048_576, 4 * n) : 0
        activations = Double(activationBytes ?? GPT2Graph(model: GPT2Model(config: config), batch: microBatch,
                                                           seqLen: seqLen, mode: .train, recompute: recompute,
                                                           precision: precision).activationBytes)
    }
}
