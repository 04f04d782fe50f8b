import Autograd
import Distributed
import Foundation

/// Which part of the flat parameter buffer each rank's AdamW state covers: everything (plain data
/// parallelism), or with ZeRO-1 one contiguous block of ceil(P / N) floats per rank (the last one shorter;
/// the buffers carry zero padding up to N blocks so reduce-scatter and all-gather see equal blocks).
struct OptimizerSharding {
    let total: Int, ranks: Int, rank: Int, sharded: Bool

    var blockSize: Int { sharded ? (total + ranks - 1) / ranks : total }
    var paddedCount: Int { sharded ? blockSize * ranks : total }
    func range(of r: Int) -> Range<Int> { sharded ? min(r * blockSize, total)..<min((r + 1) * blockSize, total) : 0..<total }
    var mine: Range<Int> { range(of: rank) }

    /// Per-rank counts and offsets (within the tensor) of tensor `e` held by each rank's block.
    func pieces(of e: ParameterEntry) -> (counts: [Int], displacements: [Int]) {
        let (counts, offsets) = BucketedAllReduce.split(e.offset..<(e.offset + e.count), blockSize: blockSize, ranks: ranks)
        return (counts, offsets)
    }

    /// Tensor `e` of the optimizer state `local` (covering `mine`), assembled on rank 0 (nil elsewhere).
    func gather(_ e: ParameterEntry, local: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                comm: Communicator) -> UnsafePointer<Float>? {
        guard sharded else { return comm.isRoot ? local + e.offset : nil }
        let (counts, displacements) = pieces(of: e)
        let start = e.offset + displacements[rank] - mine.lowerBound
        comm.gather(local + max(0, start), count: counts[rank], into: comm.isRoot ? scratch : nil,
                    counts: counts, displacements: displacements)
        return comm.isRoot ? UnsafePointer(scratch) : nil
    }

    /// The inverse: tensor `e` (valid in `full` on rank 0) distributed into every rank's `local` state.
    func scatter(_ e: ParameterEntry, full: UnsafeMutablePointer<Float>, local: UnsafeMutablePointer<Float>, comm: Communicator) {
        guard sharded else {
            comm.broadcast(full, count: e.count)
            memcpy(local + e.offset, full, e.count * 4)
            return
        }
        let (counts, displacements) = pieces(of: e)
        let start = e.offset + displacements[rank] - mine.lowerBound
        comm.scatter(comm.isRoot ? UnsafePointer(full) : nil, counts: counts, displacements: displacements,
                     into: local + max(0, start), count: counts[rank])
    }
}
