import Distributed
import Foundation
import GPT2
import Machine

/// A model of one data-parallel training step on a CPU cluster (README, "Scaling model"), built on the trainer's own
/// bucket schedule: which gradient bytes can travel while which part of backward (or, with ZeRO-1, of the next
/// forward) still computes.
///
/// step = compute + exposed communication + optimizer, where
/// - compute: forward and backward of every micro-batch. Either measured on this machine, op by op, by running the
///   model's tape (`Timeline.measure`), or counted: FLOPs of each op / the per-rank FLOP rate (`Timeline.counted`).
/// - communication: the buckets of `BucketSchedule(config.gradientRegions)`, one after another on the communication
///   thread, each starting when backward has finished its last region and the previous bucket is done. A bucket of
///   b bytes takes a ring all-reduce inside each node (shared memory) and across the k nodes:
///   2(k−1)/k · b / bandwidth + 2(k−1) · latency (ZeRO-1: reduce-scatter, half of that). What is still travelling
///   when backward ends is exposed, plus the token embedding's rows (TokenGradientExchange), summed after backward.
///   ZeRO-1's all-gather (the other half) runs in the reverse order during the next forward, which waits for each
///   region it is about to use; the rows of wte that the embedding reads go ahead of it, like the trainer's.
/// - the CPU time of moving those bytes (`cpuSecondsPerByte`), added to compute: the communication thread runs on
///   the rank's own cores.
/// - optimizer: AdamW streams p, g, m, v (28 bytes per parameter it updates) at the per-rank memory bandwidth.
/// - memory per rank: `MemoryEstimate`, the formula `info` and train's startup prediction use (rank 0's, the largest).
/// Assumptions: identical nodes, no stragglers, data loading free, the network full duplex at `networkBandwidth`
/// per node in each direction and shared by that node's ranks.
public struct ScalingModel {
    public var flopsPerRank: Double          // sustained FLOP/s of one rank (for counted compute)
    public var memoryBandwidthPerRank: Double // bytes/s for the optimizer's streaming update
    public var sharedMemoryBandwidth: Double  // bytes/s of an intra-node all-reduce ring
    public var networkBandwidth: Double       // bytes/s per node and direction (one NIC)
    public var latency: Double                // seconds per message hop
    public var bucketBytes: Double = BucketSchedule.defaultBucketMb * 1_048_576
    /// CPU seconds a rank spends per byte it sends or receives (TCP copies, the reduction's adds), taken from its
    /// compute because the communication thread shares the rank's cores: 0.9 ns measured over veth here (124M at
    /// np 2: 4.84 s of forward+backward alone, 5.75 s while 1 GB per step went in and out). Real NICs with
    /// segmentation offload cost less.
    public var cpuSecondsPerByte = ScalingModel.defaultCpuSecondsPerByte
    public static let defaultCpuSecondsPerByte = 0.9e-9

    public init(flopsPerRank: Double, memoryBandwidthPerRank: Double, sharedMemoryBandwidth: Double,
                networkBandwidth: Double, latency: Double) {
        self.flopsPerRank = flopsPerRank; self.memoryBandwidthPerRank = memoryBandwidthPerRank
        self.sharedMemoryBandwidth = sharedMemoryBandwidth; self.networkBandwidth = networkBandwidth; self.latency = latency
    }

    /// Seconds of one micro-batch's compute per gradient region (indexed as `config.gradientRegions`): `backward[k]`
    /// is the backward time from the previous region's completion to region k's (completion order), `forward[k]`
    /// the forward time of the ops that read region k (forward runs the regions in reverse order).
    public struct Timeline {
        public var forward: [Double], backward: [Double]

        public init(forward: [Double], backward: [Double]) {
            self.forward = forward
            self.backward = backward
        }

        public var forwardTotal: Double { forward.reduce(0, +) }
        public var backwardTotal: Double { backward.reduce(0, +) }

