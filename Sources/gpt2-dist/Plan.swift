import ArgumentParser
import Foundation
import GPT2
import Training

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Project step time, tokens/s, scaling efficiency and memory per rank on 8-256 nodes.",
        discussion: """
        An analytic model (README, "Scaling model"): step = compute + exposed all-reduce + optimizer. \
        Compute uses a per-rank FLOP rate (default: measured here with --measure, else --gflops-per-rank); \
        the all-reduce is a ring inside each node (shared memory) and a ring across nodes at --network-gbps.
          gpt2-dist plan --config Configs/gpt2-1558M.json --ranks-per-node 8 --threads-per-rank 4 --network-gbps 100
          gpt2-dist plan --measure --threads-per-rank 2          # all four GPT-2 sizes, calibrated on this machine
        """
    )
    @Option(parsing: .upToNextOption, help: "Model configs (default: the four GPT-2 sizes in Configs/).") var config: [String] = []
    @Option(parsing: .upToNextOption, help: "Node counts to project.") var nodes: [Int] = [8, 16, 32, 64, 128, 256]
    @Option(help: "Ranks per node.") var ranksPerNode = 8
    @Option(help: "Threads per rank (for --measure).") var threadsPerRank = 1
    @Option(help: "Micro-batch per rank (sequences).") var microBatch = 8
    @Option(help: "Gradient accumulation steps.") var accumulation = 1
    @Option(help: "Sequence length.") var seqLen = 1024
    @Option(help: "Sustained GFLOP/s per rank (default 130: 75% MFU of one SkylakeX core measured here).") var gflopsPerRank = 130.0
    @Flag(help: "Measure sgemm here at --threads-per-rank and use 75% of it as the per-rank rate.") var measure = false
    @Option(help: "Memory bandwidth per rank for AdamW, GB/s.") var memoryGbps = 8.0
    @Option(help: "Intra-node all-reduce bandwidth, GB/s (measured here: ~4 GB/s for 2 ranks).") var sharedMemoryGbps = 4.0
    @Option(help: "Network bandwidth per node, Gbit/s.") var networkGbps = 100.0
    @Option(help: "Latency per hop, microseconds.") var latencyUs = 5.0
    @Flag(help: "AdamW state sharded (ZeRO-1).") var zero = false
    @Flag(help: "Activations recomputed in backward.") var recompute = false

    func run() throws {
        try runOrFail {
            for (flag, v) in [("ranks-per-node", ranksPerNode), ("threads-per-rank", threadsPerRank), ("micro-batch", microBatch),
                              ("accumulation", accumulation), ("seq-len", seqLen)] + nodes.map({ ("nodes", $0) }) where v <= 0 {
                throw TrainError("--\(flag) must be a positive integer, got \(v)")
            }
            for (flag, v) in [("gflops-per-rank", gflopsPerRank), ("memory-gbps", memoryGbps), ("shared-memory-gbps", sharedMemoryGbps),
                              ("network-gbps", networkGbps)] where !(v.isFinite && v > 0) {
                throw TrainError("--\(flag) must be a finite number > 0, got \(v)")
            }
            guard latencyUs.isFinite, latencyUs >= 0 else { throw TrainError("--latency-us must be a finite number >= 0, got \(latencyUs)") }
            var rate = gflopsPerRank * 1e9
            if measure {
                Runtime.setThreads(threadsPerRank)
                rate = 0.75 * Runtime.measureSgemmPeak(seconds: 1)
            }
            let m = ScalingModel(flopsPerRank: rate, memoryBandwidthPerRank: memoryGbps * 1e9,
                                 sharedMemoryBandwidth: sharedMemoryGbps * 1e9, networkBandwidth: networkGbps * 1e9 / 8,
                                 latency: latencyUs * 1e-6)
            let paths = config.isEmpty ? ["124M", "355M", "774M", "1558M"].map { "Configs/gpt2-\($0).json" } : config
            print(String(format: "per-rank %.0f GFLOP/s, %d ranks/node, network %.0f Gbit/s, micro-batch %d x %d tokens, accumulation %d%@%@",
                         rate / 1e9, ranksPerNode, networkGbps, microBatch, seqLen, accumulation, zero ? ", ZeRO-1" : "",
                         recompute ? ", recompute" : ""))
            for path in paths {
                let cfg = try GPT2Config.load(path: path)
                let T = min(seqLen, cfg.contextLength)
                let act = Double(GPT2Graph(model: GPT2Model(config: cfg), batch: microBatch, seqLen: T, mode: .train,
                                           recompute: recompute).activationBytes)
                print("\n\(path): \(grouped(cfg.parameterCount)) parameters")
                print("  nodes  ranks  step(s)  compute  comm(exposed)  optimizer   tokens/s  efficiency  memory/rank")
                for k in nodes {
                    let s = m.step(config: cfg, seqLen: T, microBatch: microBatch, accumulation: accumulation, nodes: k,
                                   ranksPerNode: ranksPerNode, zero: zero, activationBytes: act)
                    print(String(format: "  %5d  %5d  %7.2f  %7.2f  %6.2f (%5.2f)  %9.3f  %9.0f  %9.1f%%  %@", k, s.ranks, s.total,
                                 s.compute, s.communication, s.exposedCommunication, s.optimizer, s.tokensPerSecond,
                                 s.efficiency * 100, Runtime.formatBytes(s.bytesPerRank)))
                }
            }
        }
    }
}
