import Checkpoint
import Foundation
import GPT2
import Tasks
import Testing
@testable import Training

/// HellaSwag as lm-evaluation-harness scores it, against transformers on a small GPT-2 with GPT-2's vocabulary
/// (Tests/Fixtures/make_hellaswag_fixtures.py: 250 items, rows longer than its 64 positions cut from the left), and
/// the task's bad input.
@Suite(.serialized) struct HellaSwagTests {
    static let dir = fixtures + "/hellaswag"

    @Test func logLikelihoodsMatchTransformers() throws {
        guard let tokenizer = try loadVocabulary() else { return }
        let model = try HuggingFace.load(directory: Self.dir + "/hf")
        let items = try ChoiceTask.hellaswag.load(path: Self.dir + "/requests.jsonl.gz", tokenizer: tokenizer)
        let expected = try SafeTensorsFile(path: Self.dir + "/expected.safetensors")
        let want = try expected.floats("loglik"), gold = try expected.ints("gold")
        #expect(items.count == 250 && items.map(\.gold) == gold && items.allSatisfy { $0.continuations.count == 4 })
        #expect(items.contains { $0.context.count + $0.continuations.map(\.count).max()! > 65 }, "no item is cut: the fixture tests less")
        for rows in [1, 7] {  // any batching gives the same numbers
            let got = ChoiceScorer(model: model, rows: rows).logLikelihoods(items)
            var worst = 0.0, samePick = 0
            for (i, ll) in got.enumerated() {
                let ref = (0..<4).map { Double(want[i * 4 + $0]) }
                for k in 0..<4 { worst = max(worst, abs(ll[k] - ref[k]) / max(1, abs(ref[k]))) }
                if ChoiceScorer.argmax(ll) == ChoiceScorer.argmax(ref) { samePick += 1 }
            }
            #expect(worst < 1e-4, "rows \(rows): log-likelihoods off transformers' by \(worst) (relative)")
            #expect(samePick == items.count, "rows \(rows): the same ending predicted on \(samePick) of \(items.count) items")
        }
        let limited = try ChoiceTask.hellaswag.load(path: Self.dir + "/requests.jsonl.gz", tokenizer: tokenizer, limit: 10)
        #expect(limited == Array(items.prefix(10)))
    }

    /// An item whose context and endings fit in one row is scored as one packed row (the context computed once):
    /// the same log-likelihoods as one row per ending (the path checked against transformers above), alone and
    /// batched with rows that do not fit.
    @Test func packedItemsScoreAsOneRowPerEnding() throws {
        guard let tokenizer = try loadVocabulary() else { return }
        let model = try HuggingFace.load(directory: Self.dir + "/hf")
        let items = try ChoiceTask.hellaswag.load(path: Self.dir + "/requests.jsonl.gz", tokenizer: tokenizer, limit: 40)
        let short = items.map { item in
            ChoiceItem(id: item.id, context: Array(item.context.suffix(20)), continuations: item.continuations.map { Array($0.prefix(8)) },
                       continuationCharacters: item.continuationCharacters, gold: item.gold)
        }
        let scorer = ChoiceScorer(model: model, rows: 5)
        #expect(short.allSatisfy { scorer.packedRow($0, firstSum: 0) != nil } && items.contains { scorer.packedRow($0, firstSum: 0) == nil })
        let mixed = zip(short, items).flatMap { [$0, $1] }
        for set in [short, mixed] {
            let packed = scorer.logLikelihoods(set), plain = scorer.logLikelihoods(set, packing: false)
            let worst = zip(packed.joined(), plain.joined()).map { abs($0 - $1) / max(1, abs($1)) }.max()!
            #expect(worst < 2e-6, "packed vs one row per ending: \(worst) (relative)")
        }
    }

