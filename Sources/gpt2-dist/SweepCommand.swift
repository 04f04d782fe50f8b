import ArgumentParser
import Checkpoint
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
        abstract: "Scaling-law sweeps (IsoFLOP grids): plan their cost, then run them.",
        subcommands: [SweepPlan.self, SweepRun.self])
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

/// The child trainer of `sweep run`, for the signal handlers (which cannot capture).
nonisolated(unsafe) private var sweepChild: pid_t = 0

struct SweepRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run every point of a sweep, one after another, each a normal run directory DIR/POINT.",
        discussion: """
        --launcher local runs `gpt2-dist train` itself (the sweep's ranks must be 1); mpirun runs it under \
        `mpirun -np RANKS`. Run again, it skips finished points and resumes interrupted ones from their \
        checkpoints. Ctrl-C (or SIGTERM) reaches the running point, which stops after its step with a checkpoint, \
        and the sweep stops with it (exit 130). Each point trains with WSD, the sweep's learning-rate rule, a \
        checkpoint every quarter of its steps and a validation at its end.
          gpt2-dist sweep run Configs/sweep-tiny.json --out runs/sweep-tiny
        """)
    @Argument(help: "Sweep file.") var file: String
    @Option(help: "Directory of the sweep's runs.") var out: String
    @Option(help: "local or mpirun.") var launcher = "local"

    func run() throws {
        var interrupted = false
        try runOrFail {
            let sweep = try Sweep.load(path: file)
            let points = try sweep.points()
            guard ["local", "mpirun"].contains(launcher) else {
                throw GPT2DistError(.usage, "--launcher must be local or mpirun, got \(launcher)")
            }
            if launcher == "local" && sweep.ranks != 1 {
                throw GPT2DistError(.usage, "--launcher local runs one process: the sweep's ranks is \(sweep.ranks) (use --launcher mpirun)")
            }
            let mpirun = launcher == "mpirun" ? findOnPath("mpirun") : nil
            if launcher == "mpirun" && mpirun == nil { throw GPT2DistError(.usage, "--launcher mpirun: no mpirun on PATH") }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            // A signal to the sweep goes on to the running point, which stops after its step with a checkpoint. Ctrl-C
            // already reaches mpirun with the terminal's process group, and a second SIGINT would make it abort: only
            // the local launcher passes SIGINT on (the trainer takes it twice as once).
            var unblock = sigset_t()
            sigemptyset(&unblock); sigaddset(&unblock, SIGTERM); sigaddset(&unblock, SIGINT)
            sigprocmask(SIG_UNBLOCK, &unblock, nil)  // a launcher may have started us with them blocked (the points inherit it)
            signal(SIGTERM) { s in if sweepChild > 0 { kill(sweepChild, s) } }
            if launcher == "local" { signal(SIGINT) { s in if sweepChild > 0 { kill(sweepChild, s) } } } else { signal(SIGINT, SIG_IGN) }
            let started = Date()
            var doneFLOPs = 0.0, ranFLOPs = 0.0
            let totalFLOPs = points.reduce(0) { $0 + $1.budget }
            for (i, p) in points.enumerated() {
                let dir = out + "/" + p.name
                if let status = try? RunStatus.read(runDirectory: dir), status.state == .finished, status.step >= p.steps {
                    print("sweep: \(i + 1)/\(points.count) \(p.name): finished already")
                    doneFLOPs += p.budget
                    continue
                }
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let configPath = dir + "/model.json"
                try p.config.jsonString.write(toFile: configPath, atomically: true, encoding: .utf8)
                let resuming = !TrainCheckpoint.list(directory: dir).isEmpty
                let elapsed = Date().timeIntervalSince(started)
                let eta = ranFLOPs > 0 ? Format.duration(elapsed / ranFLOPs * (totalFLOPs - doneFLOPs)) : "?"
                print("sweep: \(i + 1)/\(points.count) \(p.name) (\(Format.si(Double(p.parameters))) parameters, \(p.steps) steps\(resuming ? ", resuming" : ""); ETA \(eta))")
                let args = trainArguments(sweep, p, config: configPath, out: dir, resume: resuming)
                let process = Process()
                if let mpirun {
                    process.executableURL = URL(fileURLWithPath: mpirun)
                    process.arguments = ["-np", String(sweep.ranks)] + (getuid() == 0 ? ["--allow-run-as-root"] : []) + [binary] + args
                } else {
                    process.executableURL = URL(fileURLWithPath: binary)
                    process.arguments = args
                }
                try process.run()
                sweepChild = process.processIdentifier
                process.waitUntilExit()
                sweepChild = 0
                let status = try? RunStatus.read(runDirectory: dir)
                if status?.state == .stopped {
                    print("sweep: stopped during \(p.name) at step \(status?.step ?? 0) (checkpoint kept); run the same command again to resume")
                    interrupted = true
                    return
                }
                guard process.terminationStatus == 0, status?.state == .finished else {
                    throw GPT2DistError(.training, "sweep point \(p.name) failed (exit \(process.terminationStatus)): see \(dir)/status.json")
                }
                doneFLOPs += p.budget; ranFLOPs += p.budget
            }
            print("sweep: all \(points.count) points finished in \(out) (\(Format.duration(Date().timeIntervalSince(started))))")
        }
        if interrupted { throw ExitCode(130) }
    }

    /// The train flags of one point: its model, budget and learning rate, and the sweep's recipe.
    func trainArguments(_ sweep: Sweep, _ p: Sweep.Point, config: String, out: String, resume: Bool) -> [String] {
        var a = ["train", "--config", config, "--data", sweep.data, "--out", out, "--steps", String(p.steps),
                 "--batch-size", String(sweep.batchSize), "--seq-len", String(sweep.seqLen), "--lr", String(p.lr),
                 "--min-lr", String(p.lr * sweep.minLrFraction), "--lr-schedule", "wsd", "--decay-fraction", String(sweep.decayFraction),
                 "--warmup-steps", String(min(sweep.warmupSteps, p.steps - 1)), "--seed", String(sweep.seed), "--threads", String(sweep.threads),
                 "--ckpt-every", String(max(1, p.steps / 4)), "--keep-checkpoints", "1"]
        if let val = sweep.val { a += ["--val", val, "--eval-every", String(p.steps), "--eval-batches", "8"] }
        if let task = sweep.task { a += ["--task", task, "--task-every", "0"] + (sweep.taskLimit.map { ["--task-limit", String($0)] } ?? []) }
        if resume { a.append("--resume") }
        return a
    }

    func findOnPath(_ name: String) -> String? {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { $0 + "/" + name }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
