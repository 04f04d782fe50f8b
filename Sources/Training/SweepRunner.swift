import Checkpoint
import Common
import Foundation
import Planning

/// The process `sweep run` is waiting on, and whether a stop was asked for (signal handlers cannot capture).
nonisolated(unsafe) private var sweepChild: pid_t = 0
nonisolated(unsafe) private var sweepStopRequested: sig_atomic_t = 0

/// `gpt2-dist sweep run`: every point of a sweep as a normal run directory OUT/POINT, trained by `gpt2-dist train`
/// in a child process (`local`), under `mpirun` (`mpirun`), or as one Slurm job per point through
/// Launch/slurm.sbatch (`slurm`). Finished points are skipped and interrupted ones resume from their checkpoints;
/// OUT/sweep.json keeps the sweep, so a later run or `sweep report OUT` reads the same one.
public final class SweepRunner {
    public enum Launcher: String, CaseIterable, Sendable { case local, mpirun, slurm }
    public enum Outcome: Equatable { case finished, stopped, submitted }

    public let sweep: Sweep, points: [Sweep.Point]
    /// OUT, absolute (Slurm jobs start elsewhere).
    public let out: String
    let binary: String
    let say: (String) -> Void

    /// Checks OUT against a sweep it already holds (a different recipe is an error naming the keys; more budgets or
    /// depths are fine) and records this one as OUT/sweep.json.
    public init(sweep: Sweep, out: String, binary: String, say: @escaping (String) -> Void = { print($0); fflush(stdout) }) throws {
        self.sweep = sweep
        points = try sweep.points()
        self.out = URL(fileURLWithPath: out).standardized.path
        self.binary = binary
        self.say = say
        let record = self.out + "/" + Sweep.recordName
        if FileManager.default.fileExists(atPath: record) {
            let held = try Sweep.load(path: record)
            let changed = sweep.recipeDifferences(from: held)
            guard changed.isEmpty else {
                throw GPT2DistError(.usage, "\(out) holds a sweep with another \(changed.joined(separator: ", ")) (its \(Sweep.recordName)); "
                    + "give this one its own --out")
            }
        }
        try AtomicFile.write(text: JSONValue.object(sweep.definition).json + "\n", to: record)
    }

    public func directory(_ p: Sweep.Point) -> String { out + "/" + p.name }

    /// Whether the point's run has reached its steps (status.json says finished).
    public func isFinished(_ p: Sweep.Point) -> Bool {
        guard let status = try? RunStatus.read(runDirectory: directory(p)) else { return false }
        return status.state == .finished && status.step >= p.steps
    }

    /// The flags of one point's `train` beyond its config, data, output, size of batch and steps: its learning
    /// rate, the sweep's WSD schedule and seed, a checkpoint every quarter of its steps, and the validation (and
    /// task) at its end.
    func recipeArguments(_ p: Sweep.Point) -> [String] {
        var a = ["--lr", String(p.lr), "--min-lr", String(p.lr * sweep.minLrFraction), "--lr-schedule", "wsd",
                 "--decay-fraction", String(sweep.decayFraction), "--warmup-steps", String(min(sweep.warmupSteps, p.steps - 1)),
                 "--seed", String(sweep.seed), "--ckpt-every", String(max(1, p.steps / 4)), "--keep-checkpoints", "1"]
        if sweep.val != nil { a += ["--eval-every", String(p.steps), "--eval-batches", "8"] }
        if let task = sweep.task { a += ["--task", task, "--task-every", "0"] + (sweep.taskLimit.map { ["--task-limit", String($0)] } ?? []) }
        return a
    }

    /// Writes the point's model config (OUT/POINT/model.json) and returns its path.
    func writeConfig(_ p: Sweep.Point) throws -> String {
        let path = directory(p) + "/model.json"
        try AtomicFile.write(text: p.config.jsonString, to: path)
        return path
    }

    /// SIGTERM and SIGINT: `forward` passes them on to the running child; otherwise they ask the wait to stop.
    func installSignals(forwardInterrupt: Bool) {
        var unblock = sigset_t()
        sigemptyset(&unblock); sigaddset(&unblock, SIGTERM); sigaddset(&unblock, SIGINT)
        sigprocmask(SIG_UNBLOCK, &unblock, nil)  // a launcher may have started us with them blocked (the points inherit it)
        signal(SIGTERM) { s in sweepStopRequested = 1; if sweepChild > 0 { kill(sweepChild, s) } }
        // Ctrl-C already reaches mpirun with the terminal's process group, and a second SIGINT would make it abort:
        // only the local launcher passes SIGINT on (the trainer takes it twice as once).
        if forwardInterrupt { signal(SIGINT) { s in sweepStopRequested = 1; if sweepChild > 0 { kill(sweepChild, s) } } } else {
            signal(SIGINT) { _ in sweepStopRequested = 1 }
        }
    }

