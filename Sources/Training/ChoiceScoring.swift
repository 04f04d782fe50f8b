import Autograd
import Common
import Distributed
import Foundation
import GPT2
import Tasks

/// Scores multiple-choice items by log-likelihood, as lm-evaluation-harness does: for each continuation, the summed
/// log-probability of its tokens given the context (context + continuation cut to the last context_length + 1 tokens).
/// acc: the argmax of the sum is the gold continuation; acc_norm: the argmax of the sum divided by the
/// continuation's length in characters.
///
/// Each (item, continuation) is one row of a forward pass; rows go by length in batches of `rows`, through a graph for
/// the batch's longest row rounded up to 32 positions (so short rows do not pay for the longest). The graphs stop at
/// the final LayerNorm (`GPT2Graph.Mode.features`): the tied head runs only at the positions that predict a
/// continuation token.
public final class ChoiceScorer {
    public let model: GPT2Model
    public let rows: Int
    let precision: MatmulPrecision
    private var graphs: [Int: GPT2Graph] = [:]
    /// Head scratch: the features of up to `chunk` scored positions, and their logits.
    private let chunk = 256
    private let selected: FloatBuffer, logits: FloatBuffer

    public init(model: GPT2Model, rows: Int = 8, precision: MatmulPrecision = .fp32) {
        self.model = model; self.rows = rows; self.precision = precision
        selected = FloatBuffer(count: chunk * model.config.embDim)
        logits = FloatBuffer(count: chunk * model.config.vocabSize)
    }

    public struct Result: Sendable, Equatable {
        public var items = 0, correct = 0, correctNormalized = 0
        public var seconds = 0.0
        public var acc: Double { items > 0 ? Double(correct) / Double(items) : .nan }
        public var accNorm: Double { items > 0 ? Double(correctNormalized) / Double(items) : .nan }
    }

    /// One row: its input tokens, and which of its positions predict which continuation tokens.
    struct Row { let inputs: [Int32]; let firstScored: Int; let targets: [Int32] }

    /// The harness's row for a context and continuation: the last context_length + 1 tokens of both, input all but
    /// the last, the continuation's tokens predicted at the last len(continuation) positions.
    func row(context: [Int32], continuation: [Int32]) -> Row {
        let all = Array((context + continuation).suffix(model.config.contextLength + 1))
        let inputs = Array(all.dropLast())
        let scored = min(continuation.count, inputs.count)
        return Row(inputs: inputs, firstScored: inputs.count - scored, targets: Array(continuation.suffix(scored)))
    }

    /// The summed log-probability of every continuation of every item: [item][continuation].
    public func logLikelihoods(_ items: [ChoiceItem]) -> [[Double]] {
        let rowsInOrder = items.flatMap { item in item.continuations.map { row(context: item.context, continuation: $0) } }
        // Batches of rows of similar length: sorted by length (ties by order), summed back in item order.
        let order = rowsInOrder.indices.sorted { (rowsInOrder[$0].inputs.count, $0) < (rowsInOrder[$1].inputs.count, $1) }
        let all = order.map { rowsInOrder[$0] }
        var sums = [Double](repeating: 0, count: all.count)
        var start = 0, bf16CopyIsCurrent = false  // (bf16: rounded once; the weights do not change while scoring)
        while start < all.count {
            let batch = Array(all[start..<min(start + rows, all.count)])
            let longest = batch.map(\.inputs.count).max()!
            let T = min(model.config.contextLength, (longest + 31) / 32 * 32)
            let graph = self.graph(seqLen: T)
            let tokens = graph.inputs.pointer
            for r in 0..<rows {
                for t in 0..<T { tokens[r * T + t] = r < batch.count && t < batch[r].inputs.count ? batch[r].inputs[t] : 0 }
            }
            graph.forward(training: false, bf16CopyIsCurrent: bf16CopyIsCurrent)
            bf16CopyIsCurrent = true
            // The scored positions of this batch, `chunk` at a time through the head.
            var positions: [(row: Int, position: Int, target: Int32)] = []
            for (r, row) in batch.enumerated() {
                for (k, target) in row.targets.enumerated() { positions.append((r, row.firstScored + k, target)) }
            }
            for c0 in stride(from: 0, to: positions.count, by: chunk) {
                let part = positions[c0..<min(c0 + chunk, positions.count)]
                let logProbs = headLogProbabilities(graph: graph, positions: part.map { $0.row * T + $0.position }, targets: part.map(\.target))
                for (p, lp) in zip(part, logProbs) { sums[start + p.row] += lp }
            }
            start += batch.count
        }
        var inItemOrder = [Double](repeating: 0, count: sums.count)
        for (k, original) in order.enumerated() { inItemOrder[original] = sums[k] }
        var out: [[Double]] = [], next = 0
        for item in items {
            out.append(Array(inItemOrder[next..<(next + item.continuations.count)]))
            next += item.continuations.count
        }
        return out
    }

    /// log p(target) at each position (an index into the graph's batch × seqLen features).
    func headLogProbabilities(graph: GPT2Graph, positions: [Int], targets: [Int32]) -> [Double] {
        let C = model.config.embDim, V = model.config.vocabSize, n = positions.count
        let features = graph.features.data, sel = selected.pointer, out = logits.pointer
        for (k, p) in positions.enumerated() { memcpy(sel + k * C, features + p * C, C * 4) }
        BLAS.gemm(.none, .transpose, m: n, n: V, k: C, a: sel, lda: C, b: model.parameters.tensor("wte").data, ldb: C,
                  beta: 0, c: out, ldc: V)
        var result = [Double](repeating: 0, count: n)
        result.withUnsafeMutableBufferPointer { r in
            let results = r.baseAddress!
            Parallel.chunks(n, costPerItem: V * 2) { _, ks in
                for k in ks {
                    let row = out + k * V
                    results[k] = Double(row[Int(targets[k])]) - Double(Kernels.logSumExp(row, V))
                }
            }
        }
        return result
    }

    /// This rank's part of `items` (contiguous, by rank), scored, with the counts summed over ranks.
    public func score(_ items: [ChoiceItem], comm: Communicator) -> Result {
        let t0 = Date()
        let lo = items.count * comm.rank / comm.size, hi = items.count * (comm.rank + 1) / comm.size
        let mine = Array(items[lo..<hi])
        var counts = [0.0, 0.0, 0.0]
        for (item, ll) in zip(mine, logLikelihoods(mine)) {
            counts[0] += 1
            if Self.argmax(ll) == item.gold { counts[1] += 1 }
            if Self.argmax(zip(ll, item.continuationCharacters).map { $0 / Double($1) }) == item.gold { counts[2] += 1 }
        }
        comm.allReduceSum(&counts)
        return Result(items: Int(counts[0]), correct: Int(counts[1]), correctNormalized: Int(counts[2]), seconds: Date().timeIntervalSince(t0))
    }

    /// The first index of the largest value (numpy's argmax, as the harness uses).
    public static func argmax(_ x: [Double]) -> Int { x.indices.max { x[$0] < x[$1] || (x[$0] == x[$1] && $0 > $1) }! }

    /// The graph for `seqLen` positions, built the first time (its activations stay for later batches).
    func graph(seqLen: Int) -> GPT2Graph {
        if let g = graphs[seqLen] { return g }
        let g = GPT2Graph(model: model, batch: rows, seqLen: seqLen, mode: .features, precision: precision)
        graphs[seqLen] = g
        return g
    }
}
