import Checkpoint
import Foundation
import Testing
import Training

/// A real Slurm (Debian's slurmctld + slurmd + munged, started by `Launch/slurm-local`) running
/// `Launch/slurm.sbatch` exactly as the README tells users to submit it. Root only; CI runs as root.
struct LocalSlurm {
    static let script = repoRoot + "/Launch/slurm-local"
    /// One directory for every test run, so that a Slurm an interrupted run left behind is found and stopped.
    static let dir = NSTemporaryDirectory() + "gpt2-dist-tests-slurm"
    /// Not Slurm's default 6817, so that a Slurm a user rehearses with (Launch/slurm-local start) can keep running.
    static let port = "16817"
    var conf: String { Self.dir + "/slurm.conf" }

    /// `Launch/slurm-local ARGS` (its stderr is the message users see).
    @discardableResult
    static func control(_ args: [String], timeout: Double = 300) throws -> CLI.Result {
        try CLI.run(executable: script, args + ["--dir", dir], timeout: timeout)
    }

    /// Starts this test's Slurm (stopping one left running); nil, with the reason recorded, when it cannot.
    static func start() throws -> LocalSlurm? {
        let r = try control(["start", "--port", port])
        guard r.status == 0 else {
            Issue.record("Launch/slurm-local start failed: \(r.stderr)")
            return nil
        }
        return LocalSlurm()
    }

    func stop() { _ = try? Self.control(["stop"]) }

    /// A Slurm client command (sbatch, squeue, scontrol, scancel) against this Slurm.
    func client(_ args: [String]) throws -> CLI.Result {
        try CLI.run(executable: "/usr/bin/env", args, timeout: 60, environment: ["SLURM_CONF": conf])
    }

    /// slurm.sbatch's variables for the tiny training run of `trainArgs` (batch 4 x 32, lr 3e-3, warm-up 2, seed 5).
    static func jobEnvironment(runDir: String, config: String, steps: Int, extraArgs: String = "") -> [String: String] {
        ["CONFIG": config, "DATA": tinyTokens, "VAL": "", "RUN_DIR": runDir, "STEPS": String(steps), "BATCH_SIZE": "4",
         "SEQ_LEN": "32", "GPT2DIST_BIN": CLI.binary, "EXTRA_ARGS": "--lr 3e-3 --warmup-steps 2 --seed 5 " + extraArgs]
    }

    /// `sbatch Launch/slurm.sbatch` from the repository root, as documented, with the tiny training run's
    /// settings in the environment; returns the job id.
    func submit(tasks: Int, runDir: String, config: String, steps: Int, time: String = "10", options: [String] = [],
                extraArgs: String = "") throws -> String? {
        let env = Self.jobEnvironment(runDir: runDir, config: config, steps: steps, extraArgs: extraArgs)
        let args = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=\(tasks)", "--cpus-per-task=1", "--time=\(time)",
                    "--job-name=gd-test", "--output=\(runDir).log"] + options + ["Launch/slurm.sbatch"]
        let r = try CLI.run(executable: "/usr/bin/env", args, timeout: 60, environment: env.merging(["SLURM_CONF": conf]) { $1 },
                            directory: repoRoot)
        let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first.map(String.init) ?? ""
        guard r.status == 0, Int(id) != nil else {
            Issue.record("sbatch failed (\(r.status)): \(r.stderr) \(r.stdout)")
            return nil
        }
        return id
    }

    /// `scontrol show job`'s fields of job `id` (JobState, Restarts, ExitCode, Reason, ...).
    func job(_ id: String) -> [String: String] {
        guard let r = try? client(["scontrol", "show", "job", "-o", id]), r.status == 0 else { return [:] }
        var fields: [String: String] = [:]
        for word in r.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            if let eq = word.firstIndex(of: "=") { fields[String(word[..<eq])] = String(word[word.index(after: eq)...]) }
        }
        return fields
    }

    /// Waits until job `id` is in one of `states`; returns the state (nil on timeout).
    @discardableResult
    func wait(_ id: String, for states: Set<String>, seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let s = job(id)["JobState"], states.contains(s) { return s }
            usleep(200_000)
        }
        return nil
    }

    /// Whether job `id` has ended (a job passes through CONFIGURING and COMPLETING besides PENDING and RUNNING).
    func ended(_ id: String) -> Bool { Self.endStates.contains(job(id)["JobState"] ?? "") }
    static let endStates: Set<String> = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                         "PREEMPTED", "BOOT_FAIL", "DEADLINE"]

    /// This Slurm's daemons still running (`Launch/slurm-local status`).
    static var runningDaemons: String {
        ((try? control(["status"]))?.stdout ?? "").split(separator: "\n").filter { $0.contains(": running") }.joined(separator: "; ")
    }

    /// The trainer's processes of job `id` (none once the job has really ended); other tests' trainers run meanwhile.
    func trainers(of id: String) -> [Int32] {
        shell("pgrep -f '\(CLI.binary) train' || true").split(separator: "\n").compactMap { Int32($0) }.filter { pid in
            let env = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
            return env.split(separator: 0).contains { $0.elementsEqual("SLURM_JOB_ID=\(id)".utf8) }
        }
    }
}

