import ArgumentParser
import Common
import Data
import Foundation
import GPT2
import Machine
import Planning
import Training

struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Scaling-law sweeps (IsoFLOP grids): plan their cost before anything runs.",
        subcommands: [SweepPlan.self])
}

struct SweepPlan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Print a sweep's grid: each run's size, tokens, steps, learning rate, memory per rank and predicted wall time.",
        discussion: """
        One row per (budget, depth); tokens = budget / (6N + 12·L·C·T), steps = tokens / (batch x seq_len). The \
        wall time is plan's model of a step (counted compute at --gflops-per-rank, or --measure: each size's forward \
        and backward timed here) on --nodes x --ranks-per-node ranks at --network-gbps. Rows are flagged when they \
        do not fit in --memory-gib per rank or read the training data more than max_epochs times.
          gpt2-dist sweep plan Configs/sweep-tiny.json --measure
        """)
    @Argument(help: "Sweep file (JSON; see Configs/sweep-tiny.json).") var file: String
    @Option(help: "Nodes per run.") var nodes = 1
    @Option(help: "Ranks per node (default: the sweep's ranks on one node).") var ranksPerNode: Int?
    @Option(help: "Sustained GFLOP/s per rank for counted compute.") var gflopsPerRank = 130.0
    @Flag(help: "Time each size's forward and backward here (at the sweep's threads per rank).") var measure = false
    @Option(help: "Network bandwidth per node and direction, Gbit/s.") var networkGbps = 100.0
    @Option(help: "Memory per rank, GiB (default: this machine's memory / ranks per node).") var memoryGib: Double?

    func run() throws {
        try runOrFail {
            let sweep = try Sweep.load(path: file)
            let points = try sweep.points()
            let perNode = ranksPerNode ?? sweep.ranks
            guard nodes > 0, perNode > 0, gflopsPerRank > 0, networkGbps > 0 else {
                throw GPT2DistError(.usage, "--nodes, --ranks-per-node, --gflops-per-rank and --network-gbps must be > 0")
            }
            let ranks = nodes * perNode
            guard sweep.batchSize % ranks == 0 else {
                throw GPT2DistError(.usage, "the sweep's batch_size \(sweep.batchSize) is not divisible by \(ranks) ranks")
            }
            let limit = (memoryGib.map { $0 * 1_073_741_824 }) ?? Double(ProcessInfo.processInfo.physicalMemory) / Double(perNode)
            let dataTokens = try TokenDataset(spec: sweep.data, vocabSize: sweep.base.vocabSize, preferring: "train").count
            if measure { Runtime.setThreads(sweep.threads) }
            let model = ScalingModel(flopsPerRank: gflopsPerRank * 1e9, memoryBandwidthPerRank: 8e9, sharedMemoryBandwidth: 4e9,
                                     networkBandwidth: networkGbps * 1e9 / 8, latency: 5e-6)
            print("\(file): \(points.count) runs (\(sweep.budgets.count) budgets x \(sweep.depths.count) depths), batch \(sweep.batchSize) x "
                  + "\(sweep.seqLen), \(ranks) rank(s) per run, \(measure ? "compute timed here (\(sweep.threads) thread(s))" : String(format: "%.0f GFLOP/s per rank", gflopsPerRank)); "
                  + "training data \(dataTokens) tokens")
            print("  run            depth  width  heads   params      tokens   steps       lr  memory/rank   step(s)    time  flags")
            var total = 0.0, timelines: [Int: ScalingModel.Timeline] = [:]
            for p in points {
                let micro = sweep.batchSize / ranks
                let act = Double(GPT2Graph(model: GPT2Model(config: p.config), batch: micro, seqLen: sweep.seqLen, mode: .train).activationBytes)
                let memory = MemoryEstimate(config: p.config, microBatch: micro, seqLen: sweep.seqLen, ranks: ranks, zero: false,
                                            recompute: false, activationBytes: Int(act)).rootTotal
                if measure && timelines[p.depth] == nil && memory < limit {
                    timelines[p.depth] = ScalingModel.Timeline.measure(config: p.config, microBatch: micro, seqLen: sweep.seqLen, recompute: false)
                }
                let step = model.step(config: p.config, seqLen: sweep.seqLen, microBatch: micro, accumulation: 1, nodes: nodes,
                                      ranksPerNode: perNode, zero: false, activationBytes: act, timeline: timelines[p.depth]).total
                let seconds = step * Double(p.steps)
                total += seconds
                var flags: [String] = []
                if memory > limit { flags.append("does not fit in \(Format.bytes(limit))") }
                let epochs = Double(p.tokens) / Double(dataTokens)
                if epochs > sweep.maxEpochs { flags.append(String(format: "%.1f epochs > max_epochs %g", epochs, sweep.maxEpochs)) }
                print(String(format: "  %-13@ %5d  %5d  %5d  %7@  %10d  %6d  %7.2e  %11@  %8.3f  %6@  %@", p.name, p.depth, p.config.embDim,
                             p.config.nHeads, Format.si(Double(p.parameters)), p.tokens, p.steps, p.lr, Format.bytes(memory), step,
                             Format.duration(seconds), flags.joined(separator: "; ")))
            }
            print("  total predicted: \(Format.duration(total)) (one run after another)")
        }
    }
}
