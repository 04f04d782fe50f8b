import Checkpoint
import Data
import Distributed
import Foundation
import GPT2
import Testing
import Training
import Machine

/// Runs the release binary, the one users run (Launch/test builds it first; $GPT2DIST_BINARY overrides it),
/// under mpirun when ranks > 0.
struct CLI {
    static let path: String = {
        if let b = ProcessInfo.processInfo.environment["GPT2DIST_BINARY"], !b.isEmpty { return b }
        return repoRoot + "/.build/release/gpt2-dist"
    }()

    /// The binary to run; a test that asks for it fails when it is missing or stale (`staleness`).
    static var binary: String {
        if let problem = staleness { Issue.record(Comment(rawValue: problem)) }
        return path
    }

    /// Why the release binary cannot be what these sources build (missing, or built from other sources than these:
    /// Launch/setup records the SHA-256 of Package.swift and Sources/ beside the binary once it has built it); nil when
    /// it is current. Every test that runs it then fails with this message: a plain `swift test` never runs a stale binary.
    static let staleness: String? = {
        if ProcessInfo.processInfo.environment["GPT2DIST_BINARY"].map({ !$0.isEmpty }) == true { return nil }
        guard FileManager.default.isExecutableFile(atPath: path) else {
            return "no release binary at \(path): run the tests through Launch/test (it builds it)"
        }
        let built = (try? String(contentsOfFile: path + ".sources-sha256", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        var hash = SHA256()
        let sources = (FileManager.default.enumerator(atPath: repoRoot + "/Sources")?.compactMap { $0 as? String } ?? [])
            .filter { !FileManager.default.directoryExists(repoRoot + "/Sources/" + $0) }
            .map { "Sources/" + $0 }.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        for file in ["Package.swift"] + sources {
            hash.update(FileManager.default.contents(atPath: repoRoot + "/" + file) ?? Data())
        }
        guard built == hash.finalizeHex() else {
            return "the release binary \(path) was not built from these sources: run the tests through Launch/test (it builds it)"
        }
        return nil
    }()

    struct Result { var status: Int32; var stdout: String; var stderr: String }

    /// A child mpirun must not inherit OMPI_*/PMIX_* variables (it would exit silently).
    static var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("OMPI_") && !$0.key.hasPrefix("PMIX_") }
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        return env
    }

    /// `graceful`: give ranks time after SIGTERM (mpirun then also waits that long after any failed rank).
    static func process(ranks: Int, _ args: [String], graceful: Bool = false) -> Process {
        let p = Process()
        if ranks > 0 {
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["mpirun", "-np", String(ranks), "--oversubscribe", "--bind-to", "none"]
                + (graceful ? ["--mca", "odls_base_sigkill_timeout", "30"] : []) + [binary] + args
        } else {
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = args
        }
        p.environment = environment
        return p
    }

    /// Starts `p` as a shell would, with an empty signal mask (a child inherits the mask of the test's thread,
    /// which may block SIGTERM/SIGINT), its output going to `logPath` (the test never stops reading a file; a
    /// pipe that nobody drains blocks mpirun).
    static func startAsFromShell(_ p: Process, logPath: String) throws {
        p.arguments = ["-c", "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execvp(sys.argv[1], sys.argv[1:])",
                       p.executableURL!.path] + (p.arguments ?? [])
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        p.standardOutput = log; p.standardError = log
        try p.run()
    }

    /// Waits for `p` at most `seconds`, then SIGKILLs it; returns whether it ended by itself in time.
    @discardableResult
    static func wait(_ p: Process, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        guard p.isRunning else { return true }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        return false
    }

    @discardableResult
    static func run(ranks: Int = 0, _ args: [String], timeout: Double = 180, environment extra: [String: String] = [:]) throws -> Result {
        let p = process(ranks: ranks, args)
        p.environment = environment.merging(extra) { $1 }
        return try run(p, timeout: timeout)
    }

