import Data
import Foundation
import Testing
import Tokenizer

// Reference ids come from tiktoken (Tests/Fixtures/make_tokenizer_fixtures.py -> Tests/Fixtures/tokenizer/cases.json).
// The vocabulary and the corpus are read from the data directory Launch/fetch-data fills ($GPT2DIST_DATA if set, else
// <repo>/data); when a file is missing, the tests record an issue saying so (they never pass silently).

enum TokenizerTestSupport {
    /// The repository root: three levels above this file (Tests/TokenizerTests/<file>), symlinks resolved.
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Where Launch/fetch-data puts its files, chosen the same way (an empty $GPT2DIST_DATA counts as unset).
    static let dataDirectory: URL = {
        if let dir = ProcessInfo.processInfo.environment["GPT2DIST_DATA"], !dir.isEmpty {
            return URL(fileURLWithPath: dir)
        }
        return repoRoot.appendingPathComponent("data")
    }()

    static func vocabFile(_ name: String) -> URL? {
        let url = dataDirectory.appendingPathComponent("gpt2").appendingPathComponent(name)
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }

    static func missing(_ what: String) -> String {
        "GPT-2 vocabulary missing: no \(what) in \(dataDirectory.appendingPathComponent("gpt2").path)"
            + " (run Launch/fetch-data)"
    }

    /// The tokenizer loaded from gpt2.tiktoken, or nil after recording an issue.
    static func tiktokenTokenizer(sourceLocation: SourceLocation = #_sourceLocation) -> GPT2Tokenizer? {
        guard let url = vocabFile("gpt2.tiktoken") else {
            Issue.record(Comment(rawValue: missing("gpt2.tiktoken")), sourceLocation: sourceLocation)
            return nil
        }
        return cached.get(url.path) { try GPT2Tokenizer(tiktokenFile: url) }
    }

    /// The tokenizer loaded from encoder.json + vocab.bpe, or nil after recording an issue.
    static func encoderJSONTokenizer(sourceLocation: SourceLocation = #_sourceLocation) -> GPT2Tokenizer? {
        guard let json = vocabFile("encoder.json"), let bpe = vocabFile("vocab.bpe") else {
            Issue.record(Comment(rawValue: missing("encoder.json + vocab.bpe")), sourceLocation: sourceLocation)
            return nil
        }
        return cached.get(json.path) { try GPT2Tokenizer(encoderJSON: json, vocabBPE: bpe) }
    }

    final class Cache: @unchecked Sendable {
        private let lock = NSLock()
        private var loaded: [String: GPT2Tokenizer] = [:]
        func get(_ key: String, _ make: () throws -> GPT2Tokenizer) -> GPT2Tokenizer? {
            lock.lock()
            defer { lock.unlock() }
            if let t = loaded[key] { return t }
            do {
                let t = try make()
                loaded[key] = t
                return t
            } catch {
                Issue.record("loading \(key) failed: \(error)")
                return nil
            }
        }
    }
    static let cached = Cache()

    struct Case: Decodable {
        let text: String
        let ids: [Int32]
    }
    struct CorpusCase: Decodable {
        let name: String
        let file: String
        let prefix_chars: Int?
        let byte_count: Int
        let count: Int
        let sha256: String
        let first_ids: [Int32]
    }
    struct Fixtures: Decodable {
        let cases: [Case]
        let cases_ordinary: [Case]
        let corpus: [CorpusCase]
    }

    static func fixtures(sourceLocation: SourceLocation = #_sourceLocation) -> Fixtures? {
        let url = repoRoot.appendingPathComponent("Tests/Fixtures/tokenizer/cases.json")
        do {
            return try JSONDecoder().decode(Fixtures.self, from: Data(contentsOf: url))
        } catch {
            Issue.record("cannot read tokenizer fixtures \(url.path): \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    static func corpusText(_ c: CorpusCase, sourceLocation: SourceLocation = #_sourceLocation) -> String? {
        let url = dataDirectory.appendingPathComponent(c.file)
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            Issue.record("corpus missing: cannot read \(url.path) (run Launch/fetch-data)",
                         sourceLocation: sourceLocation)
            return nil
        }
        guard let n = c.prefix_chars else { return text }
        // Python's text[:n] counts code points.
        return String(String.UnicodeScalarView(text.unicodeScalars.prefix(n)))
    }

    /// SHA-256 hex of the ids as little-endian uint32 (the fixture's convention).
    static func sha256Hex(ofIDs ids: [Int32]) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count * 4)
        for id in ids {
            let v = UInt32(bitPattern: id)
            bytes.append(UInt8(v & 0xFF))
            bytes.append(UInt8((v >> 8) & 0xFF))
            bytes.append(UInt8((v >> 16) & 0xFF))
            bytes.append(UInt8(v >> 24))
        }
        return SHA256.hex(Data(bytes))
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
