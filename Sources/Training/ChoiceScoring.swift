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
/// An item's continuations share its context, so it is computed once: the item is one packed row, [context |
/// continuation 1 | ... | continuation n] (each without its last token, which is only predicted), in which each
/// continuation sees the context and itself, with the position ids it would have after the context alone
/// (`PackedRows`). An item whose packed row would not fit in context_length takes one row per continuation, as the
/// harness builds them. Rows go by length in batches of `rows`, through a graph for the batch's longest row rounded up
/// to 32 positions (so short rows do not pay for the longest). The graphs stop at the final LayerNorm
/// (`GPT2Graph.Mode.features`): the tied head runs only at the positions that predict a continuation token.
public final class ChoiceScorer {
    public let model: GPT2Model
    public let rows: Int
    let precision: MatmulPrecision
    private var graphs: [Int: (graph: GPT2Graph, packing: PackedRows)] = [:]
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

    /// One row of a forward pass: its input tokens; for a packed row, the context's length and each continuation's
    /// positions; and which position predicts which token of which continuation (`sum`: its index among all the
    /// items' continuations).
    struct Row {
        let inputs: [Int32]
        var packed: (prefix: Int, segments: [Int])? = nil
        let scored: [(position: Int, target: Int32, sum: Int)]
    }

    /// The harness's row for a context and continuation: the last context_length + 1 tokens of both, input all but
    /// the last, the continuation's tokens predicted at the last len(continuation) positions.
    func row(context: [Int32], continuation: [Int32], sum: Int) -> Row {
        let all = Array((context + continuation).suffix(model.config.contextLength + 1))
        let inputs = Array(all.dropLast())
        let scored = min(continuation.count, inputs.count), first = inputs.count - scored
        return Row(inputs: inputs, scored: continuation.suffix(scored).enumerated().map { (first + $0, $1, sum) })
    }

    /// The item as one packed row (continuation k's first token predicted at the context's last position, its j-th
    /// at its own (j-1)-th), or nil when it does not fit in context_length (or has an empty context or continuation).
    func packedRow(_ item: ChoiceItem, firstSum: Int) -> Row? {
        let lc = item.context.count
        guard lc > 0, item.continuations.allSatisfy({ !$0.isEmpty }),
              lc + item.continuations.reduce(0, { $0 + $1.count - 1 }) <= model.config.contextLength else { return nil }
        var inputs = item.context, segments: [Int] = [], scored: [(position: Int, target: Int32, sum: Int)] = []
        for (k, continuation) in item.continuations.enumerated() {
            let start = inputs.count
            inputs += continuation.dropLast()
            segments.append(continuation.count - 1)
            for (j, target) in continuation.enumerated() { scored.append((j == 0 ? lc - 1 : start + j - 1, target, firstSum + k)) }
        }
        return Row(inputs: inputs, packed: (lc, segments), scored: scored)
    }

    /// The summed log-probability of every continuation of every item: [item][continuation].
    /// `packing` false: one row per continuation for every item (also `GPT2DIST_TASK_PACKING=0`, to measure what
    /// packing saves).
    public func logLikelihoods(_ items: [ChoiceItem], packing: Bool = ProcessInfo.processInfo.environment["GPT2DIST_TASK_PACKING"] != "0") -> [[Double]] {
        var all: [Row] = [], firstSum = 0
        for item in items {
            if packing, let packed = packedRow(item, firstSum: firstSum) {
                all.append(packed)
            } else {
                all += item.continuations.enumerated().map { row(context: item.context, continuation: $1, sum: firstSum + $0) }
            }
            firstSum += item.continuations.count
        }
        // Batches of rows of similar length.
        all = all.enumerated().sorted { ($0.element.inputs.count, $0.offset) < ($1.element.inputs.count, $1.offset) }.map(\.element)
        var sums = [Double](repeating: 0, count: firstSum)
        var start = 0, bf16CopyIsCurrent = false  // (bf16: rounded once; the weights do not change while scoring)
        while start < all.count {
            let batch = Array(all[start..<min(start + rows, all.count)])
            let longest = batch.map(\.inputs.count).max()!
            let T = min(model.config.contextLength, (longest + 31) / 32 * 32)
            let (graph, packing) = self.graph(seqLen: T)
            let tokens = graph.inputs.pointer
            for r in 0..<rows {
                for t in 0..<T { tokens[r * T + t] = r < batch.count && t < batch[r].inputs.count ? batch[r].inputs[t] : 0 }
                if let p = r < batch.count ? batch[r].packed : nil { packing.set(row: r, prefixLength: p.prefix, segmentLengths: p.segments) } else {
                    packing.setPlain(row: r)
                }
            }
            graph.packedRows = batch.contains { $0.packed != nil } ? packing : nil
            graph.forward(training: false, bf16CopyIsCurrent: bf16CopyIsCurrent)
            bf16CopyIsCurrent = true
            // The scored positions of this batch, `chunk` at a time through the head.
            let positions = batch.enumerated().flatMap { r, row in row.scored.map { (r * T + $0.position, $0.target, $0.sum) } }
            for c0 in stride(from: 0, to: positions.count, by: chunk) {
                let part = positions[c0..<min(c0 + chunk, positions.count)]
                let logProbs = headLogProbabilities(graph: graph, positions: part.map(\.0), targets: part.map(\.1))
                for (p, lp) in zip(part, logProbs) { sums[p.2] += lp }
            }
            start += batch.count
        }
        var out: [[Double]] = [], next = 0
        for item in items {
            out.append(Array(sums[next..<(next + item.continuations.count)]))
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

    /// The graph for `seqLen` positions and its packing, built the first time (its activations stay for later batches).
    func graph(seqLen: Int) -> (graph: GPT2Graph, packing: PackedRows) {
        if let g = graphs[seqLen] { return g }
        let g = (GPT2Graph(model: model, batch: rows, seqLen: seqLen, mode: .features, precision: precision), PackedRows(batch: rows, seqLen: seqLen))
        graphs[seqLen] = g
        return g
    }
}
