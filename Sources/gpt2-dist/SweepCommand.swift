import ArgumentParser
import Checkpoint
import Common
import Data
import Distributed
import Foundation
import GPT2
import Machine
import Planning
import Training

struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Scaling-law sweeps (IsoFLOP grids): plan their cost, then run them.",
        subcommands: [SweepPlan.self, SweepRun.self, SweepReportCommand.self])
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
    @Option(help: "Also write the rows as CSV (sweep report compares each point's time with it when it is DIR/plan.csv).") var csv: String?

    func run() throws {
        try runOrFail {
            let sweep = try Sweep.load(path: file)
            let points = try sweep.points()
            let perNode = ranksPerNode ?? sweep.ranks
            guard nodes > 0, perNode > 0, gflopsPerRank > 0, networkGbps > 0 else {
                throw GPT2DistError(.usage, "--nodes, --ranks-per-node, --gflops-per-rank and --network-gbps must be > 0")
            }
            let limit = (memoryGib.map { $0 * 1_073_741_824 }) ?? Double(ProcessInfo.processInfo.physicalMemory) / Double(perNode)
            let dataTokens = try TokenDataset(spec: sweep.data, vocabSize: sweep.base.vocabSize, preferring: "train").count
            if measure { Runtime.setThreads(sweep.threads) }
            let model = ScalingModel(flopsPerRank: gflopsPerRank * 1e9, memoryBandwidthPerRank: 8e9, sharedMemoryBandwidth: 4e9,
                                     networkBandwidth: networkGbps * 1e9 / 8, latency: 5e-6)
            print("\(file): \(points.count) runs (\(sweep.budgets.count) budgets x \(sweep.depths.count) depths), batch \(sweep.batchSize) x "
                  + "\(sweep.seqLen), \(nodes * perNode) rank(s) per run, \(measure ? "compute timed here (\(sweep.threads) thread(s))" : String(format: "%.0f GFLOP/s per rank", gflopsPerRank)); "
                  + "training data \(dataTokens) tokens")
            let rows = try SweepPrediction.predict(sweep, model: model, nodes: nodes, ranksPerNode: perNode, measure: measure,
                                                   memoryLimit: limit, dataTokens: dataTokens)
            print("  run            depth  width  heads   params      tokens   steps       lr  memory/rank   step(s)    time  flags")
            for (p, r) in rows {
                print("  " + Format.column(p.name, 13, left: true) + String(format: " %5d  %5d  %5d  ", p.depth, p.config.embDim, p.config.nHeads)
                      + Format.column(Format.si(Double(p.parameters)), 7) + String(format: "  %10d  %6d  %7.2e  ", p.tokens, p.steps, p.lr)
                      + Format.column(Format.bytes(r.memoryBytes), 11) + String(format: "  %8.3f  ", r.stepSeconds)
                      + Format.column(Format.duration(r.seconds), 6) + "  " + r.flags.joined(separator: "; "))
            }
            let total = rows.reduce(0) { $0 + $1.prediction.seconds }
            if let csv {
                try AtomicFile.write(text: ([SweepPrediction.csvHeader] + rows.map { $1.csvRow($0) }).joined(separator: "\n") + "\n", to: csv)
                print("  wrote \(csv)")
            }
            print("  total predicted: \(Format.duration(total)) (one run after another)")
        }
    }
}

