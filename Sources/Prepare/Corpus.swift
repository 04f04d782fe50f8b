import Common
import Foundation

/// One input of `prepare`: a text file (one document) or a JSONL file (one document per line), either of them
/// possibly gzip-compressed (.gz).
public struct CorpusFile: Equatable, Sendable {
    public enum Kind: Sendable { case text, jsonl }
    public var path: String
    public var kind: Kind
    public var bytes: Int          // on disk (compressed for .gz)
    public var compressed: Bool

    /// Files, directories (recursively: *.txt, *.jsonl and their .gz forms; hidden entries skipped) and glob
    /// patterns, in the order given; a directory's and a pattern's files sorted by path. An explicitly named file
    /// is JSONL when its name (without .gz) ends in .jsonl, text otherwise.
    public static func expand(_ specs: [String]) throws -> [CorpusFile] {
        var files: [CorpusFile] = []
        for spec in specs {
            let matches = try PathSpec.expand(spec, recursive: true, accepts: { name in
                var lower = name.lowercased()
                if lower.hasSuffix(".gz") { lower.removeLast(3) }
                return lower.hasSuffix(".txt") || lower.hasSuffix(".jsonl")
            }, notFound: { "input not found: \($0)" })
            for match in matches {
                var lower = match.path.lowercased()
                let compressed = lower.hasSuffix(".gz")
                if compressed { lower.removeLast(3) }
                guard let attributes = try? FileManager.default.attributesOfItem(atPath: match.path),
                      let size = attributes[.size] as? Int, access(match.path, R_OK) == 0 else {
                    throw GPT2DistError(.preparation, "cannot read input file \(match.path)")
                }
                files.append(CorpusFile(path: match.path, kind: lower.hasSuffix(".jsonl") ? .jsonl : .text, bytes: size,
                                        compressed: compressed))
            }
        }
        guard !files.isEmpty else { throw GPT2DistError(.preparation, "no .txt or .jsonl files in \(specs.joined(separator: " "))") }
        return files
    }
}

