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
