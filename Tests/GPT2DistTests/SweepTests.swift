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
        let resumed = try CLI.run(["sweep", "run", file, "--out", out], timeout: 600)
        #expect(resumed.status == 0 && resumed.stdout.contains("resuming"), "\(resumed.stdout)\(resumed.stderr)")
        for p in points { #expect(try lossesPerStep(out + "/" + p.name) == lossesPerStep(dir + "/whole/" + p.name), "\(p.name)") }
        expectOneLineError(try CLI.run(["sweep", "run", file, "--out", out, "--launcher", "ssh"]), "--launcher ssh", mentioning: "--launcher")
    }
}