    /// Progress of the grid in FLOPs, for the ETA: the budgets done before this invocation and those run in it.
    struct Progress {
        let started = Date()
        let total: Double
        var done = 0.0, ranHere = 0.0
        var eta: String { ranHere > 0 ? Format.duration(Date().timeIntervalSince(started) / ranHere * (total - done)) : "?" }
    }

    /// local and mpirun: the points one after another in child processes; a signal stops the running point after
    /// its step with a checkpoint, and the sweep with it.
    public func runHere(mpirun: String?) throws -> Outcome {
        installSignals(forwardInterrupt: mpirun == nil)
        var progress = Progress(total: points.reduce(0) { $0 + $1.budget })
        for (i, p) in points.enumerated() {
            let dir = directory(p)
            if isFinished(p) {
                say("sweep: \(i + 1)/\(points.count) \(p.name): finished already")
                progress.done += p.budget
                continue
            }
            let config = try writeConfig(p)
            let resuming = !TrainCheckpoint.list(directory: dir).isEmpty
            say("sweep: \(i + 1)/\(points.count) \(p.name) (\(Format.si(Double(p.parameters))) parameters, \(p.steps) steps\(resuming ? ", resuming" : ""); ETA \(progress.eta))")
            var args = ["train", "--config", config, "--data", sweep.data, "--out", dir, "--steps", String(p.steps), "--batch-size",
                        String(sweep.batchSize), "--seq-len", String(sweep.seqLen), "--threads", String(sweep.threads)]
            if let val = sweep.val { args += ["--val", val] }
            args += recipeArguments(p) + (resuming ? ["--resume"] : [])
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
                say("sweep: stopped during \(p.name) at step \(status?.step ?? 0) (checkpoint kept); run the same command again to resume")
                return .stopped
            }
            guard process.terminationStatus == 0, status?.state == .finished else {
                throw GPT2DistError(.training, "sweep point \(p.name) failed (exit \(process.terminationStatus)): see \(dir)/status.json")
            }
            progress.done += p.budget; progress.ranHere += p.budget
        }
        say("sweep: all \(points.count) points finished in \(out) (\(Format.duration(Date().timeIntervalSince(progress.started))))")
        return .finished
    }

    // MARK: Slurm

    /// slurm: one job per unfinished point through `script` (Launch/slurm.sbatch: its time-limit requeue and
    /// resume), with `sbatchArguments` added (partition, time limit, ...). A point whose recorded job is still
    /// queued or running is not submitted again. Unless `detach`, waits for the jobs and prints progress; a signal
    /// then cancels the sweep's jobs (Slurm's SIGTERM makes running points stop after their step with a checkpoint).
    public func runOnSlurm(script: String, sbatchArguments: [String], detach: Bool) throws -> Outcome {
        guard let sbatch = findOnPath("sbatch"), let squeue = findOnPath("squeue"), let scancel = findOnPath("scancel") else {
            throw GPT2DistError(.usage, "--launcher slurm: no sbatch, squeue and scancel on PATH")
        }
        let repository = URL(fileURLWithPath: script).deletingLastPathComponent().deletingLastPathComponent().path
        let queued = try queuedJobs(squeue)
        var jobs: [String: String] = [:]  // point name -> job id
        var progress = Progress(total: points.reduce(0) { $0 + $1.budget })
        var reported = Set<String>()  // points finished (before this run, or reported as they finish)
        for p in points {
            if isFinished(p) { progress.done += p.budget; reported.insert(p.name); continue }
            let idFile = directory(p) + "/slurm_job"
            if let id = (try? String(contentsOfFile: idFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines), queued[id] != nil {
                say("sweep: \(p.name) is job \(id) already (\(queued[id]!.lowercased()))")
                jobs[p.name] = id
                continue
            }
            let config = try writeConfig(p)
            let extra = recipeArguments(p)
            if let spaced = (extra + [config, sweep.data, sweep.val ?? "", directory(p)]).first(where: { $0.contains(" ") }) {
                throw GPT2DistError(.usage, "--launcher slurm: slurm.sbatch splits its arguments on spaces, and \"\(spaced)\" has one")
            }
            let env = ["CONFIG": config, "DATA": sweep.data, "VAL": sweep.val ?? "", "RUN_DIR": directory(p), "STEPS": String(p.steps),
                       "BATCH_SIZE": String(sweep.batchSize), "SEQ_LEN": String(sweep.seqLen), "EXTRA_ARGS": extra.joined(separator: " "),
                       "NODES": "1", "RANKS_PER_NODE": String(sweep.ranks), "THREADS_PER_RANK": String(sweep.threads),
                       "GPT2DIST_BIN": binary, "REPO": repository]
            let args = ["--parsable", "--job-name=sweep-\(p.name)", "--nodes=1", "--ntasks-per-node=\(sweep.ranks)",
                        "--cpus-per-task=\(sweep.threads)", "--output=\(directory(p))/slurm-%j.out"] + sbatchArguments + [script]
            let (status, output) = try capture(sbatch, args, environment: env)
            let id = output.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            guard status == 0, !id.isEmpty, id.allSatisfy(\.isNumber) else {
                throw GPT2DistError(.training, "sbatch refused \(p.name): \(output.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
            try AtomicFile.write(text: id + "\n", to: idFile)
            jobs[p.name] = id
            say("sweep: submitted \(p.name) (\(Format.si(Double(p.parameters))) parameters, \(p.steps) steps) as job \(id)")
        }
        if jobs.isEmpty && reported.count == points.count {
            say("sweep: all \(points.count) points finished in \(out)")
            return .finished
        }
        if detach {
            say("sweep: \(jobs.count) job(s) in Slurm; `gpt2-dist sweep run` again waits for them, `gpt2-dist sweep report \(out)` reports what has finished")
            return .submitted
        }
        installSignals(forwardInterrupt: false)
        var cancelled = false
        while true {
            let live = try queuedJobs(squeue)
            for p in points where jobs[p.name] != nil && !reported.contains(p.name) && isFinished(p) {
                reported.insert(p.name)
                progress.done += p.budget; progress.ranHere += p.budget
                let running = jobs.values.filter { live[$0] == "RUNNING" }.count, pending = jobs.values.filter { live[$0] == "PENDING" }.count
                say("sweep: \(reported.count)/\(points.count) finished (\(p.name) just now); \(running) running, \(pending) pending; ETA \(progress.eta)")
            }
            if jobs.values.allSatisfy({ live[$0] == nil }) { break }
            if sweepStopRequested != 0 && !cancelled {
                say("sweep: cancelling the sweep's jobs; running points stop after their step with a checkpoint")
                _ = try capture(scancel, Array(Set(jobs.values)).sorted().filter { live[$0] != nil }, environment: [:])
                cancelled = true
            }
            usleep(1_000_000)
        }
        let unfinished = points.filter { jobs[$0.name] != nil && !isFinished($0) }
        if cancelled || !unfinished.isEmpty {
            if cancelled || unfinished.allSatisfy({ (try? RunStatus.read(runDirectory: directory($0)))??.state == .stopped }) {
                say("sweep: stopped with \(unfinished.count) point(s) unfinished (checkpoints kept); run the same command again to resume")
                return .stopped
            }
            let names = unfinished.map { "\($0.name) (\(directory($0))/slurm-\(jobs[$0.name]!).out)" }
            throw GPT2DistError(.training, "sweep points failed under Slurm: \(names.joined(separator: ", "))")
        }
        say("sweep: all \(points.count) points finished in \(out) (\(Format.duration(Date().timeIntervalSince(progress.started))))")
        return .finished
    }

    /// Every job Slurm holds, by id: its state (PENDING, RUNNING, COMPLETING, ...).
    func queuedJobs(_ squeue: String) throws -> [String: String] {
        let (status, output) = try capture(squeue, ["-h", "-o", "%i|%T"], environment: [:])
        guard status == 0 else { throw GPT2DistError(.training, "squeue failed: \(output.trimmingCharacters(in: .whitespacesAndNewlines))") }
        var jobs: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let f = line.split(separator: "|")
            if f.count == 2 { jobs[String(f[0])] = String(f[1]) }
        }
        return jobs
    }

    /// Runs a command to its end: exit status and standard output plus error.
    func capture(_ executable: String, _ args: [String], environment: [String: String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

/// The first executable `name` on PATH.
public func findOnPath(_ name: String) -> String? {
    (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { $0 + "/" + name }
        .first { FileManager.default.isExecutableFile(atPath: $0) }
}