        /// Counted: each op's FLOPs (`BlockOp.flops`; the head 2VC forward, 4VC backward) at `flopsPerRank`, charged
        /// as `measure` charges time: an op's forward to the first region it or an op after it reads, its backward to
        /// the first region it or an op before it completes (attention: forward to attn.c_proj, backward to attn.c_attn).
        public static func counted(config c: GPT2Config, microBatch: Int, seqLen: Int, flopsPerRank: Double) -> Timeline {
            let region = c.gradientRegionIndex, V = Double(c.vocabSize), C = Double(c.embDim)
            // The model's ops in forward order: FLOPs per token and the region each completes.
            var ops: [(forward: Double, backward: Double, region: Int?)] = [(0, 0, region["wpe"])]
            for l in 0..<c.nLayers {
                for op in BlockOp.gpt2 {
                    let f = op.flops(c, seqLen)
                    ops.append((f.forward, f.backward, region["h.\(l).\(op.name)"]))
                }
            }
            ops += [(0, 0, region["ln_f"]), (2 * V * C, 4 * V * C, region["wte"])]
            let perFLOP = Double(microBatch * seqLen) / flopsPerRank
            var forward = [Double](repeating: 0, count: region.count), backward = forward
            var pending = 0.0
            for op in ops {
                pending += op.forward * perFLOP
                if let k = op.region { forward[k] += pending; pending = 0 }
            }
            pending = 0
            for op in ops.reversed() {
                pending += op.backward * perFLOP
                if let k = op.region { backward[k] += pending; pending = 0 }
            }
            return Timeline(forward: forward, backward: backward)
        }

        /// Measured: one micro-batch's forward and backward on this machine, op by op; of `runs` runs the median (a
        /// training step's time is typical, not best: a shared host wanders by ±10%).
        public static func measure(config: GPT2Config, microBatch: Int, seqLen: Int, recompute: Bool, runs: Int = 3) -> Timeline {
            let model = GPT2Model(config: config)
            model.initialize(seed: 1)
            let graph = GPT2Graph(model: model, batch: microBatch, seqLen: seqLen, mode: .train, recompute: recompute)
            for i in 0..<(microBatch * seqLen) {
                graph.inputs.pointer[i] = Int32(i * 7919 % config.vocabSize)
                graph.targets.pointer[i] = Int32(i * 104_729 % config.vocabSize)
            }
            let regions = config.gradientRegions.count
            graph.forward(step: 0, seed: 1)  // warm-up: first touches of the activations and the BLAS buffers
            graph.defersTokenGradient = true
            graph.backward()
            var all: [Timeline] = []
            for _ in 0..<max(1, runs) {
                var forward = [Double](repeating: 0, count: regions), backward = forward
                var pending = 0.0  // forward time of ops that read no region: charged to the next op that does
                graph.tape.opSeconds = [Double](repeating: 0, count: graph.tape.ops.count)
                graph.forward(step: 0, seed: 1)
                for (i, t) in graph.tape.opSeconds!.enumerated() {
                    pending += t
                    if let k = graph.tape.completes[i] { forward[k] += pending; pending = 0 }
                }
                forward[0] += pending
                model.parameters.zeroGradients()
                graph.defersTokenGradient = true
                var last = Runtime.now()
                graph.backward(progress: { k in
                    let now = Runtime.now()
                    backward[k] += now - last
                    last = now
                })
                graph.tape.opSeconds = nil
                all.append(Timeline(forward: forward, backward: backward))
            }
            return all.sorted { $0.forwardTotal + $0.backwardTotal < $1.forwardTotal + $1.backwardTotal }[all.count / 2]
        }
    }

    public struct Step {
        public var nodes = 0, ranks = 0
        public var compute = 0.0, communication = 0.0, exposedCommunication = 0.0, optimizer = 0.0
        public var total: Double { compute + exposedCommunication + optimizer }
        public var tokensPerSecond = 0.0, efficiency = 0.0, bytesPerRank = 0.0
    }