    /// The counts of `eval --task` through the release binary do not depend on the rank count; bad input is one line.
    @Test func evalTaskAcrossRanksAndBadInput() throws {
        guard try loadVocabulary() != nil else { return }
        let dir = tmpDir("hellaswag")
        let ckpt = dir + "/model.h5"
        #expect(try CLI.run(["import-hf", "--from", Self.dir + "/hf", "--out", ckpt]).status == 0)
        let vocab = URL(fileURLWithPath: vocabularyPath).deletingLastPathComponent().path
        let args = ["eval", "--checkpoint", ckpt, "--task", "hellaswag", "--task-file", Self.dir + "/requests.jsonl.gz",
                    "--vocab", vocab, "--task-limit", "60", "--json"]
        var results: [String] = []
        for ranks in [0, 2] {
            let r = try CLI.run(ranks: ranks, args)
            #expect(r.status == 0, "\(r.stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
            #expect(json["items"] as? Int == 60, "\(r.stdout)")
            results.append("\(json["acc"] ?? "") \(json["acc_norm"] ?? "")")
        }
        #expect(results[0] == results[1], "np 1 vs np 2: \(results)")

        expectOneLineError(try CLI.run(args.map { $0 == "hellaswag" ? "winogrande" : $0 }), "unknown task", mentioning: "unknown task")
        expectOneLineError(try CLI.run(args.map { $0 == "60" ? "0" : $0 }), "--task-limit 0", mentioning: "--task-limit")
        expectOneLineError(try CLI.run(args.map { $0.hasSuffix("requests.jsonl.gz") ? dir + "/none.jsonl.gz" : $0 }),
                           "a missing task file", mentioning: "Launch/fetch-data")
        // A damaged file (cut short), and a line without its continuation: one line naming the file (and the line).
        let whole = try Data(contentsOf: URL(fileURLWithPath: Self.dir + "/requests.jsonl.gz"))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: dir + "/cut.jsonl.gz"))
        expectOneLineError(try CLI.run(args.map { $0.hasSuffix("requests.jsonl.gz") ? dir + "/cut.jsonl.gz" : $0 }),
                           "a damaged task file", mentioning: "Launch/fetch-data")
        let lines = """
        {"doc_id": 0, "idx": 0, "label": 0, "request": {"context": "A", "continuation": " b"}}
        {"doc_id": 0, "idx": 1, "label": 0, "request": {"context": "A"}}

        """
        let plain = dir + "/missing.jsonl"
        try lines.write(toFile: plain, atomically: true, encoding: .utf8)
        #expect(try CLI.run(executable: "/usr/bin/gzip", ["-kf", plain]).status == 0)
        expectOneLineError(try CLI.run(args.map { $0.hasSuffix("requests.jsonl.gz") ? plain + ".gz" : $0 }),
                           "a line without its continuation", mentioning: "line 2: no request.continuation")
    }

    /// train --task: acc and acc_norm at --task-every steps and the end, in metrics.h5, TensorBoard and the plot's
    /// second panel; a model without GPT-2's vocabulary is one line.
    @Test func trainScoresTheTaskOnTheWay() throws {
        guard try loadVocabulary() != nil else { return }
        let dir = tmpDir("hellaswag-train")
        let ckpt = dir + "/model.h5", out = dir + "/run"
        #expect(try CLI.run(["import-hf", "--from", Self.dir + "/hf", "--out", ckpt]).status == 0)
        let vocab = URL(fileURLWithPath: vocabularyPath).deletingLastPathComponent().path
        let task = ["--task", "hellaswag", "--task-every", "2", "--task-limit", "12", "--task-file", Self.dir + "/requests.jsonl.gz",
                    "--vocab", vocab]
        let r = try CLI.run(["train", "--init", ckpt, "--data", tinyTokens, "--out", out, "--steps", "5", "--batch-size", "4",
                             "--seq-len", "32", "--threads", "1"] + task)
        #expect(r.status == 0, "\(r.stderr)")
        let m = try MetricsLog.read(path: out + "/metrics.h5")
        #expect(m["eval_step"] == [2, 4, 5], "\(m.keys.sorted())")
        let acc = m["eval_hellaswag_acc"] ?? [], norm = m["eval_hellaswag_acc_norm"] ?? []
        #expect(acc.count == 3 && norm.count == 3 && (acc + norm).allSatisfy { $0 >= 0 && $0 <= 1 && ($0 * 12).rounded() == $0 * 12 })
        let events = try FileManager.default.contentsOfDirectory(atPath: out).first { $0.hasPrefix("events.out") }!
        #expect(try readEvents(out + "/" + events)["eval/hellaswag_acc_norm"]?.map(\.step) == [2, 4, 5])
        #expect(try String(contentsOfFile: out + "/loss.svg", encoding: .utf8).contains("hellaswag (train --task)"))

        let cfg = try writeConfig(dir, dropRate: 0)  // vocab_size 512
        expectOneLineError(try CLI.run(trainArgs(config: cfg, out: dir + "/small", steps: 2, extra: task)), "--task with a small vocabulary",
                           mentioning: "GPT-2's vocabulary")
        expectOneLineError(try CLI.run(["train", "--init", ckpt, "--data", tinyTokens, "--out", dir + "/zero", "--steps", "2"]
                                       + task.map { $0 == "12" ? "0" : $0 }), "train --task-limit 0", mentioning: "--task-limit")
    }
}