struct SweepRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run every point of a sweep, each a normal run directory DIR/POINT.",
        discussion: """
        --launcher local runs `gpt2-dist train` itself, one point after another (the sweep's ranks must be 1); \
        mpirun runs each under `mpirun -np RANKS`; slurm submits one job per point through Launch/slurm.sbatch \
        (its time-limit requeue and resume included; --sbatch-arg adds sbatch options) and waits for them. Run \
        again, it skips finished points and resumes interrupted ones from their checkpoints (a point whose job is \
        still queued is not submitted twice). Ctrl-C (or SIGTERM) stops the running point after its step with a \
        checkpoint (under slurm: cancels the sweep's jobs, whose running points checkpoint), and the sweep stops with \
        it (exit 130). Each point trains with WSD, the sweep's learning-rate rule, a checkpoint every quarter of its \
        steps and a validation at its end. DIR/sweep.json keeps the sweep for `sweep report DIR`.
          gpt2-dist sweep run Configs/sweep-tiny.json --out runs/sweep-tiny
        """)
    @Argument(help: "Sweep file.") var file: String
    @Option(help: "Directory of the sweep's runs.") var out: String
    @Option(help: "local, mpirun or slurm.") var launcher = "local"
    @Option(help: "slurm: the batch script (default: Launch/slurm.sbatch of this repository).") var sbatchScript: String?
    @Option(help: "slurm: an option for sbatch, e.g. --sbatch-arg=--partition=cpu (repeatable).") var sbatchArg: [String] = []
    @Flag(help: "slurm: submit and return without waiting for the jobs.") var detach = false

    func run() throws {
        var outcome = SweepRunner.Outcome.finished
        try runOrFail {
            let sweep = try Sweep.load(path: file)
            guard let kind = SweepRunner.Launcher(rawValue: launcher) else {
                throw GPT2DistError(.usage, "--launcher must be local, mpirun or slurm, got \(launcher)")
            }
            if kind == .local && sweep.ranks != 1 {
                throw GPT2DistError(.usage, "--launcher local runs one process: the sweep's ranks is \(sweep.ranks) (use --launcher mpirun or slurm)")
            }
            let mpirun = findOnPath("mpirun")
            if kind == .mpirun && mpirun == nil { throw GPT2DistError(.usage, "--launcher mpirun: no mpirun on PATH") }
            if kind == .slurm && findOnPath("sbatch") == nil { throw GPT2DistError(.usage, "--launcher slurm: no sbatch on PATH") }
            let binary = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            let script = try kind == .slurm ? sbatchScript ?? defaultScript(binary: binary) : ""
            if kind == .slurm && !FileManager.default.isReadableFile(atPath: script) {
                throw GPT2DistError(.usage, "--sbatch-script: cannot read \(script)")
            }
            let runner = try SweepRunner(sweep: sweep, out: out, binary: binary)
            switch kind {
            case .local, .mpirun: outcome = try runner.runHere(mpirun: kind == .mpirun ? mpirun : nil)
            case .slurm:
                outcome = try runner.runOnSlurm(script: URL(fileURLWithPath: script).standardized.path, sbatchArguments: sbatchArg, detach: detach)
            }
        }
        if outcome == .stopped { throw ExitCode(130) }
    }

    /// Launch/slurm.sbatch of the current directory, or of the repository the binary was built in.
    func defaultScript(binary: String) throws -> String {
        let exe = URL(fileURLWithPath: binary).deletingLastPathComponent()
        let candidates = ["Launch/slurm.sbatch"] + [2, 3].map { up in
            (0..<up).reduce(exe) { u, _ in u.deletingLastPathComponent() }.appendingPathComponent("Launch/slurm.sbatch").path
        }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw GPT2DistError(.usage, "--launcher slurm: cannot find Launch/slurm.sbatch (give --sbatch-script)")
        }
        return found
    }
}

struct SweepReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Evaluate a sweep's finished points and fit the compute-optimal law (Chinchilla approach 2).",
        discussion: """
        Each finished point's final checkpoint is evaluated on the whole validation split (and on the sweep's task, \
        when it has one); the result is kept in DIR/POINT/final_eval.json, so a second report only evaluates what is \
        new. For each budget a parabola of loss in ln N gives N_opt(C) and L(N_opt); N_opt ∝ C^a and D_opt ∝ C^b \
        (D = C / 6N) are fitted across budgets, with 95% bootstrap intervals. Writes DIR/sweep.csv, DIR/isoflop.svg \
        and DIR/law.svg and prints the table; unfinished points are named and left out. Under mpirun the \
        evaluations are split over the ranks.
          gpt2-dist sweep report runs/sweep-tiny
        """)
    @Argument(help: "Directory of `gpt2-dist sweep run`.") var directory: String
    @Option(help: "Score this benchmark (hellaswag) at every point, instead of the sweep's own task.") var task: String?
    @Option(help: "With --task: only the first N items.") var taskLimit: Int?
    @Option(help: "The task's file (default: data/eval/TASK/requests.jsonl.gz).") var taskFile: String?
    @Option(help: "GPT-2 vocabulary for the task (gpt2.tiktoken or a directory with it).") var vocab = "data/gpt2"
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let comm = Communicator.initialize()
        defer { comm.finalize() }
        _ = try compute.applyOrExit()
        try runOrFail {
            let report = try SweepReport(directory: directory, task: task, taskLimit: taskLimit, taskFile: taskFile, vocab: vocab, comm: comm) { if comm.isRoot { print($0) } }
            guard comm.isRoot else { return }
            let files = try report.write()
            print(report.text, terminator: "")
            print("wrote " + files.joined(separator: ", "))
            let unfinished = report.rows.filter { $0.unfinished != nil }
            if !unfinished.isEmpty {
                print("unfinished (left out): " + unfinished.map { "\($0.point.name) (\($0.unfinished!))" }.joined(separator: ", "))
            }
        }
    }
}