    /// Seconds to sum `bytes` over all ranks (ring inside each node, then across nodes); `half`: a reduce-scatter or
    /// an all-gather, half of an all-reduce's traffic.
    func collective(bytes: Double, nodes: Int, ranksPerNode: Int, half: Bool) -> Double {
        func ring(_ k: Int, _ bw: Double) -> Double {
            k <= 1 ? 0 : (half ? 1 : 2) * (Double(k - 1) / Double(k) * bytes / bw + Double(k - 1) * latency)
        }
        // The node's ranks share its link: each sends its own share of the inter-node ring.
        return ring(ranksPerNode, sharedMemoryBandwidth) + ring(nodes, networkBandwidth / Double(ranksPerNode))
    }

    public func step(config: GPT2Config, seqLen: Int, microBatch: Int, accumulation: Int, nodes: Int, ranksPerNode: Int,
                     zero: Bool, activationBytes: Double, timeline measured: Timeline? = nil) -> Step {
        let ranks = nodes * ranksPerNode
        let n = Double(config.parameterCount)
        let tokens = microBatch * seqLen
        let line = measured ?? Timeline.counted(config: config, microBatch: microBatch, seqLen: seqLen, flopsPerRank: flopsPerRank)
        precondition(line.backward.count == config.gradientRegions.count, "a timeline of another model")
        var s = Step()
        s.nodes = nodes; s.ranks = ranks
        s.compute = Double(accumulation) * (line.forwardTotal + line.backwardTotal)
        let computeAlone = s.compute  // one rank on its own moves no gradient bytes
        if ranks > 1 {
            let schedule = BucketSchedule(regions: config.gradientRegions, bucketFloats: Int(bucketBytes / 4))
            func time(_ floats: Int) -> Double {
                collective(bytes: 4 * Double(floats), nodes: nodes, ranksPerNode: ranksPerNode, half: zero)
            }
            // Backward of the last micro-batch: each bucket leaves when its regions are final and the thread is free.
            var ready = [Double](repeating: 0, count: schedule.regions.count), clock = 0.0
            for k in 0..<ready.count { clock += line.backward[k]; ready[k] = clock }
            var free = 0.0
            for b in schedule.buckets {
                free = max(free, ready[b.region]) + time(b.range.count)
                s.communication += time(b.range.count)
            }
            // The token embedding's rows: at most one row per position of the global micro-batch, all-reduced.
            let rows = Double(min(config.vocabSize, ranks * tokens) * config.embDim) * 4
            let rowsTime = collective(bytes: rows, nodes: nodes, ranksPerNode: ranksPerNode, half: false)
            s.communication += rowsTime
            s.exposedCommunication = max(0, free - line.backwardTotal) + rowsTime
            // Each rank sends and receives 2(k-1)/k of the gradient (ring all-reduce, or reduce-scatter + all-gather).
            s.compute += cpuSecondsPerByte * 2 * 2 * Double(ranks - 1) / Double(ranks) * 4 * n
            if zero {
                // The all-gather, in reverse schedule order, during the next forward (after the wte rows it reads first).
                var clockGather = rowsTime, landed: [Double] = []
                for b in schedule.buckets.reversed() {
                    clockGather += time(b.range.count)
                    landed.append(clockGather)
                    s.communication += time(b.range.count)
                }
                let needed = schedule.gathersNeeded
                var t = rowsTime
                for k in (0..<schedule.regions.count).reversed() {
                    if needed[k] > 0 { t = max(t, landed[needed[k] - 1]) }
                    t += line.forward[k]
                }
                s.exposedCommunication += t - line.forwardTotal
            }
        }
        s.optimizer = 28 * n / Double(zero ? ranks : 1) / memoryBandwidthPerRank
        let tokensPerRank = Double(tokens * accumulation)
        s.tokensPerSecond = tokensPerRank * Double(ranks) / s.total
        let single = tokensPerRank / (computeAlone + 28 * n / memoryBandwidthPerRank)
        s.efficiency = s.tokensPerSecond / (single * Double(ranks))
        s.bytesPerRank = MemoryEstimate(config: config, microBatch: microBatch, seqLen: seqLen, ranks: ranks, zero: zero,
                                        recompute: false, activationBytes: Int(activationBytes),
                                        bucketMb: bucketBytes / 1_048_576).rootTotal
        return s
    }
}