/// The job's log (slurm.sbatch's lines and the trainer's), written with --open-mode=append across requeues.
func jobLog(_ runDir: String) -> String { (try? String(contentsOfFile: runDir + ".log", encoding: .utf8)) ?? "" }

/// A slower model than the tiny one, so that a job is still training when Slurm's time-limit signal comes: Slurm
/// checks time limits every 30 s, so `--time=1 --signal=TERM@45` signals between 15 and 45 s after the start.
func writeSlowConfig(_ dir: String) throws -> String {
    let path = dir + "/slow.json"
    try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 192, "n_heads": 4, "n_layers": 4, "drop_rate": 0.1, "qkv_bias": true}"#
        .write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite(.serialized, .enabled(if: getuid() == 0, "needs root: slurmctld and slurmd run as root"))
struct SlurmTests {
    /// 2 tasks x 1 CPU train to the last step through srun --mpi=pmix; the losses equal mpirun -np 2's.
    @Test func twoTasksTrainToTheEndLikeMpirun() throws {
        let (dir, cfg) = try tinyRunWithNp2Reference("slurm-np2", dropRate: 0.1, steps: 40)
        guard let slurm = try LocalSlurm.start() else { return }
        defer { slurm.stop() }
        let run = dir + "/job"
        guard let id = try slurm.submit(tasks: 2, runDir: run, config: cfg, steps: 40) else { return }
        let state = slurm.wait(id, for: ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"], seconds: 180)
        #expect(state == "COMPLETED", "job \(id): \(state ?? "timed out") \(jobLog(run).suffix(1500))")
        #expect(jobLog(run).contains("launcher srun"), "\(jobLog(run).prefix(800))")
        expectClose(try losses(run), try losses(dir + "/np2"), rel: 1e-5, "sbatch 2 tasks vs mpirun -np 2")
    }

    /// scancel mid-run: every process gets SIGTERM; the ranks finish their step, rank 0 checkpoints every logged
    /// step, the trainer exits 0, and the job ends CANCELLED (or COMPLETED).
    @Test func scancelLeavesACheckpointOfEveryLoggedStep() throws {
        let dir = tmpDir("slurm-scancel")
        let cfg = try writeSlowConfig(dir)
        guard let slurm = try LocalSlurm.start() else { return }
        defer { slurm.stop() }
        let run = dir + "/job"
        guard let id = try slurm.submit(tasks: 2, runDir: run, config: cfg, steps: 100_000, extraArgs: "--ckpt-every 100000") else { return }
        guard waitForLoggedSteps(run, 5, seconds: 120, until: { slurm.ended(id) }) else {
            Issue.record("job \(id) did not log 5 steps: \(jobLog(run).suffix(1500))")
            return
        }
        let cancelled = Date()
        #expect(try slurm.client(["scancel", id]).status == 0)
        let state = slurm.wait(id, for: ["COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"], seconds: 60)
        #expect(state == "CANCELLED" || state == "COMPLETED", "job \(id): \(state ?? "still running 60 s after scancel")")
        #expect(waitUntil(seconds: 40) { slurm.trainers(of: id).isEmpty }, "trainer processes left: \(slurm.trainers(of: id))")
        print("scancel: job \(id) ended \(String(format: "%.1f", Date().timeIntervalSince(cancelled))) s after scancel")
        let log = jobLog(run)
        #expect(log.contains("launcher exited with status 0"), "\(log.suffix(1500))")
        let logged = try MetricsLog.read(path: run + "/metrics.h5")["step"]?.max() ?? 0
        guard let ckpt = TrainCheckpoint.newestComplete(directory: run) else {
            Issue.record("no checkpoint after scancel: \(log.suffix(1500))")
            return
        }
        #expect(Double(try ModelFile.load(path: ckpt).step) >= logged, "checkpoint \(ckpt) does not cover step \(logged)")
    }

    /// The time limit falls mid-run: `--signal=TERM@45` reaches the ranks, they checkpoint and exit 0, the job
    /// requeues itself (AUTO_REQUEUE=1), resumes from that checkpoint in its next run, and ends with the losses of
    /// an uninterrupted job, bit for bit. Prints the wall time from the signal to the checkpoint, the requeue and
    /// the first step after the resume.
    @Test func timeLimitRequeuesAndResumesBitIdentically() throws {
        let dir = tmpDir("slurm-timelimit")
        let cfg = try writeSlowConfig(dir)
        guard let slurm = try LocalSlurm.start() else { return }
        defer { slurm.stop() }
        // As many steps as take about 50 s here, well past the latest moment (45 s) the signal can come.
        guard let probe = try slurm.submit(tasks: 2, runDir: dir + "/probe", config: cfg, steps: 100) else { return }
        #expect(slurm.wait(probe, for: ["COMPLETED", "FAILED", "CANCELLED"], seconds: 120) == "COMPLETED", "\(jobLog(dir + "/probe").suffix(1500))")
        let msPerStep = (try MetricsLog.read(path: dir + "/probe/metrics.h5")["ms_per_step"] ?? []).sorted()
        guard !msPerStep.isEmpty else { Issue.record("the probe job logged no steps"); return }
        let steps = max(300, Int(50_000 / msPerStep[msPerStep.count / 2]))
        let whole = dir + "/whole", cut = dir + "/cut"
        guard let reference = try slurm.submit(tasks: 2, runDir: whole, config: cfg, steps: steps, extraArgs: "--ckpt-every 100000") else { return }
        let referenceState = slurm.wait(reference, for: ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"], seconds: 300)
        #expect(referenceState == "COMPLETED", "uninterrupted job: \(referenceState ?? "timed out") \(jobLog(whole).suffix(1500))")

        guard let id = try slurm.submit(tasks: 2, runDir: cut, config: cfg, steps: steps, time: "1", options: ["--signal=TERM@45"],
                                         extraArgs: "--ckpt-every 100000") else { return }
        // Follow the log to time the hand-over: SIGTERM seen by the trainer -> checkpoint written -> requeue -> resumed step.
        var marks: [String: Date] = [:]
        let deadline = Date().addingTimeInterval(600)
        var state = ""
        while Date() < deadline {
            state = slurm.job(id)["JobState"] ?? ""
            let log = jobLog(cut)
            for (mark, needle) in [("signal", "received by a rank"), ("checkpoint", "  checkpoint "),
                                   ("requeue", "requeueing job"), ("resume", "resumed from")] where marks[mark] == nil && log.contains(needle) {
                marks[mark] = Date()
            }
            if marks["resume"] != nil && marks["stepAfterResume"] == nil,
               let first = log.range(of: "resumed from"), log[first.upperBound...].contains("\nstep ") {
                marks["stepAfterResume"] = Date()
            }
            if ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"].contains(state) { break }
            usleep(100_000)
        }
        let log = jobLog(cut)
        #expect(state == "COMPLETED", "job \(id): \(state) \(log.suffix(2000))")
        #expect(log.contains("requeueing job \(id)"), "the job did not requeue itself: \(log.suffix(2000))")
        #expect(Int(slurm.job(id)["Restarts"] ?? "0")! >= 1, "\(slurm.job(id))")
        if let s = marks["signal"], let c = marks["checkpoint"], let q = marks["requeue"], let r = marks["resume"], let f = marks["stepAfterResume"] {
            print(String(format: "time limit: SIGTERM -> checkpoint %.1f s, -> requeue %.1f s, -> resumed %.1f s, -> first step %.1f s",
                         c.timeIntervalSince(s), q.timeIntervalSince(s), r.timeIntervalSince(s), f.timeIntervalSince(s)))
        }
        let resumed = try lossesPerStep(cut), uninterrupted = try losses(whole)
        #expect(resumed == uninterrupted, "requeued run vs uninterrupted run: not bit-identical (\(resumed.count) vs \(uninterrupted.count) steps)")
    }

    /// A resubmission into the same RUN_DIR with another task count resumes: 2 tasks cancelled mid-run, then 1.
    @Test func resubmissionWithOneTaskResumesATwoTaskRun() throws {
        let steps = 400
        guard let (slurm, first, dir, run, cfg) = try twoTaskJobPastStep30("slurm-resubmit", steps: steps) else { return }
        defer { slurm.stop() }
        _ = try slurm.client(["scancel", first])
        slurm.wait(first, for: ["COMPLETED", "CANCELLED", "FAILED"], seconds: 60)
        #expect(waitUntil(seconds: 40) { slurm.trainers(of: first).isEmpty })
        guard let second = try slurm.submit(tasks: 1, runDir: run, config: cfg, steps: steps) else { return }
        let state = slurm.wait(second, for: ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"], seconds: 180)
        let log = jobLog(run)
        #expect(state == "COMPLETED", "job \(second): \(state ?? "timed out") \(log.suffix(1500))")
        #expect(log.contains("1 ranks = 1 nodes x 1") && log.contains("(resuming from step"), "\(log.suffix(2000))")
        expectClose(try lossesPerStep(run), try losses(dir + "/np2"), rel: 1e-5, "np 2 cancelled, resubmitted as np 1")
    }

    /// The node goes down mid-job (`scontrol update state=down`): the job ends without hanging, and once the node
    /// is back the job, which Slurm put back in the queue (#SBATCH --requeue), continues from the newest checkpoint.
    @Test func nodeDownEndsTheJobAndItContinuesFromTheNewestCheckpoint() throws {
        let steps = 400
        guard let (slurm, id, dir, run, cfg) = try twoTaskJobPastStep30("slurm-down", steps: steps) else { return }
        defer { slurm.stop() }
        let node = slurm.job(id)["NodeList"] ?? ""
        let downed = Date()
        let down = try slurm.client(["scontrol", "update", "nodename=\(node)", "state=down", "reason=gpt2-dist-test"])
        #expect(down.status == 0, "\(down.stderr)")
        #expect(waitUntil(seconds: 60) { slurm.trainers(of: id).isEmpty }, "the ranks still run 60 s after the node went down")
        print("node down: ranks gone \(String(format: "%.1f", Date().timeIntervalSince(downed))) s after scontrol")
        let afterDown = slurm.job(id)["JobState"] ?? ""
        #expect(["PENDING", "REQUEUED", "NODE_FAIL", "CANCELLED", "COMPLETED"].contains(afterDown), "\(slurm.job(id))")
        let newest = TrainCheckpoint.newestComplete(directory: run).flatMap { try? ModelFile.load(path: $0).step } ?? 0
        #expect(newest >= 20, "no checkpoint before the node went down")
        let resume = try slurm.client(["scontrol", "update", "nodename=\(node)", "state=resume"])
        #expect(resume.status == 0, "\(resume.stderr)")
        // Requeued by Slurm: it starts again by itself. Otherwise resubmit, as a user would.
        var job = id
        if afterDown != "PENDING" && afterDown != "REQUEUED", let again = try slurm.submit(tasks: 2, runDir: run, config: cfg, steps: steps) {
            job = again
        }
        let state = slurm.wait(job, for: ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"], seconds: 180)
        let log = jobLog(run)
        #expect(state == "COMPLETED", "job \(job): \(state ?? "timed out") \(log.suffix(1500))")
        #expect(log.contains("(resuming from step \(newest))"), "not resumed from the newest checkpoint (step \(newest)): \(log.suffix(2000))")
        expectClose(try lossesPerStep(run), try losses(dir + "/np2"), rel: 1e-5, "node down, resumed")
    }

    /// Slurm across two simulated nodes (`Launch/slurm-local run --sim-nodes 2`: a slurmd per network namespace, each
    /// under its own hostname, over a 1 Gbit/s link): `sbatch --nodes=2` runs one rank per node over TCP, and the
    /// losses equal a single-node mpirun -np 2 run.
    @Test func twoSimulatedNodesRunOneRankEach() throws {
        let (dir, cfg) = try tinyRunWithNp2Reference("slurm-2nodes", dropRate: 0.1, steps: 40)
        let run = dir + "/job"
        let env = LocalSlurm.jobEnvironment(runDir: run, config: cfg, steps: 40)
        let r = try CLI.run(executable: LocalSlurm.script,
                            ["run", "--sim-nodes", "2", "--rate", "1gbit", "--dir", dir + "/slurm", "--", "sbatch", "--wait", "--nodes=2",
                             "--ntasks-per-node=1", "--cpus-per-task=1", "--time=5", "--output=\(run).log", "Launch/slurm.sbatch"],
                            timeout: 300, environment: env, directory: repoRoot)
        let log = jobLog(run)
        #expect(r.status == 0, "exit \(r.status): \(r.stderr.suffix(800)) \(log.suffix(1500))")
        #expect(log.contains("2 ranks = 2 nodes x 1"), "\(log.prefix(800))")
        expectClose(try losses(run), try losses(dir + "/np2"), rel: 1e-5, "sbatch --nodes=2 on simulated nodes vs mpirun -np 2")
        #expect(shell("ip netns list | grep -c gdsim || true").trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                "namespaces left behind: \(shell("ip netns list"))")
    }

    /// The tiny model's uninterrupted mpirun -np 2 run (DIR/np2), then this test's Slurm with a 2-task job of the same
    /// run (checkpoints every 20 steps) that has logged 30 steps. The caller stops the Slurm.
    private func twoTaskJobPastStep30(_ name: String, steps: Int) throws
        -> (slurm: LocalSlurm, id: String, dir: String, run: String, config: String)? {
        let (dir, cfg) = try tinyRunWithNp2Reference(name, dropRate: 0.1, steps: steps)
        guard let slurm = try LocalSlurm.start() else { return nil }
        let run = dir + "/job"
        guard let id = try slurm.submit(tasks: 2, runDir: run, config: cfg, steps: steps, extraArgs: "--ckpt-every 20"),
              waitForLoggedSteps(run, 30, seconds: 120, until: { slurm.ended(id) }) else {
            Issue.record("the job did not log 30 steps: \(jobLog(run).suffix(1500))")
            slurm.stop()
            return nil
        }
        return (slurm, id, dir, run, cfg)
    }

    /// Stale state is cleaned with a one-line message, and setup faults are one-line errors that leave nothing
    /// running: a Slurm left running by an earlier start, a port in use, a missing munge key.
    @Test func staleStateAndSetupFaultsAreOneLineMessages() throws {
        guard let first = try LocalSlurm.start() else { return }
        defer { first.stop() }
        // Started again over a running one (as after an interrupted test): stopped first, with one line saying so.
        let again = try LocalSlurm.control(["start", "--port", LocalSlurm.port], timeout: 120)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("still running: stopping it first"), "\(again.stderr)")
        first.stop()
        #expect(LocalSlurm.runningDaemons.isEmpty, "left after stop: \(LocalSlurm.runningDaemons)")

        // A port in use by another program.
        let listener = Process()
        listener.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        listener.arguments = ["-c", "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                  + "s.bind(('0.0.0.0', 16917)); s.listen(); time.sleep(60)"]
        try listener.run()
        defer { kill(listener.processIdentifier, SIGKILL); listener.waitUntilExit() }  // SIGKILL: the child may inherit a mask that blocks SIGTERM
        #expect(waitUntil(seconds: 10) { shell("ss -Hltn 'sport = :16917'").contains("16917") })
        let busy = try LocalSlurm.control(["start", "--port", "16917"], timeout: 60)
        #expect(busy.status != 0 && busy.stderr.split(separator: "\n").count == 1 && busy.stderr.contains("port 16917 is in use by python3"),
                "\(busy.stderr)")

        // A munge key that is not there.
        let keyless = try LocalSlurm.control(["start", "--munge-key", "/nonexistent/munge.key"], timeout: 60)
        #expect(keyless.status != 0 && keyless.stderr.split(separator: "\n").count == 1 && keyless.stderr.contains("munge.key does not exist"),
                "\(keyless.stderr)")
        #expect(LocalSlurm.runningDaemons.isEmpty, "left after failed starts: \(LocalSlurm.runningDaemons)")
    }
}

/// Waits until `condition` holds (false after `seconds`).
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(100_000)
    }
    return condition()
}
