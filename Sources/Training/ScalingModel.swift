import Foundation
import GPT2

/// An analytic model of one data-parallel training step on a CPU cluster (README, "Scaling model").
///
/// step = compute + exposed communication + optimizer, where
/// - compute = FLOPs per token (6N + 12·L·C·T) × tokens per rank / (per-rank FLOP rate);
/// - gradient all-reduce is hierarchical: a ring inside each node over shared memory, then a ring across
///   nodes: 2(k−1)/k × 4N bytes / bandwidth + 2(k−1)·latency for k nodes; backward (2/3 of compute) hides
///   it except the last bucket; with ZeRO-1 the same bytes move as reduce-scatter + all-gather, after backward;
/// - optimizer: AdamW streams p, g, m, v (28 bytes per parameter it updates) at the per-rank memory bandwidth;
/// - memory per rank: parameters + gradients (8 B/param), AdamW m and v (8 B/param, or 8/ranks with ZeRO-1),
///   activations of one micro-batch (counted from the real training graph).
/// Assumptions: identical nodes, no stragglers, data loading free, all-reduce bandwidth-bound at ~25 MB buckets.
public struct ScalingModel {
    public var flopsPerRank: Double          // sustained FLOP/s of one rank (sgemm peak × achieved MFU)
    public var memoryBandwidthPerRank: Double // bytes/s for the optimizer's streaming update
    public var sharedMemoryBandwidth: Double  // bytes/s of an intra-node all-reduce ring
    public var networkBandwidth: Double       // bytes/s per node (one NIC)
    public var latency: Double                // seconds per message hop
    public var bucketBytes: Double = 25 * 1_048_576

    public init(flopsPerRank: Double, memoryBandwidthPerRank: Double, sharedMemoryBandwidth: Double,
                networkBandwidth: Double, latency: Double) {
        self.flopsPerRank = flopsPerRank; self.memoryBandwidthPerRank = memoryBandwidthPerRank
        self.sharedMemoryBandwidth = sharedMemoryBandwidth; self.networkBandwidth = networkBandwidth; self.latency = latency
    }

    public struct Step {
        public var nodes = 0, ranks = 0
        public var compute = 0.0, communication = 0.0, exposedCommunication = 0.0, optimizer = 0.0
        public var total: Double { compute + exposedCommunication + optimizer }
        public var tokensPerSecond = 0.0, efficiency = 0.0, bytesPerRank = 0.0
    }

    public func step(config: GPT2Config, seqLen: Int, microBatch: Int, accumulation: Int, nodes: Int, ranksPerNode: Int,
                     zero: Bool, activationBytes: Double) -> Step {
        let ranks = nodes * ranksPerNode
        let n = Double(config.parameterCount), bytes = 4 * n
        var s = Step()
        s.nodes = nodes; s.ranks = ranks
        let tokensPerRank = Double(microBatch * accumulation * seqLen)
        s.compute = config.flopsPerToken(seqLen: seqLen) * tokensPerRank / flopsPerRank
        func ring(_ k: Int, _ bw: Double) -> Double {
            k <= 1 ? 0 : 2 * Double(k - 1) / Double(k) * bytes / bw + 2 * Double(k - 1) * latency
        }
        s.communication = ring(ranksPerNode, sharedMemoryBandwidth) + ring(nodes, networkBandwidth)
        if zero {
            s.exposedCommunication = s.communication  // reduce-scatter after backward, all-gather after the update
        } else {
            let lastBucket = s.communication * min(1, bucketBytes / bytes)
            s.exposedCommunication = max(lastBucket, s.communication - s.compute * 2 / 3)
        }
        s.optimizer = 28 * n / Double(zero ? ranks : 1) / memoryBandwidthPerRank
        s.tokensPerSecond = tokensPerRank * Double(ranks) / s.total
        let single = tokensPerRank / (s.compute + 28 * n / memoryBandwidthPerRank)
        s.efficiency = s.tokensPerSecond / (single * Double(ranks))
        s.bytesPerRank = 8 * n + 8 * n / Double(zero ? ranks : 1) + activationBytes
        return s
    }
}
