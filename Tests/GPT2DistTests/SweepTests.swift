import Checkpoint
import Foundation
import GPT2
import Planning
import Testing

/// `sweep plan` through the release binary: the grid (tokens and steps from the budget and 6N + 12LCT), the learning
/// rate rule, flags for memory and epochs, and the sweep file's bad input, each one line naming the field.
@Suite(.serialized) struct SweepPlanTests {
    static func write(_ dir: String, _ fields: [String: Any]) throws -> String {
        var sweep: [String: Any] = ["base_config": "base.json", "depths": [1, 2], "width_per_depth": 32, "head_size": 16,
                                    "budgets": [4e9, 1e9], "batch_size": 4, "seq_len": 32, "lr": 1e-3, "data": tinyTokens, "max_epochs": 2]
        for (k, v) in fields { if v is NSNull { sweep.removeValue(forKey: k) } else { sweep[k] = v } }
        try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 8, "n_heads": 1, "n_layers": 1, "drop_rate": 0.0, "qkv_bias": true}"#
            .write(toFile: dir + "/base.json", atomically: true, encoding: .utf8)
        let path = dir + "/sweep-\(abs(fields.description.hashValue)).json"
        try JSONSerialization.data(withJSONObject: sweep).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func planPrintsTheGridAndFlagsWhatDoesNotFit() throws {
        let dir = tmpDir("sweep")
        let file = try Self.write(dir, [:])
        let sweep = try Sweep.load(path: file)
        let points = try sweep.points()
        #expect(points.map(\.name) == ["c1e09-d1", "c1e09-d2", "c4e09-d1", "c4e09-d2"] && points.map(\.depth) == [1, 2, 1, 2])
        for p in points {
            let perToken = p.config.flopsPerToken(seqLen: 32)
            #expect(p.config.embDim == 32 * p.depth && p.config.nHeads == 2 * p.depth && p.config.vocabSize == 512)
            #expect(p.steps == Int(p.budget / perToken) / (4 * 32) && p.tokens == p.steps * 4 * 32)
            #expect(abs(p.lr - 1e-3 * 32 / Double(p.config.embDim)) < 1e-15)  // inverse-width, base width = width_per_depth
        }
        let r = try CLI.run(["sweep", "plan", file])
        #expect(r.status == 0, "\(r.stderr)")
        for p in points { #expect(r.stdout.contains(p.name) && r.stdout.contains(" \(p.steps) ")) }
        #expect(r.stdout.contains("total predicted") && r.stdout.contains("epochs > max_epochs"), "\(r.stdout)")
        let small = try CLI.run(["sweep", "plan", file, "--memory-gib", "0.001"])
        #expect(small.status == 0 && small.stdout.contains("does not fit"), "\(small.stdout)")
    }

    @Test func badSweepFilesAreOneLineNamingTheField() throws {
        let dir = tmpDir("sweep-bad")
        for (fields, needle) in [(["depth_list": [1]], "unknown key \"depth_list\""), (["lr": NSNull()], "missing \"lr\""),
                                 (["budgets": [1e3]], "\"budgets\""), (["head_size": 24], "\"head_size\""),
                                 (["depths": [1, 0]], "\"depths\""), (["lr_rule": "sqrt"], "\"lr_rule\"")] as [([String: Any], String)] {
            expectOneLineError(try CLI.run(["sweep", "plan", try Self.write(dir, fields)]), "sweep file with \(fields)", mentioning: needle)
        }
        expectOneLineError(try CLI.run(["sweep", "plan", dir + "/none.json"]), "a missing sweep file", mentioning: "cannot read")
    }
}

/// `sweep run` through the release binary: every point a finished run directory; run again, finished points are
/// skipped; a SIGTERM to the sweep stops the running point with a checkpoint (exit 130) and the next run resumes it
/// to the same losses as a sweep that was never interrupted.
@Suite(.serialized) struct SweepRunTests {
    @Test func runsSkipsAndResumes() throws {
        let dir = tmpDir("sweep-run")
        let file = try SweepPlanTests.write(dir, ["budgets": [1e10, 1.2e11], "val": tinyTokens, "warmup_steps": 2])
        let points = try Sweep.load(path: file).points()
        #expect(points.allSatisfy { $0.steps >= 4 }, "\(points.map(\.steps))")
        let whole = try CLI.run(["sweep", "run", file, "--out", dir + "/whole"], timeout: 600)
        #expect(whole.status == 0, "\(whole.stderr)")
        for p in points {
            let status = try RunStatus.read(runDirectory: dir + "/whole/" + p.name)
            #expect(status?.state == .finished && status?.step == p.steps, "\(p.name): \(String(describing: status))")
            #expect(try MetricsLog.read(path: dir + "/whole/\(p.name)/metrics.h5")["val_loss"]?.count == 1)
        }
        let again = try CLI.run(["sweep", "run", file, "--out", dir + "/whole"])
        #expect(again.status == 0 && again.stdout.components(separatedBy: "finished already").count - 1 == points.count, "\(again.stdout)")

        // Interrupted in its last point, then resumed.
        let out = dir + "/split", last = points.last!
        let sweep = CLI.process(ranks: 0, ["sweep", "run", file, "--out", out])
        try CLI.startAsFromShell(sweep, logPath: dir + "/split.log")
        let deadline = Date().addingTimeInterval(300)
        while Date() < deadline, ((try? RunStatus.read(runDirectory: out + "/" + last.name))??.step ?? 0) < 1 { usleep(20_000) }
        kill(sweep.processIdentifier, SIGTERM)
        sweep.waitUntilExit()
        #expect(sweep.terminationStatus == 130)
        let stopped = try RunStatus.read(runDirectory: out + "/" + last.name)
        #expect(stopped?.state == .stopped && (stopped?.step ?? 0) < last.steps, "\(String(describing: stopped))")

        // A report now: the finished points, the unfinished one named and left out.
        let plan = try CLI.run(["sweep", "plan", file, "--csv", out + "/plan.csv"])
        #expect(plan.status == 0, "\(plan.stderr)")
        let partial = try CLI.run(["sweep", "report", out, "--threads", "2"])
        #expect(partial.status == 0, "\(partial.stderr)")
        #expect(partial.stdout.contains("\(points.count - 1) of \(points.count) points finished")
                && partial.stdout.contains("unfinished (left out): \(last.name) (stopped at step \(stopped?.step ?? -1) of \(last.steps))"),
                "\(partial.stdout)")

