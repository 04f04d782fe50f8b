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
        return SHA256.hex(bytes)
    }
}

/// Minimal SHA-256 (FIPS 180-4) for checking fixture digests without extra dependencies.
enum SHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    static func hex(_ message: [UInt8]) -> String {
        var h: [UInt32] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
        ]
        var data = message
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        let bitLength = UInt64(message.count) * 8
        for s in stride(from: 56, through: 0, by: -8) { data.append(UInt8((bitLength >> UInt64(s)) & 0xFF)) }
        func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
        var w = [UInt32](repeating: 0, count: 64)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let b = chunk + 4 * i
                w[i] = UInt32(data[b]) << 24 | UInt32(data[b + 1]) << 16 | UInt32(data[b + 2]) << 8 | UInt32(data[b + 3])
            }
            for i in 16..<64 {
                let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
                let ch = (e & f) ^ (~e & g)
                let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
                let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
                let maj = (a & b) ^ (a & c) ^ (b & c)
                let t2 = s0 &+ maj
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            h[0] = h[0] &+ a; h[1] = h[1] &+ b; h[2] = h[2] &+ c; h[3] = h[3] &+ d
            h[4] = h[4] &+ e; h[5] = h[5] &+ f; h[6] = h[6] &+ g; h[7] = h[7] &+ hh
        }
        return h.map { v in
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 8 - s.count) + s
        }.joined()
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
