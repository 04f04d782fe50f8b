import ArgumentParser
import Common
import Distributed
import Foundation
import GPT2
import Machine
import Planning
import Training

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Project step time, tokens/s, scaling efficiency and memory per rank on 8-256 nodes.",
        discussion: """
        A model of the trainer's step (README, "Scaling model"): step = compute + exposed communication + optimizer. \
        Compute is counted (FLOPs of each op at --gflops-per-rank) or, with --measure, timed op by op by running the \
        model's forward and backward here at --threads-per-rank. Communication follows the trainer's own bucket \
        schedule: each bucket leaves when backward has finished its parameters, as a ring inside each node (shared \
        memory) and across nodes at --network-gbps; what is still travelling when backward ends is exposed. With \
        --zero, the all-gather overlaps the next forward the same way.
          gpt2-dist plan --config Configs/gpt2-1558M.json --ranks-per-node 8 --threads-per-rank 4 --network-gbps 100
          gpt2-dist plan --config Configs/gpt2-124M.json --nodes 2 --ranks-per-node 1 --micro-batch 4 --seq-len 128 \
            --network-gbps 2 --measure      # the simulated-cluster runs of Launch/scaling --sim-nodes
        """
    )
    @Option(parsing: .upToNextOption, help: "Model configs (default: the four GPT-2 sizes in Configs/).") var config: [String] = []
    @Option(parsing: .upToNextOption, help: "Node counts to project.") var nodes: [Int] = [8, 16, 32, 64, 128, 256]
    @Option(help: "Ranks per node.") var ranksPerNode = 8
    @Option(help: "Threads per rank (for --measure).") var threadsPerRank = 1
    @Option(help: "Micro-batch per rank (sequences).") var microBatch = 8
    @Option(help: "Gradient accumulation steps.") var accumulation = 1
    @Option(help: "Sequence length.") var seqLen = 1024
    @Option(help: "Sustained GFLOP/s per rank for counted compute (default 130: 75% MFU of one SkylakeX core).") var gflopsPerRank = 130.0
    @Flag(help: "Time each config's forward and backward op by op here, at --threads-per-rank (a 124M step takes seconds, 1558M minutes).")
    var measure = false
    @Option(help: "Gradient bucket size in MB, as train's --bucket-mb.") var bucketMb = BucketSchedule.defaultBucketMb
    @Option(help: "Memory bandwidth per rank for AdamW, GB/s.") var memoryGbps = 8.0
    @Option(help: "Intra-node all-reduce bandwidth, GB/s (measured here: ~4 GB/s for 2 ranks).") var sharedMemoryGbps = 4.0
    @Option(parsing: .upToNextOption, help: "Network bandwidth per node and direction, Gbit/s (several: one table each).")
    var networkGbps: [Double] = [100]
    @Option(help: "CPU ns per byte a rank sends or receives, taken from its compute (0.9 measured over veth here; less with NIC offloads).")
    var commCpuNsPerByte = ScalingModel.defaultCpuSecondsPerByte * 1e9
    @Flag(help: "One JSON object per line (config, nodes, network, predicted times) instead of tables.") var json = false
    @Option(help: "Latency per hop, microseconds.") var latencyUs = 5.0
    @Flag(help: "AdamW state sharded (ZeRO-1).") var zero = false
    @Flag(help: "Activations recomputed in backward.") var recompute = false

    func run() throws {
        try runOrFail {
            try checkValues()
            if measure { Runtime.setThreads(threadsPerRank) }
            let paths = config.isEmpty ? ["124M", "355M", "774M", "1558M"].map { "Configs/gpt2-\($0).json" } : config
            for path in paths { try project(path) }
        }
    }

    func checkValues() throws {
        for (flag, v) in [("ranks-per-node", ranksPerNode), ("threads-per-rank", threadsPerRank), ("micro-batch", microBatch),
                          ("accumulation", accumulation), ("seq-len", seqLen)] + nodes.map({ ("nodes", $0) }) where v <= 0 {
            throw GPT2DistError(.usage, "--\(flag) must be a positive integer, got \(v)")
        }
        for (flag, v) in [("gflops-per-rank", gflopsPerRank), ("memory-gbps", memoryGbps), ("shared-memory-gbps", sharedMemoryGbps)]
            + networkGbps.map({ ("network-gbps", $0) }) where !(v.isFinite && v > 0) {
            throw GPT2DistError(.usage, "--\(flag) must be a finite number > 0, got \(v)")
        }
        guard latencyUs.isFinite, latencyUs >= 0 else { throw GPT2DistError(.usage, "--latency-us must be a finite number >= 0, got \(latencyUs)") }
        guard commCpuNsPerByte.isFinite, commCpuNsPerByte >= 0 else {
            throw GPT2DistError(.usage, "--comm-cpu-ns-per-byte must be a finite number >= 0, got \(commCpuNsPerByte)")
        }
        guard bucketMb.isFinite, bucketMb > 0 else { throw GPT2DistError(.usage, "--bucket-mb must be a finite number > 0, got \(bucketMb)") }
    }

    /// One config: its compute timed here (--measure, when it fits in memory) or counted, then a table (or JSON
    /// lines) of projected steps per network rate and node count.
    func project(_ path: String) throws {
        let cfg = try GPT2Config.load(path: path)
        let T = min(seqLen, cfg.contextLength)
        let act = Double(GPT2Graph(model: GPT2Model(config: cfg), batch: microBatch, seqLen: T, mode: .train,
                                   recompute: recompute).activationBytes)
        // Timing needs the model and one micro-batch's activations in memory here; otherwise it is counted.
        let needed = MemoryEstimate(config: cfg, microBatch: microBatch, seqLen: T, ranks: 1, zero: false, recompute: recompute,
                                    activationBytes: Int(act)).total
        let fits = needed < 0.8 * Double(ProcessInfo.processInfo.physicalMemory)
        if measure && !fits {
            FileHandle.standardError.write(Data("plan: \(path): timing it would need \(Format.bytes(needed)) here; compute is counted\n".utf8))
        }
        let timeline = measure && fits
            ? ScalingModel.Timeline.measure(config: cfg, microBatch: microBatch, seqLen: T, recompute: recompute) : nil
        let rate = gflopsPerRank * 1e9
        for gbps in networkGbps {
            var m = ScalingModel(flopsPerRank: rate, memoryBandwidthPerRank: memoryGbps * 1e9,
                                 sharedMemoryBandwidth: sharedMemoryGbps * 1e9, networkBandwidth: gbps * 1e9 / 8,
                                 latency: latencyUs * 1e-6)
            m.bucketBytes = bucketMb * 1_048_576
            m.cpuSecondsPerByte = commCpuNsPerByte * 1e-9
            if !json {
                print(String(format: "\n%@: %@ parameters; compute %@, %d ranks/node, network %g Gbit/s, buckets %g MB, "
                             + "micro-batch %d x %d tokens, accumulation %d%@%@", path, grouped(cfg.parameterCount),
                             timeline != nil ? "timed here op by op (\(threadsPerRank) thread(s))" : String(format: "%.0f GFLOP/s per rank", rate / 1e9),
                             ranksPerNode, gbps, bucketMb, microBatch, T, accumulation, zero ? ", ZeRO-1" : "", recompute ? ", recompute" : ""))
                print("  nodes  ranks  step(s)  compute  comm(exposed)  optimizer   tokens/s  efficiency  memory/rank")
            }
            for k in nodes {
                let s = m.step(config: cfg, seqLen: T, microBatch: microBatch, accumulation: accumulation, nodes: k,
                               ranksPerNode: ranksPerNode, zero: zero, activationBytes: act, timeline: timeline)
                if json {
                    print(#"{"config": "\#(path)", "nodes": \#(k), "ranks": \#(s.ranks), "network_gbps": \#(gbps), "zero": \#(zero ? 1 : 0), "#
                          + String(format: #""step_s": %.4f, "compute_s": %.4f, "communication_s": %.4f, "exposed_s": %.4f, "optimizer_s": %.4f, "tokens_per_s": %.1f, "bytes_per_rank": %.0f}"#,
                                   s.total, s.compute, s.communication, s.exposedCommunication, s.optimizer, s.tokensPerSecond, s.bytesPerRank))
                } else {
                    print(String(format: "  %5d  %5d  %7.2f  %7.2f  %6.2f (%5.2f)  %9.3f  %9.0f  %9.1f%%  %@", k, s.ranks, s.total,
                                 s.compute, s.communication, s.exposedCommunication, s.optimizer, s.tokensPerSecond,
                                 s.efficiency * 100, Format.bytes(s.bytesPerRank)))
                }
            }
        }
    }
}