        let resumed = try CLI.run(["sweep", "run", file, "--out", out], timeout: 600)
        #expect(resumed.status == 0 && resumed.stdout.contains("resuming"), "\(resumed.stdout)\(resumed.stderr)")
        for p in points { #expect(try lossesPerStep(out + "/" + p.name) == lossesPerStep(dir + "/whole/" + p.name), "\(p.name)") }

        // The whole report: the one new point evaluated (the others' evaluations kept), a row per point in sweep.csv
        // with the validation loss over the whole split (as `eval --batches 0` computes it) and the predicted time.
        let report = try CLI.run(["sweep", "report", out, "--threads", "2"])
        #expect(report.status == 0, "\(report.stderr)")
        #expect(report.stdout.components(separatedBy: " evaluated: ").count - 1 == 1 && report.stdout.contains("\(last.name) evaluated"),
                "\(report.stdout)")
        #expect(report.stdout.contains("no fit"), "two depths give no parabola: \(report.stdout)")
        let csv = try String(contentsOfFile: out + "/sweep.csv", encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        let header = csv[0].map(String.init)
        #expect(csv.count == points.count + 1 && header.contains("val_loss") && header.contains("predicted_seconds"), "\(csv)")
        let column = { (name: String) in header.firstIndex(of: name)! }
        for (p, row) in zip(points, csv.dropFirst()) {
            #expect(String(row[0]) == p.name && String(row[column("state")]) == "finished")
            let full = try CLI.run(["eval", "--checkpoint", out + "/" + p.name, "--data", tinyTokens, "--batch-size", "4", "--seq-len", "32",
                                    "--batches", "0", "--json"])
            let loss = try #require(Double(full.stdout.split(separator: ":").last!.dropLast(2).trimmingCharacters(in: .whitespaces)), "\(full.stdout)")
            #expect(abs(Double(row[column("val_loss")])! - loss) < 1e-5 * loss, "\(p.name): report \(row[column("val_loss")]) vs eval \(loss)")
            #expect(Double(row[column("predicted_seconds")]) != nil && Double(row[column("train_seconds")])! > 0)
        }
        for svg in ["isoflop.svg", "law.svg"] { #expect(FileManager.default.fileExists(atPath: out + "/" + svg)) }
        expectOneLineError(try CLI.run(["sweep", "run", file, "--out", out, "--launcher", "ssh"]), "--launcher ssh", mentioning: "--launcher")
        // No sbatch on PATH: one line, and nothing started or written.
        expectOneLineError(try CLI.run(["sweep", "run", file, "--out", dir + "/nowhere", "--launcher", "slurm"], environment: ["PATH": "/nonexistent"]),
                           "--launcher slurm without sbatch", mentioning: "no sbatch on PATH")
        #expect(!FileManager.default.fileExists(atPath: dir + "/nowhere"))
        // The same directory with another recipe: refused, naming the key.
        let other = try SweepPlanTests.write(dir, ["budgets": [1e10, 1.2e11], "val": tinyTokens, "warmup_steps": 3])
        expectOneLineError(try CLI.run(["sweep", "run", other, "--out", out]), "a changed recipe", mentioning: "warmup_steps")
        expectOneLineError(try CLI.run(["sweep", "report", dir]), "report of a directory without sweep.json", mentioning: "sweep.json")
    }
}

/// In SlurmTests (root, serialized): every test there shares one Launch/slurm-local directory and port, and suites
/// run in parallel, so a Slurm test outside that suite would stop another's Slurm by starting its own.
extension SlurmTests {
    /// `sweep run --launcher slurm` on a real Slurm (Launch/slurm-local): one job per point through slurm.sbatch, the
    /// same losses as the local launcher; a SIGTERM while it waits cancels the jobs (running points checkpoint), and
    /// the next run resubmits only what is unfinished and resumes it.
    @Test func sweepSlurmLauncherMatchesLocalAndResumes() throws {
        let dir = tmpDir("sweep-slurm")
        let file = try SweepPlanTests.write(dir, ["budgets": [1e10, 1.2e11], "val": tinyTokens, "warmup_steps": 2])
        let points = try Sweep.load(path: file).points()
        let local = try CLI.run(["sweep", "run", file, "--out", dir + "/local"], timeout: 600)
        #expect(local.status == 0, "\(local.stderr)")
        guard let slurm = try LocalSlurm.start() else { return }
        defer { slurm.stop() }
        let out = dir + "/slurm", last = points.last!
        let sweep = CLI.process(ranks: 0, ["sweep", "run", file, "--out", out, "--launcher", "slurm", "--sbatch-arg=--time=10"])
        sweep.environment!["SLURM_CONF"] = slurm.conf
        try CLI.startAsFromShell(sweep, logPath: dir + "/slurm.log")
        let deadline = Date().addingTimeInterval(300)
        while Date() < deadline, ((try? RunStatus.read(runDirectory: out + "/" + last.name))??.step ?? 0) < 1 { usleep(50_000) }
        kill(sweep.processIdentifier, SIGTERM)
        #expect(CLI.wait(sweep, seconds: 120))
        let log = (try? String(contentsOfFile: dir + "/slurm.log", encoding: .utf8)) ?? ""
        #expect(sweep.terminationStatus == 130 && log.contains("cancelling the sweep's jobs"), "\(log)")
        #expect(try slurm.client(["squeue", "-h"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "jobs left in Slurm")
        let stopped = try RunStatus.read(runDirectory: out + "/" + last.name)
        #expect(stopped?.state == .stopped && (stopped?.step ?? 0) < last.steps, "\(String(describing: stopped)) \(log)")

        // (Points of one thread each: Slurm runs two at once on two CPUs, so more than the last may be unfinished.)
        let unfinished = points.filter { (try? RunStatus.read(runDirectory: out + "/" + $0.name))??.state != .finished }
        let resumed = try CLI.run(["sweep", "run", file, "--out", out, "--launcher", "slurm"], timeout: 600, environment: ["SLURM_CONF": slurm.conf])
        #expect(resumed.status == 0, "\(resumed.stdout)\(resumed.stderr)")
        #expect(resumed.stdout.components(separatedBy: "sweep: submitted").count - 1 == unfinished.count
                && unfinished.allSatisfy { resumed.stdout.contains("submitted \($0.name)") } && unfinished.count < points.count,
                "only the unfinished points (\(unfinished.map(\.name))) are submitted again: \(resumed.stdout)")
        let jobLog = (try? String(contentsOfFile: out + "/\(last.name)/slurm-" + (try String(contentsOfFile: out + "/\(last.name)/slurm_job", encoding: .utf8))
            .trimmingCharacters(in: .whitespacesAndNewlines) + ".out", encoding: .utf8)) ?? ""
        #expect(jobLog.contains("resuming from step"), "\(jobLog.suffix(1500))")
        for p in points { #expect(try lossesPerStep(out + "/" + p.name) == lossesPerStep(dir + "/local/" + p.name), "\(p.name)") }
    }
}
