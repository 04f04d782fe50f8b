import Autograd
import Checkpoint
import Common
import Data
import Distributed
import Foundation
import GPT2
import Machine

/// Mean next-token cross-entropy over `batches` consecutive batches of the shared batch order
/// (batch s starts at token (s mod M)·B·T). Rows of each batch are split over ranks as in training
/// and run through `graph` (micro-batch rows at a time, dropout off); the mean is over all B·T·batches positions.
/// `bf16CopyIsCurrent`: as `GPT2Graph.forward` (either way, the copy is rounded at most once: the weights do not change
/// while evaluating).
public func evaluateLoss(graph: GPT2Graph, data: TokenDataset, batchSize: Int, seqLen: Int, batches: Int,
                         comm: Communicator, bf16CopyIsCurrent: Bool = false) throws -> Double {
    let order = try BatchOrder(tokenCount: data.count, batchSize: batchSize, seqLen: seqLen)
    let rowsPerRank = batchSize / comm.size, micro = graph.batch
    precondition(batchSize % comm.size == 0 && rowsPerRank % micro == 0)
    var total = [0.0]
    for s in 0..<batches {
        for k in 0..<(rowsPerRank / micro) {
            let first = comm.rank * rowsPerRank + k * micro
            order.fill(data, step: s, firstRow: first, rows: micro, inputs: graph.inputs.pointer, targets: graph.targets.pointer)
            graph.forward(step: s, rowOffset: first, training: false, bf16CopyIsCurrent: bf16CopyIsCurrent || s + k > 0)
            total[0] += graph.lossSum
        }
    }
    comm.allReduceSum(&total)
    return total[0] / Double(batches * batchSize * seqLen)
}

/// `gpt2-dist eval`: a checkpoint's mean loss on token data, in training's batch order, optionally beside count
/// baselines from a training split.
public struct Evaluation {
    public let model: GPT2Model
    /// The checkpoint's step.
    public let step: Int

    /// `checkpoint`: a checkpoint file, a `latest` pointer or a run directory (its newest complete checkpoint).
    public init(checkpoint: String) throws {
        (model, step) = try ModelFile.load(path: TrainCheckpoint.resolve(checkpoint))
    }

    public struct Report {
        public var loss = 0.0, batches = 0, spans = 0, seconds = 0.0
        /// The count models' losses on the same positions, and the training tokens they were counted on.
        public var unigram: Double?, bigram: Double?, baselineTrainTokens: Int?
    }

    /// The loss over `batches` batches (0: every span once), rows split over the ranks of `comm`; the baselines
    /// (rank 0 only) when `baselines` names training tokens.
    public func run(tokens: TokenDataset, batchSize: Int, seqLen: Int, batches: Int, baselines: String?,
                    precision: MatmulPrecision = .fp32, comm: Communicator) throws -> Report {
        guard batches >= 0 else { throw GPT2DistError(.usage, "--batches must be 0 (all) or a positive integer, got \(batches)") }
        guard batchSize > 0, batchSize % comm.size == 0 else {
            throw GPT2DistError(.usage, "--batch-size \(batchSize) is not divisible by the number of ranks (\(comm.size))")
        }
        guard seqLen > 0, seqLen <= model.config.contextLength else {
            throw GPT2DistError(.usage, "--seq-len \(seqLen) must be in 1...\(model.config.contextLength) (context_length)")
        }
        if precision == .bf16 { _ = try BF16Engine.choose() }
        let order = try BatchOrder(tokenCount: tokens.count, batchSize: batchSize, seqLen: seqLen)
        let graph = GPT2Graph(model: model, batch: batchSize / comm.size, seqLen: seqLen, mode: .evaluate, precision: precision)
        var report = Report()
        report.batches = batches == 0 ? order.spans : batches
        report.spans = order.spans
        let t0 = Runtime.now()
        report.loss = try evaluateLoss(graph: graph, data: tokens, batchSize: batchSize, seqLen: seqLen, batches: report.batches, comm: comm)
        report.seconds = Runtime.now() - t0
        if let b = baselines, comm.isRoot {
            let counts = CountBaselines(train: try TokenDataset(spec: b, vocabSize: model.config.vocabSize, preferring: "train"),
                                        vocabSize: model.config.vocabSize)
            let l = try counts.losses(data: tokens, batchSize: batchSize, seqLen: seqLen, batches: report.batches)
            report.unigram = l.unigram; report.bigram = l.bigram; report.baselineTrainTokens = counts.trainTokens
        }
        return report
    }
}

/// Count-based reference models from a training split, scored on the same positions as the model: a unigram
/// (add-one smoothed over the vocabulary) and a bigram interpolated with it, 0.7 · c(prev, next) / c(prev) +
/// 0.3 · unigram(next) (the unigram alone after a token never seen in training). They tell how far the model
/// has got beyond token frequencies and one token of context.
public struct CountBaselines {
    public let vocabSize: Int
    public let trainTokens: Int
    private var unigram: [Int]
    private var following: [Int]            // c(prev) as a predecessor
    private var bigram: [UInt32: Int] = [:] // (prev << 16 | next) -> count

    public init(train: TokenDataset, vocabSize: Int) {
        self.vocabSize = vocabSize
        unigram = [Int](repeating: 0, count: vocabSize)
        following = [Int](repeating: 0, count: vocabSize)
        let n = train.count
        trainTokens = n
        var chunk = [Int32](repeating: 0, count: 1 << 20)
        var previous: Int32 = -1
        var start = 0
        while start < n {
            let m = min(chunk.count, n - start)
            chunk.withUnsafeMutableBufferPointer { train.copy(from: start, count: m, into: $0.baseAddress!) }
            for i in 0..<m {
                let t = chunk[i]
                unigram[Int(t)] += 1
                if previous >= 0 {
                    following[Int(previous)] += 1
                    bigram[UInt32(previous) << 16 | UInt32(t), default: 0] += 1
                }
                previous = t
            }
            start += m
        }
    }

    public func unigramProbability(_ t: Int32) -> Double {
        Double(unigram[Int(t)] + 1) / Double(trainTokens + vocabSize)
    }

    public func bigramProbability(_ previous: Int32, _ t: Int32) -> Double {
        let u = unigramProbability(t)
        let c = following[Int(previous)]
        guard c > 0 else { return u }
        return 0.7 * Double(bigram[UInt32(previous) << 16 | UInt32(t)] ?? 0) / Double(c) + 0.3 * u
    }

    /// Mean cross-entropy (nats) of both models over the positions `evaluateLoss` scores: for batch s, targets
    /// [start + 1, start + 1 + B·T) with their preceding tokens as context.
    public func losses(data: TokenDataset, batchSize: Int, seqLen: Int, batches: Int) throws -> (unigram: Double, bigram: Double) {
        let order = try BatchOrder(tokenCount: data.count, batchSize: batchSize, seqLen: seqLen)
        let n = batchSize * seqLen
        var inputs = [Int32](repeating: 0, count: n), targets = inputs
        var uni = 0.0, bi = 0.0
        for s in 0..<batches {
            inputs.withUnsafeMutableBufferPointer { i in
                targets.withUnsafeMutableBufferPointer { t in
                    order.fill(data, step: s, firstRow: 0, rows: batchSize, inputs: i.baseAddress!, targets: t.baseAddress!)
                }
            }
            for k in 0..<n {
                uni -= log(unigramProbability(targets[k]))
                bi -= log(bigramProbability(inputs[k], targets[k]))
            }
        }
        return (uni / Double(batches * n), bi / Double(batches * n))
    }
}
