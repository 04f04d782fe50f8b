import Data
import Foundation
import Tokenizer

/// Tokenizes text files into llm.c token shards: each file is one document, preceded by <|endoftext|>
/// (as llm.c's preprocessing does); the last `valFraction` of all tokens becomes val_*.bin, the rest
/// train_*.bin, at most `shardTokens` per shard. Shards are written to a temporary directory and moved
/// into place only when everything succeeded, so a failure leaves nothing partial behind.
public struct DatasetPreparer {
    public var inputs: [String]
    public var outDirectory: String
    public var valFraction = 0.1
    public var shardTokens = 100_000_000
    public var lossy = false
    public var threads = 1

    public init(inputs: [String], outDirectory: String) {
        self.inputs = inputs; self.outDirectory = outDirectory
    }

    public struct Summary { public var trainTokens = 0, valTokens = 0, bytes = 0, seconds = 0.0, files: [String] = [] }

    public func run(tokenizer: GPT2Tokenizer, progress: (String) -> Void) throws -> Summary {
        guard !inputs.isEmpty else { throw TrainError("give at least one --text file") }
        guard valFraction >= 0 && valFraction < 1 else { throw TrainError("--val-fraction must be in [0, 1)") }
        guard shardTokens > 0 else { throw TrainError("--shard-tokens must be positive") }
        let fm = FileManager.default
        let existing = ((try? fm.contentsOfDirectory(atPath: outDirectory)) ?? []).filter {
            ($0.hasPrefix("train_") || $0.hasPrefix("val_")) && $0.hasSuffix(".bin")
        }
        guard existing.isEmpty else { throw TrainError("\(outDirectory) already holds token shards (\(existing.sorted()[0]), ...); not overwriting") }
        // Read and check every input before writing anything.
        var texts: [(String, String)] = []
        var totalBytes = 0
        for path in inputs {
            guard let data = fm.contents(atPath: path) else { throw TrainError("cannot read text file \(path)") }
            guard let text = String(data: data, encoding: .utf8) ?? (lossy ? String(decoding: data, as: UTF8.self) : nil) else {
                throw TrainError("\(path) is not valid UTF-8 (pass --lossy to replace bad bytes with U+FFFD)")
            }
            texts.append((path, text))
            totalBytes += data.count
        }
        var summary = Summary()
        let t0 = Date()
        var tokens: [UInt16] = []
        var doneBytes = 0
        for (path, text) in texts {
            tokens.append(UInt16(GPT2Tokenizer.endOfText))
            let before = doneBytes
            let ids = tokenizer.encode(text, threads: threads, allowSpecial: false) { bytes in
                let done = before + bytes, dt = Date().timeIntervalSince(t0)
                let rate = Double(done) / max(dt, 1e-9)
                progress(String(format: "tokenizing %@: %.1f/%.1f MB, %.1f MB/s, ETA %.0f s", (path as NSString).lastPathComponent,
                                Double(done) / 1e6, Double(totalBytes) / 1e6, rate / 1e6, Double(totalBytes - done) / max(rate, 1)))
            }
            doneBytes += text.utf8.count
            tokens.append(contentsOf: ids.map { UInt16($0) })
        }
        let valCount = Int(Double(tokens.count) * valFraction)
        let trainCount = tokens.count - valCount
        try fm.createDirectory(atPath: outDirectory, withIntermediateDirectories: true)
        let staging = outDirectory + "/.prepare-\(getpid())"
        try? fm.removeItem(atPath: staging)
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: staging) }
        var written: [String] = []
        func shards(_ prefix: String, _ range: Range<Int>) throws {
            var i = 0, start = range.lowerBound
            while start < range.upperBound {
                let end = min(start + shardTokens, range.upperBound)
                let name = String(format: "%@_%06d.bin", prefix, i)
                try TokenShardFormat.write(tokens: Array(tokens[start..<end]), to: staging + "/" + name)
                written.append(name)
                start = end; i += 1
            }
        }
        try shards("train", 0..<trainCount)
        if valCount > 0 { try shards("val", trainCount..<tokens.count) }
        for name in written { try fm.moveItem(atPath: staging + "/" + name, toPath: outDirectory + "/" + name) }
        summary.trainTokens = trainCount; summary.valTokens = valCount; summary.bytes = totalBytes
        summary.seconds = Date().timeIntervalSince(t0); summary.files = written
        return summary
    }
}

/// Finds the GPT-2 vocabulary: a gpt2.tiktoken file, or a directory holding it (or encoder.json + vocab.bpe).
public func loadTokenizer(_ path: String) throws -> GPT2Tokenizer {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw TrainError("GPT-2 vocabulary not found at \(path) (run Launch/fetch-data, or pass --vocab)")
    }
    let url = URL(fileURLWithPath: path)
    return isDir.boolValue ? try GPT2Tokenizer(directory: url) : try GPT2Tokenizer(tiktokenFile: url)
}
