import Autograd
import Common
import Distributed
import Foundation
import Machine

/// The token embedding's share of the tied wte gradient, summed over ranks apart from wte's dense part.
///
/// wte is both the output head and the token embedding. The head's gradient is dense (every vocabulary row) and
/// final as soon as the head's backward has run, the first third of backward; the embedding's is a scatter of
/// one row per position and comes at the very end. Holding the embedding's rows back lets wte's dense gradient
/// (31% of GPT-2 124M's gradient bytes) be reduced while the blocks are still differentiated. The rows are then
/// summed here, compactly: every rank knows every rank's tokens (the data order is a function of the step and
/// the global row), so all ranks build the same list of distinct tokens of the step, add their own rows into a
/// [distinct tokens, channels] buffer, all-reduce it (at most the global batch's positions x channels floats,
/// independent of the rank count), and add the sums into the gradient rows they keep.
final class TokenGradientExchange {
    let vocab: Int, channels: Int
    /// Token ids of every rank's last micro-batch, rank by rank (filled by the caller each step).
    let globalTokens: TokenBuffer
    let targetsScratch: TokenBuffer
    private var slot: [Int32]          // per token id: its row in `compact`, or -1
    private var distinct: [Int32] = []
    private let compact: FloatBuffer
    private(set) var seconds = 0.0

    init(vocab: Int, channels: Int, globalPositions: Int) {
        self.vocab = vocab; self.channels = channels
        globalTokens = TokenBuffer(count: globalPositions)
        targetsScratch = TokenBuffer(count: globalPositions)
        slot = [Int32](repeating: -1, count: vocab)
        distinct.reserveCapacity(min(vocab, globalPositions))
        compact = FloatBuffer(count: min(vocab, globalPositions) * channels)
    }

    /// Sums every rank's rows (this rank's: `tokens`, `rowGradient` [positions, channels]) and adds the sums to
    /// wte's rows in `gradients` (wte at flat offset `wteOffset`), only where that buffer is in `keep`
    /// (ascending ranges: the rank's parts under ZeRO-1, else everything).
    func reduce(tokens: UnsafePointer<Int32>, rowGradient: UnsafePointer<Float>, positions: Int, comm: Communicator,
                gradients: UnsafeMutablePointer<Float>, wteOffset: Int, keep: [Range<Int>]) {
        let t0 = Runtime.now()
        let C = channels
        collectDistinctTokens()
        let rows = distinct.count, sums = compact.pointer
        memset(sums, 0, rows * C * 4)
        // Threads own disjoint channel ranges, so repeated tokens never race.
        slot.withUnsafeBufferPointer { slots in
            Parallel.chunks(C, costPerItem: positions) { _, cs in
                for r in 0..<positions {
                    let d = rowGradient + r * C, s = sums + Int(slots[Int(tokens[r])]) * C
                    for c in cs { s[c] += d[c] }
                }
            }
        }
        comm.allReduceSum(sums, count: rows * C)
        for (i, t) in distinct.enumerated() {
            let lo = wteOffset + Int(t) * C
            forEachPiece(ofRow: lo, in: keep) { piece in
                for j in piece { gradients[j] += sums[i * C + j - lo] }
            }
        }
        forgetDistinctTokens()
        seconds = Runtime.now() - t0
    }

    /// ZeRO-1: the updated wte rows of `globalTokens` from the ranks that own them (`owned`: this rank's parts of
    /// the flat buffer, ascending), into every rank's `values`, so that the next forward's token embedding can run while
    /// the rest of the parameters are still being all-gathered. Each float of a row has one owner and zeros
    /// elsewhere, so the all-reduced sum is the owner's value exactly.
    func shareRows(values: UnsafeMutablePointer<Float>, wteOffset: Int, owned: [Range<Int>], comm: Communicator) {
        let C = channels
        collectDistinctTokens()
        let rows = distinct.count, sums = compact.pointer
        memset(sums, 0, rows * C * 4)
        for (i, t) in distinct.enumerated() {
            let lo = wteOffset + Int(t) * C
            forEachPiece(ofRow: lo, in: owned) { piece in
                for j in piece { sums[i * C + j - lo] = values[j] }
            }
        }
        comm.allReduceSum(sums, count: rows * C)
        for (i, t) in distinct.enumerated() { memcpy(values + wteOffset + Int(t) * C, sums + i * C, C * 4) }
        forgetDistinctTokens()
    }

    /// The flat offsets of the row starting at `start` that lie in `parts` (ascending ranges), piece by piece.
    private func forEachPiece(ofRow start: Int, in parts: [Range<Int>], _ body: (Range<Int>) -> Void) {
        var lo = 0, hi = parts.count  // the first part that ends after `start`
        while lo < hi {
            let mid = (lo + hi) / 2
            if parts[mid].upperBound <= start { lo = mid + 1 } else { hi = mid }
        }
        while lo < parts.count && parts[lo].lowerBound < start + channels {
            let a = max(start, parts[lo].lowerBound), b = min(start + channels, parts[lo].upperBound)
            if a < b { body(a..<b) }
            lo += 1
        }
    }

    /// `distinct`: the tokens of `globalTokens` in order of first appearance (the same list on every rank).
    private func collectDistinctTokens() {
        for i in 0..<globalTokens.count {
            let t = Int(globalTokens.pointer[i])
            if slot[t] < 0 { slot[t] = Int32(distinct.count); distinct.append(Int32(t)) }
        }
    }

    private func forgetDistinctTokens() {
        for t in distinct { slot[Int(t)] = -1 }
        distinct.removeAll(keepingCapacity: true)
    }
}