/// The offset of the first byte that is not part of valid UTF-8 in p[0..<n], or nil when all of it is valid.
/// (Overlong forms, surrogates and scalars above U+10FFFF are invalid, as in `String(validating:)`.)
func firstInvalidUTF8(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int? {
    var i = 0
    while i < n {
        // ASCII runs, 8 bytes at a time.
        while i + 8 <= n && UnsafeRawPointer(p + i).loadUnaligned(as: UInt64.self) & 0x8080_8080_8080_8080 == 0 { i += 8 }
        guard i < n else { break }
        let b = p[i]
        if b < 0x80 { i += 1; continue }
        let need: Int, low: UInt8, high: UInt8   // bounds of the second byte
        switch b {
        case 0xC2...0xDF: need = 1; low = 0x80; high = 0xBF
        case 0xE0: need = 2; low = 0xA0; high = 0xBF
        case 0xE1...0xEC, 0xEE...0xEF: need = 2; low = 0x80; high = 0xBF
        case 0xED: need = 2; low = 0x80; high = 0x9F
        case 0xF0: need = 3; low = 0x90; high = 0xBF
        case 0xF1...0xF3: need = 3; low = 0x80; high = 0xBF
        case 0xF4: need = 3; low = 0x80; high = 0x8F
        default: return i
        }
        guard i + need < n, p[i + 1] >= low, p[i + 1] <= high else { return i }
        for k in stride(from: 2, through: need, by: 1) where p[i + k] & 0xC0 != 0x80 { return i }
        i += need + 1
    }
    return nil
}

/// Reads one string field of a JSON object given as one JSONL line, checking the whole line's syntax on the way
/// (strict JSON: no trailing commas, no comments). Only the requested field is decoded.
struct JSONLineField {
    enum Failure: Error {
        case malformed(String)
        case missing
        case notString(String)
        case unpairedSurrogate
    }

    let key: [UInt8]
    let lossy: Bool

    /// The decoded UTF-8 bytes of the top-level field `key` (the last one if repeated), appended to `out`.
    func extract(_ line: UnsafeBufferPointer<UInt8>, into out: inout [UInt8]) throws(Failure) {
        var c = Cursor(p: line.baseAddress!, n: line.count)
        c.skipSpace()
        guard c.peek == UInt8(ascii: "{") else { throw .malformed("a line must hold one JSON object") }
        c.i += 1
        var found: Result<Range<Int>, Failure>? = nil
        var scratch: [UInt8] = []
        c.skipSpace()
        if c.peek == UInt8(ascii: "}") { c.i += 1 } else {
            while true {
                c.skipSpace()
                guard c.peek == UInt8(ascii: "\"") else { throw .malformed("expected a quoted key at column \(c.i + 1)") }
                scratch.removeAll(keepingCapacity: true)
                try c.string(decodingInto: &scratch, lossy: true)
                c.skipSpace()
                guard c.peek == UInt8(ascii: ":") else { throw .malformed("expected ':' at column \(c.i + 1)") }
                c.i += 1
                c.skipSpace()
                if scratch == key {
                    if c.peek == UInt8(ascii: "\"") {
                        let start = out.count
                        do { try c.string(decodingInto: &out, lossy: lossy); found = .success(start..<out.count) }
                        catch .unpairedSurrogate { throw .unpairedSurrogate }
                    } else {
                        let kind = c.valueKind
                        try c.skipValue(depth: 0)
                        found = .failure(.notString(kind))
                    }
                } else {
                    try c.skipValue(depth: 0)
                }
                c.skipSpace()
                if c.peek == UInt8(ascii: ",") { c.i += 1; continue }
                guard c.peek == UInt8(ascii: "}") else { throw .malformed("expected ',' or '}' at column \(c.i + 1)") }
                c.i += 1
                break
            }
        }
        c.skipSpace()
        guard c.i == c.n else { throw .malformed("unexpected text after the object at column \(c.i + 1)") }
        switch found {
        case nil: throw .missing
        case .failure(let f)?: throw f
        case .success(let range)?:
            // A repeated key: keep only the last value.
            if range.lowerBound > 0 { out.removeSubrange(0..<range.lowerBound) }
        }
    }

    struct Cursor {
        let p: UnsafePointer<UInt8>
        let n: Int
        var i = 0
        var peek: UInt8 { i < n ? p[i] : 0 }

        mutating func skipSpace() {
            while i < n, p[i] == 0x20 || p[i] == 0x09 || p[i] == 0x0A || p[i] == 0x0D { i += 1 }
        }

        var valueKind: String {
            switch peek {
            case UInt8(ascii: "{"): return "an object"
            case UInt8(ascii: "["): return "an array"
            case UInt8(ascii: "t"), UInt8(ascii: "f"): return "a boolean"
            case UInt8(ascii: "n"): return "null"
            default: return "a number"
            }
        }

        mutating func skipValue(depth: Int) throws(Failure) {
            guard depth < 512 else { throw .malformed("nested deeper than 512 levels") }
            switch peek {
            case UInt8(ascii: "\""):
                try string(decodingInto: nil, lossy: true)
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                let close = peek == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
                let isObject = close == UInt8(ascii: "}")
                i += 1
                skipSpace()
                if peek == close { i += 1; return }
                while true {
                    skipSpace()
                    if isObject {
                        guard peek == UInt8(ascii: "\"") else { throw .malformed("expected a quoted key at column \(i + 1)") }
                        try string(decodingInto: nil, lossy: true)
                        skipSpace()
                        guard peek == UInt8(ascii: ":") else { throw .malformed("expected ':' at column \(i + 1)") }
                        i += 1
                        skipSpace()
                    }
                    try skipValue(depth: depth + 1)
                    skipSpace()
                    if peek == UInt8(ascii: ",") { i += 1; continue }
                    guard peek == close else { throw .malformed("expected ',' or '\(Character(UnicodeScalar(close)))' at column \(i + 1)") }
                    i += 1
                    return
                }
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                let start = i
                if peek == UInt8(ascii: "-") { i += 1 }
                let digits = i
                while i < n, (p[i] >= UInt8(ascii: "0") && p[i] <= UInt8(ascii: "9")) || p[i] == UInt8(ascii: ".")
                        || p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E") || p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") { i += 1 }
                guard i > digits, p[digits] >= UInt8(ascii: "0"), p[digits] <= UInt8(ascii: "9"),
                      p[i - 1] >= UInt8(ascii: "0"), p[i - 1] <= UInt8(ascii: "9") else {
                    throw .malformed("bad number at column \(start + 1)")
                }
            default:
                throw .malformed(i < n ? "unexpected character at column \(i + 1)" : "line ends inside the object")
            }
        }

        mutating func literal(_ word: StaticString) throws(Failure) {
            let w = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
            guard i + w.count <= n, memcmp(p + i, w.baseAddress!, w.count) == 0 else { throw .malformed("unexpected character at column \(i + 1)") }
            i += w.count
        }

        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= n else { return nil }
            var v: UInt32 = 0
            for k in 0..<4 {
                let b = p[at + k]
                let d: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
                default: return nil
                }
                v = v << 4 | UInt32(d)
            }
            return v
        }

        /// Reads the string at i (which is a quote); appends its decoded bytes to `out` when given.
        mutating func string(decodingInto out: UnsafeMutablePointer<[UInt8]>?, lossy: Bool) throws(Failure) {
            i += 1
            while true {
                let runStart = i
                while i < n, p[i] != UInt8(ascii: "\""), p[i] != UInt8(ascii: "\\"), p[i] >= 0x20 { i += 1 }
                if let out, i > runStart { out.pointee.append(contentsOf: UnsafeBufferPointer(start: p + runStart, count: i - runStart)) }
                guard i < n else { throw .malformed("line ends inside a string") }
                let b = p[i]
                if b == UInt8(ascii: "\"") { i += 1; return }
                guard b == UInt8(ascii: "\\") else { throw .malformed("control character 0x\(String(b, radix: 16)) inside a string at column \(i + 1)") }
                guard i + 1 < n else { throw .malformed("line ends inside a string") }
                let e = p[i + 1]
                var scalar: UInt32
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalar = UInt32(e)
                case UInt8(ascii: "b"): scalar = 0x08
                case UInt8(ascii: "f"): scalar = 0x0C
                case UInt8(ascii: "n"): scalar = 0x0A
                case UInt8(ascii: "r"): scalar = 0x0D
                case UInt8(ascii: "t"): scalar = 0x09
                case UInt8(ascii: "u"):
                    guard let v = hex4(i + 2) else { throw .malformed("bad \\u escape at column \(i + 1)") }
                    scalar = v
                    if v >= 0xD800 && v <= 0xDBFF, i + 11 < n, p[i + 6] == UInt8(ascii: "\\"), p[i + 7] == UInt8(ascii: "u"),
                       let lowHalf = hex4(i + 8), lowHalf >= 0xDC00 && lowHalf <= 0xDFFF {
                        scalar = 0x10000 + ((v - 0xD800) << 10) + (lowHalf - 0xDC00)
                        i += 6
                    } else if v >= 0xD800 && v <= 0xDFFF {
                        guard lossy else { throw .unpairedSurrogate }
                        scalar = 0xFFFD
                    }
                    i += 4
                default: throw .malformed("bad escape \\\(Character(UnicodeScalar(e))) at column \(i + 1)")
                }
                i += 2
                if let out { appendUTF8(scalar, to: &out.pointee) }
            }
        }
    }
}

func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
    switch v {
    case 0..<0x80: out.append(UInt8(v))
    case 0x80..<0x800: out.append(UInt8(0xC0 | v >> 6)); out.append(UInt8(0x80 | v & 0x3F))
    case 0x800..<0x10000:
        out.append(UInt8(0xE0 | v >> 12)); out.append(UInt8(0x80 | (v >> 6) & 0x3F)); out.append(UInt8(0x80 | v & 0x3F))
    default:
        out.append(UInt8(0xF0 | v >> 18)); out.append(UInt8(0x80 | (v >> 12) & 0x3F))
        out.append(UInt8(0x80 | (v >> 6) & 0x3F)); out.append(UInt8(0x80 | v & 0x3F))
    }
}