    /// Any program, with the tests' environment plus `environment`, in `directory` (default: the current one).
    @discardableResult
    static func run(executable: String, _ args: [String], timeout: Double = 180, environment extra: [String: String] = [:],
                    directory: String? = nil) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.environment = environment.merging(extra) { $1 }
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        return try run(p, timeout: timeout)
    }

    private static func run(_ p: Process, timeout: Double) throws -> Result {
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        // A hung job fails the test instead of stalling the suite.
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        defer { watchdog.cancel() }
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        let status = waitForExit(p)
        return Result(status: status, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    /// `p`'s exit status. Foundation on Linux occasionally misses a child's exit (seen once here: `slurm-local start`
    /// left a zombie that Process never reaped, and `waitUntilExit` hung the suite); a child that has been a zombie
    /// for 3 s is reaped here instead.
    static func waitForExit(_ p: Process) -> Int32 {
        var zombieSince: Date?
        while p.isRunning {
            let state = (try? String(contentsOfFile: "/proc/\(p.processIdentifier)/stat", encoding: .utf8))?
                .split(separator: ")").last?.split(separator: " ").first
            if state == "Z" {
                if let since = zombieSince, Date().timeIntervalSince(since) > 3 {
                    var status: Int32 = 0
                    if waitpid(p.processIdentifier, &status, WNOHANG) == p.processIdentifier {
                        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
                    }
                }
                zombieSince = zombieSince ?? Date()
            }
            usleep(10_000)
        }
        return p.terminationStatus
    }
}

let tinyTokens = fixtures + "/tiny-gpt2/tokens.bin"

func writeConfig(_ dir: String, dropRate: Double) throws -> String {
    let path = dir + "/model.json"
    try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": \#(dropRate), "qkv_bias": true}"#
        .write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

func trainArgs(config: String, out: String, steps: Int, extra: [String] = []) -> [String] {
    ["train", "--config", config, "--data", tinyTokens, "--out", out, "--steps", String(steps), "--batch-size", "4",
     "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "2", "--threads", "1", "--seed", "5"] + extra
}

/// A fresh test directory NAME with the tiny model's config and its uninterrupted `mpirun -np 2` run of `steps`
/// steps in DIR/np2, the reference other launchers' losses are compared with.
func tinyRunWithNp2Reference(_ name: String, dropRate: Double, steps: Int) throws -> (dir: String, config: String) {
    let dir = tmpDir(name)
    let cfg = try writeConfig(dir, dropRate: dropRate)
    let reference = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/np2", steps: steps))
    #expect(reference.status == 0, "\(reference.stderr)")
    return (dir, cfg)
}

func losses(_ out: String) throws -> [Double] { try MetricsLog.read(path: out + "/metrics.h5")["train_loss"] ?? [] }

/// The loss of each step, the last logged for it (a run resumed after a crash logs again the steps after its checkpoint).
func lossesPerStep(_ out: String) throws -> [Double] {
    let m = try MetricsLog.read(path: out + "/metrics.h5")
    return MetricsLog.lastPerStep(m["step"] ?? [], m["train_loss"] ?? []).values
}

func expectClose(_ a: [Double], _ b: [Double], rel: Double, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, "\(what): \(a.count) vs \(b.count) steps", sourceLocation: sourceLocation)
    for (i, (x, y)) in zip(a, b).enumerated() {
        #expect(abs(x - y) <= rel * abs(y), "\(what): step \(i + 1) loss \(x) vs \(y)", sourceLocation: sourceLocation)
    }
}

/// mpirun must start a new job per test: these run one after another.
@Suite(.serialized) struct MultiRankTests {
    @Test func rankCountDoesNotChangeLosses() throws {
        let dir = tmpDir("ranks")
        let cfg = try writeConfig(dir, dropRate: 0.1)  // dropout masks must not depend on the rank count either
        var results: [Int: [Double]] = [:]
        for np in [1, 2, 4] {
            let r = try CLI.run(ranks: np, trainArgs(config: cfg, out: dir + "/np\(np)", steps: 6))
            #expect(r.status == 0, "np \(np) failed: \(r.stderr)")
            results[np] = try losses(dir + "/np\(np)")
        }
        #expect(results[1]!.count == 6)
        expectClose(results[2]!, results[1]!, rel: 1e-5, "np 2 vs np 1")
        expectClose(results[4]!, results[1]!, rel: 1e-5, "np 4 vs np 1")
        #expect(results[1]!.last! < results[1]!.first!, "loss did not decrease: \(results[1]!)")
        // A shuffled span order is also a function of the seed alone.
        for np in [1, 2] {
            let r = try CLI.run(ranks: np, trainArgs(config: cfg, out: dir + "/shuffle\(np)", steps: 6, extra: ["--shuffle"]))
            #expect(r.status == 0, "\(r.stderr)")
        }
        let shuffled = try losses(dir + "/shuffle1")
        expectClose(try losses(dir + "/shuffle2"), shuffled, rel: 1e-5, "--shuffle np 2 vs np 1")
        #expect(shuffled != results[1]!, "--shuffle did not change the data order")
    }

    @Test func gradientAccumulationEqualsLargeMicroBatch() throws {
        let dir = tmpDir("accum")
        let cfg = try writeConfig(dir, dropRate: 0.1)
        let a = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/micro1", steps: 5, extra: ["--micro-batch-size", "1"]))
        #expect(a.status == 0, "\(a.stderr)")
        let b = try CLI.run(ranks: 1, trainArgs(config: cfg, out: dir + "/micro4", steps: 5))
        #expect(b.status == 0, "\(b.stderr)")
        expectClose(try losses(dir + "/micro1"), try losses(dir + "/micro4"), rel: 1e-5, "micro 1 x 2 ranks x 2 accumulation vs micro 4")
    }

    @Test func resumeIsBitIdentical() throws {
        let dir = tmpDir("resume")
        let cfg = try writeConfig(dir, dropRate: 0.1)
        let straight = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/straight", steps: 20))
        #expect(straight.status == 0, "\(straight.stderr)")
        let first = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/split", steps: 10))
        #expect(first.status == 0, "\(first.stderr)")
        let second = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/split", steps: 20, extra: ["--resume"]))
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout.contains("resumed from"))
        let a = try losses(dir + "/straight"), b = try losses(dir + "/split")
        #expect(a.count == 20 && a == b, "resume changed losses:\n\(a)\n\(b)")
        // A different rank count resumes too, equal within float tolerance.
        let other = try CLI.run(ranks: 1, trainArgs(config: cfg, out: dir + "/split", steps: 25, extra: ["--resume"]))
        #expect(other.status == 0, "\(other.stderr)")
        let more = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/straight", steps: 25, extra: ["--resume"]))
        #expect(more.status == 0, "\(more.stderr)")
        expectClose(Array(try losses(dir + "/split").suffix(5)), Array(try losses(dir + "/straight").suffix(5)), rel: 1e-5,
                    "resume at np 1 vs np 2")
    }

    @Test func zeroOneMatchesPlainDataParallelAndResumesAnywhere() throws {
        let dir = tmpDir("zero")
        let cfg = try writeConfig(dir, dropRate: 0.1)
        // np 3 must exercise uneven parts: some bucket of this model does not divide by 3.
        let model = try GPT2Config.load(path: cfg)
        let buckets = BucketSchedule(regions: model.gradientRegions, bucketFloats: Int(BucketSchedule.defaultBucketMb * 1_048_576 / 4)).buckets
        try #require(buckets.contains { Set(BucketedAllReduce.parts(ofBucket: $0.range.count, ranks: 3).counts).count > 1 })
        let b12 = ["--batch-size", "12"]  // divisible by 2, 3 and 4 ranks
        let plain = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/plain", steps: 6, extra: b12))
        #expect(plain.status == 0, "\(plain.stderr)")
        let reference = try losses(dir + "/plain")
        for np in [2, 3, 4] {
            let r = try CLI.run(ranks: np, trainArgs(config: cfg, out: dir + "/zero\(np)", steps: 6, extra: ["--zero", "1"] + b12))
            #expect(r.status == 0, "np \(np) --zero 1: \(r.stderr)")
            #expect(r.stdout.contains("ZeRO-1"))
            expectClose(try losses(dir + "/zero\(np)"), reference, rel: 1e-5, "ZeRO-1 at np \(np) vs plain np 2")
        }
        // A ZeRO-1 checkpoint written at np 4 is complete: resume it at np 2 without sharding, and the plain run
        // resumed at np 2 gives the same losses.
        let a = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/zero4", steps: 9, extra: ["--resume"] + b12))
        #expect(a.status == 0, "\(a.stderr)")
        let b = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/plain", steps: 9, extra: ["--resume"] + b12))
        #expect(b.status == 0, "\(b.stderr)")
        expectClose(try losses(dir + "/zero4"), try losses(dir + "/plain"), rel: 1e-5, "resumed from ZeRO np 4 at np 2")
        // Recomputing activations (here together with ZeRO-1) changes memory, not losses.
        let rc = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/recompute", steps: 6, extra: ["--recompute", "--zero", "1"] + b12))
        #expect(rc.status == 0, "\(rc.stderr)")
        expectClose(try losses(dir + "/recompute"), reference, rel: 1e-5, "--recompute --zero 1 vs plain")
    }

    @Test func predictedMemoryMatchesMeasuredPeakRSS() throws {
        let dir = tmpDir("memory")
        for zero in ["0", "1"] {
            let r = try CLI.run(ranks: 2, ["train", "--config", repoRoot + "/Configs/gpt2-small-cpu.json", "--data", tinyTokens,
                                           "--out", dir + "/z" + zero, "--steps", "2", "--batch-size", "8", "--seq-len", "64",
                                           "--threads", "1", "--zero", zero])
            #expect(r.status == 0, "\(r.stderr)")
            func mib(_ s: Substring) -> Double {
                let parts = s.trimmingCharacters(in: .whitespaces).split(separator: " ")
                let v = Double(parts[0]) ?? 0
                return parts.count > 1 && parts[1] == "GiB" ? v * 1024 : parts.count > 1 && parts[1] == "KiB" ? v / 1024 : v
            }
            guard let predictedLine = r.stdout.split(separator: "\n").first(where: { $0.contains("memory per rank (predicted)") }),
                  let rss = try RunStatus.read(runDirectory: dir + "/z" + zero)?.peakRSSBytes else {
                Issue.record("train did not report memory:\n\(r.stdout)")
                continue
            }
            let rank0 = mib(predictedLine.split(separator: ":")[1].split(separator: "=")[0])
            // With ZeRO-1 rank 0 alone holds the checkpoint gather buffer; the line then gives the other ranks' total.
            let others = predictedLine.components(separatedBy: "ranks > 0: ").dropFirst().first.map { mib(Substring($0.dropLast())) } ?? rank0
            let measured = rss.map { Double($0) / 1_048_576 }
            for (rank, m) in measured.enumerated() {
                let predicted = rank == 0 ? rank0 : others
                #expect(abs(m - predicted) <= 0.15 * predicted, "zero \(zero) rank \(rank): measured \(m) MiB vs predicted \(predicted) MiB")
            }
        }
    }

    @Test func nonFiniteStepsAreSkippedThenAbortWithoutCheckpoint() throws {
        let dir = tmpDir("nonfinite")
        let cfg = try writeConfig(dir, dropRate: 0)
        // An absurd learning rate makes the weights overflow after the first update.
        let r = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/run", steps: 20, extra: ["--lr", "1e30", "--grad-clip", "0"]))
        #expect(r.status != 0)
        #expect(r.stdout.contains("update skipped"), "\(r.stdout)")
        #expect(r.stderr.contains("non-finite steps in a row"), "\(r.stderr)")
        #expect(TrainCheckpoint.list(directory: dir + "/run").isEmpty, "a checkpoint was written from non-finite weights")
    }

    @Test(.enabled(if: Runtime.preferredCoreType() != nil, "needs a CPU with AVX2 and FMA (elsewhere OpenBLAS picks its kernel itself)"))
    func picksAFastOpenBLASKernelWhenUnset() throws {
        let expected = try #require(Runtime.preferredCoreType())
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["bench", "--config", repoRoot + "/Configs/gpt2-tiny-test.json", "--batch-size", "1", "--seq-len", "8",
                       "--steps", "1", "--threads", "1"]
        var env = CLI.environment
        env["OPENBLAS_CORETYPE"] = nil
        env["GPT2DIST_REEXECED"] = nil
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(text.contains("OpenBLAS \(expected) kernel"), "\(text)")
    }

    @Test func sigtermStopsAllRanksWithACheckpoint() throws {
        let dir = tmpDir("sigterm")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let p = CLI.process(ranks: 2, trainArgs(config: cfg, out: out, steps: 100_000), graceful: true)
        let so = Pipe(), se = Pipe()
        p.standardOutput = so; p.standardError = se
        try p.run()
        // Wait until training runs, then signal ONE rank (as a cluster preempting a node would).
        let deadline = Date().addingTimeInterval(60)
        var rankPID: Int32?
        while Date() < deadline {
            if let m = try? MetricsLog.read(path: out + "/metrics.h5"), (m["step"]?.count ?? 0) >= 3 {
                rankPID = childPIDs(of: p.processIdentifier).last
                if rankPID != nil { break }
            }
            usleep(100_000)
        }
        guard let pid = rankPID else {
            p.terminate()
            Issue.record("training did not start")
            return
        }
        kill(pid, SIGTERM)
        let o = so.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: o, as: UTF8.self)
        #expect(p.terminationStatus == 0, "mpirun exit \(p.terminationStatus): \(text.suffix(500))")
        #expect(text.contains("SIGTERM received by a rank"))
        let ckpt = TrainCheckpoint.newestComplete(directory: out)
        #expect(ckpt != nil)
        let stopped = try losses(out).count
        let r = try CLI.run(ranks: 2, trainArgs(config: cfg, out: out, steps: stopped + 3, extra: ["--resume"]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try losses(out).count == stopped + 3)
    }

    @Test func brokenNewestCheckpointFallsBackToPreviousOne() throws {
        let dir = tmpDir("crash")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let r = try CLI.run(ranks: 1, trainArgs(config: cfg, out: out, steps: 4, extra: ["--ckpt-every", "2"]))
        #expect(r.status == 0, "\(r.stderr)")
        // What a kill -9 in the middle of writing step 6 could leave: a half-written temporary file, and even a
        // truncated file under the final name with `latest` pointing at it.
        let good = out + "/" + TrainCheckpoint.fileName(step: 4)
        let data = try Data(contentsOf: URL(fileURLWithPath: good))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: out + "/" + TrainCheckpoint.fileName(step: 6)))
        try data.prefix(1000).write(to: URL(fileURLWithPath: out + "/.ckpt-00000008.h5.tmp-123"))
        try "ckpt-00000006.h5\n".write(toFile: out + "/latest", atomically: true, encoding: .utf8)
        #expect(TrainCheckpoint.newestComplete(directory: out) == good)
        let again = try CLI.run(ranks: 1, trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume"]))
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stdout.contains("resumed from \(good) at step 4"))
        // The killed run's temporary file is removed, and the user is told.
        #expect(!FileManager.default.fileExists(atPath: out + "/.ckpt-00000008.h5.tmp-123"))
        #expect(again.stdout.contains("removed \(out)/.ckpt-00000008.h5.tmp-123"), "\(again.stdout)")
    }

    @Test func killDuringTrainingNeverLeavesAnUnreadableNewestCheckpoint() throws {
        let dir = tmpDir("kill9")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        for delay in [0.35, 0.55, 0.8] {
            let p = CLI.process(ranks: 0, trainArgs(config: cfg, out: out, steps: 100_000, extra: ["--ckpt-every", "1", "--keep-checkpoints", "2"]
                                                    + (FileManager.default.fileExists(atPath: out + "/latest") ? ["--resume"] : [])))
            p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(useconds_t(delay * 1_000_000) + 400_000)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if let c = TrainCheckpoint.newestComplete(directory: out) {
                #expect(try ModelFile.load(path: c).step > 0)
            }
        }
        let r = try CLI.run(ranks: 0, trainArgs(config: cfg, out: out, steps: 1, extra: ["--resume"]))
        // Either resumes (and has nothing left to do) or had no complete checkpoint yet: never a read error.
        #expect(!r.stderr.contains("corrupt") && !r.stderr.contains("cannot open"), "\(r.stderr)")
    }

    @Test func badInputsFailWithOneLineAndTouchNothing() throws {
        let dir = tmpDir("bad")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        #expect(try CLI.run(ranks: 1, trainArgs(config: cfg, out: out, steps: 2)).status == 0)
        func snapshot() -> [String: Data] {
            var s: [String: Data] = [:]
            for f in (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? [] {
                s[f] = FileManager.default.contents(atPath: out + "/" + f)
            }
            return s
        }
        let before = snapshot()
        let wrongMagic = dir + "/magic.bin", badToken = dir + "/token.bin", truncated = dir + "/trunc.bin"
        var header = [Int32](repeating: 0, count: 256)
        header[0] = 1234; header[1] = 1; header[2] = 10
        try (Data(bytes: header, count: 1024) + Data(count: 20)).write(to: URL(fileURLWithPath: wrongMagic))
        header[0] = 20_240_520
        var tokens = [UInt16](repeating: 3, count: 10); tokens[7] = 600
        try (Data(bytes: header, count: 1024) + Data(bytes: tokens, count: 20)).write(to: URL(fileURLWithPath: badToken))
        try (Data(bytes: header, count: 1024) + Data(count: 7)).write(to: URL(fileURLWithPath: truncated))
        let otherCfg = dir + "/other.json"
        try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0, "qkv_bias": true}"#
            .write(toFile: otherCfg, atomically: true, encoding: .utf8)
        let badJSON = dir + "/bad.json"
        try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 30, "n_heads": 4, "n_layers": 2, "drop_rate": 0, "qkv_bias": true}"#
            .write(toFile: badJSON, atomically: true, encoding: .utf8)
        let fileNotDir = dir + "/plainfile"
        try "x".write(toFile: fileNotDir, atomically: true, encoding: .utf8)

        let cases: [(String, Int, [String], String)] = [
            ("missing data", 1, ["train", "--config", cfg, "--data", dir + "/nope.bin", "--out", out, "--resume", "--seq-len", "32"], "no token files"),
            ("wrong magic", 1, ["train", "--config", cfg, "--data", wrongMagic, "--out", out, "--resume", "--seq-len", "4"], "magic"),
            ("token out of range", 1, ["train", "--config", cfg, "--data", badToken, "--out", out, "--resume", "--seq-len", "4"], "out of range"),
            ("truncated tokens", 1, ["train", "--config", cfg, "--data", truncated, "--out", out, "--resume", "--seq-len", "4"], "truncated"),
            ("seq-len too long", 1, trainArgs(config: cfg, out: out, steps: 3, extra: ["--seq-len", "65", "--resume"]), "context_length"),
            ("batch not divisible", 2, trainArgs(config: cfg, out: out, steps: 3, extra: ["--batch-size", "3", "--resume"]), "divisible"),
            ("config mismatch on resume", 1, trainArgs(config: otherCfg, out: out, steps: 3, extra: ["--resume"]), "differs"),
            ("invalid config", 1, trainArgs(config: badJSON, out: out, steps: 3, extra: ["--resume"]), "divisible by n_heads"),
            ("existing run without --resume", 1, trainArgs(config: cfg, out: out, steps: 3), "--resume"),
            ("unwritable out", 1, trainArgs(config: cfg, out: fileNotDir + "/run", steps: 3), "--out"),
            ("init with another config", 1, trainArgs(config: otherCfg, out: dir + "/fresh", steps: 3,
                                                     extra: ["--init", out + "/" + TrainCheckpoint.fileName(step: 2)]), "differs"),
        ]
        for (name, np, args, needle) in cases {
            let t0 = Date()
            let r = try CLI.run(ranks: np, args, timeout: 60)
            #expect(Date().timeIntervalSince(t0) < 50, "\(name): took \(Date().timeIntervalSince(t0)) s")
            #expect(r.status != 0, "\(name): exit status 0")
            let lines = r.stderr.split(separator: "\n").filter { $0.contains("gpt2-dist: error") }
            #expect(lines.count == 1, "\(name): expected one error line, got:\n\(r.stderr)")
            #expect(r.stderr.contains(needle), "\(name): error does not mention \(needle):\n\(r.stderr)")
        }
        #expect(snapshot() == before, "a failed run changed files in --out")
    }
}

/// Direct children of a process (the ranks mpirun started).
func childPIDs(of parent: Int32) -> [Int32] {
    var found: [Int32] = []
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8) else { continue }
        let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
        if fields.count > 2, Int32(fields[1]) == parent { found.append(pid) }
    }
    return found.sorted()
}

extension MultiRankTests {
    @Test func aDeadRankEndsTheJobInsteadOfHanging() throws {
        let dir = tmpDir("deadrank")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let p = CLI.process(ranks: 2, trainArgs(config: cfg, out: out, steps: 100_000))
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice; p.standardError = err
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ((try? MetricsLog.read(path: out + "/metrics.h5"))?["step"]?.count ?? 0) < 3 { usleep(100_000) }
        guard let victim = childPIDs(of: p.processIdentifier).last else { p.terminate(); Issue.record("no ranks"); return }
        let killed = Date()
        kill(victim, SIGKILL)
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        watchdog.cancel()
        #expect(p.terminationStatus != 0)
        #expect(Date().timeIntervalSince(killed) < 30, "the job hung after a rank died")
        #expect(text.contains("signal 9") || text.contains("Killed"), "\(text)")
    }
}

extension FileManager {
    func directoryExists(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}
