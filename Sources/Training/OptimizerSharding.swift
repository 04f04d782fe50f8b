import Autograd
import Distributed
import Foundation

/// Which floats of the flat parameter buffer each rank's AdamW state covers: everything (plain data
/// parallelism), or with ZeRO-1 one part of every gradient bucket: bucket b is cut into N consecutive parts
/// (`BucketedAllReduce.parts`), and part q is rank q's. A rank's state stores its parts back to back, in buffer
/// order.
///
/// Why every bucket is cut, not the buffer into N blocks: a bucket inside one rank's block is reduce-scattered
/// and all-gathered in one direction only (the other ranks send, the owner only receives), at half a duplex
/// link's rate. Cut across all ranks, each bucket's ring keeps every link busy both ways (measured on 2 simulated
/// nodes at 1 Gbit/s, 124M: see the README's scaling section).
struct OptimizerSharding {
    let ranks: Int, rank: Int, sharded: Bool
    /// The buckets the state is cut along: the reducer's (sharded), or the whole buffer as one.
    let buckets: [Range<Int>]
    /// This rank's part of each bucket (flat offsets), and where that part starts in the rank's state.
    private let myParts: [Range<Int>]
    private let localStarts: [Int]
    /// This rank's parts in buffer order (empty ones left out).
    let mine: [Range<Int>]
    var ownedCount: Int { mine.reduce(0) { $0 + $1.count } }

    init(schedule: BucketSchedule, total: Int, ranks: Int, rank: Int, sharded: Bool) {
        self.ranks = ranks; self.rank = rank; self.sharded = sharded
        buckets = sharded ? schedule.buckets.map(\.range) : [0..<total]
        let parts = buckets.map { b in
            guard sharded else { return b }
            let (counts, offsets) = BucketedAllReduce.parts(ofBucket: b.count, ranks: ranks)
            return (b.lowerBound + offsets[rank])..<(b.lowerBound + offsets[rank] + counts[rank])
        }
        var starts = [Int](repeating: 0, count: parts.count), next = 0
        for b in parts.indices.sorted(by: { parts[$0].lowerBound < parts[$1].lowerBound }) {
            starts[b] = next
            next += parts[b].count
        }
        myParts = parts
        localStarts = starts
        mine = parts.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
    }

    /// (Sharded.) For each bucket that tensor `e` touches: every rank's count of e's floats in its part of that bucket and
    /// their offsets within e, and where this rank's floats start in its state.
    private func pieces(of e: ParameterEntry) -> [(counts: [Int], displacements: [Int], local: Int)] {
        let tensor = e.offset..<(e.offset + e.count)
        return buckets.indices.compactMap { b in
            let bucket = buckets[b]
            guard bucket.overlaps(tensor) else { return nil }
            let (partCounts, partOffsets) = BucketedAllReduce.parts(ofBucket: bucket.count, ranks: ranks)
            var counts: [Int] = [], displacements: [Int] = []
            for q in partCounts.indices {
                let lo = max(bucket.lowerBound + partOffsets[q], tensor.lowerBound)
                let hi = min(bucket.lowerBound + partOffsets[q] + partCounts[q], tensor.upperBound)
                counts.append(max(0, hi - lo))
                displacements.append(max(0, min(lo, tensor.upperBound) - tensor.lowerBound))
            }
            let local = localStarts[b] + max(0, tensor.lowerBound - myParts[b].lowerBound)
            return (counts, displacements, local)
        }
    }

    /// Tensor `e` of the optimizer state `local`, assembled on rank 0 (nil elsewhere).
    func gather(_ e: ParameterEntry, local: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                comm: Communicator) -> UnsafePointer<Float>? {
        guard sharded else { return comm.isRoot ? local + e.offset : nil }
        for p in pieces(of: e) {
            comm.gather(local + p.local, count: p.counts[rank], into: comm.isRoot ? scratch : nil,
                        counts: p.counts, displacements: p.displacements)
        }
        return comm.isRoot ? UnsafePointer(scratch) : nil
    }

    /// The inverse: tensor `e` (valid in `full` on rank 0) distributed into every rank's `local` state.
    func scatter(_ e: ParameterEntry, full: UnsafeMutablePointer<Float>, local: UnsafeMutablePointer<Float>, comm: Communicator) {
        guard sharded else {
            comm.broadcast(full, count: e.count)
            memcpy(local + e.offset, full, e.count * 4)
            return
        }
        for p in pieces(of: e) {
            comm.scatter(comm.isRoot ? UnsafePointer(full) : nil, counts: p.counts, displacements: p.displacements,
                         into: local + p.local, count: p.counts[rank])
        }
    }
}
