import Foundation

// Parsers for the two on-disk forms of GPT-2's vocabulary. Both produce `tokens[rank] = bytes` for the
// 50,256 ordinary tokens (the special token <|endoftext|> = 50256 is not part of the table).

enum VocabularyFiles {
    static let ordinaryTokenCount = 50256

    static func readFile(_ url: URL) throws -> [UInt8] {
        do {
            return [UInt8](try Data(contentsOf: url))
        } catch {
            throw TokenizerError.cannotRead(path: url.path, reason: error.localizedDescription)
        }
    }

    // MARK: gpt2.tiktoken

    /// `base64(bytes) rank` per line; ranks must be exactly 0..<50256, each once.
    static func parseTiktoken(_ data: [UInt8], path: String) throws -> [[UInt8]] {
        var tokens = [[UInt8]?](repeating: nil, count: ordinaryTokenCount)
        var seen = 0
        var lineNumber = 0
        var i = 0
        let n = data.count
        while i < n {
            lineNumber += 1
            var lineEnd = i
            while lineEnd < n && data[lineEnd] != 0x0A { lineEnd += 1 }
            var contentEnd = lineEnd
            if contentEnd > i && data[contentEnd - 1] == 0x0D { contentEnd -= 1 }
            defer { i = lineEnd + 1 }
            if contentEnd == i { continue }  // blank line (e.g. trailing newline)
            var space = i
            while space < contentEnd && data[space] != 0x20 { space += 1 }
            guard space < contentEnd else {
                throw TokenizerError.malformedLine(path: path, line: lineNumber, reason: "expected 'base64 rank'")
            }
            guard let bytes = decodeBase64(data[i..<space]), !bytes.isEmpty else {
                throw TokenizerError.malformedLine(path: path, line: lineNumber, reason: "invalid base64 token")
            }
            var rank = 0
            var digits = 0
            for b in data[(space + 1)..<contentEnd] {
                guard b >= 0x30 && b <= 0x39, digits < 9 else {
                    throw TokenizerError.malformedLine(path: path, line: lineNumber, reason: "invalid rank")
                }
                rank = rank * 10 + Int(b - 0x30)
                digits += 1
            }
            guard digits > 0 else {
                throw TokenizerError.malformedLine(path: path, line: lineNumber, reason: "missing rank")
            }
            guard rank < ordinaryTokenCount else {
                throw TokenizerError.invalidVocabulary(
                    path: path, reason: "rank \(rank) on line \(lineNumber) is not below \(ordinaryTokenCount)")
            }
            guard tokens[rank] == nil else {
                throw TokenizerError.invalidVocabulary(path: path, reason: "rank \(rank) appears twice (line \(lineNumber))")
            }
            tokens[rank] = bytes
            seen += 1
        }
        guard seen == ordinaryTokenCount else {
            throw TokenizerError.invalidVocabulary(
                path: path, reason: "expected \(ordinaryTokenCount) tokens (ranks 0..<\(ordinaryTokenCount)), found \(seen)")
        }
        return tokens.map { $0! }
    }

    private static let base64Values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        for (v, c) in alphabet.enumerated() { t[Int(c)] = UInt8(v) }
        return t
    }()

    /// Standard base64 with `=` padding (padding optional).
    static func decodeBase64(_ s: ArraySlice<UInt8>) -> [UInt8]? {
        var out = [UInt8]()
        out.reserveCapacity(s.count * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        var padding = 0
        for c in s {
            if c == 0x3D { padding += 1; continue }  // '='
            if padding > 0 { return nil }  // data after padding
            let v = base64Values[Int(c)]
            if v == 0xFF { return nil }
            acc = (acc << 6) | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        if padding > 2 || bits >= 6 { return nil }
        return out
    }

    // MARK: encoder.json + vocab.bpe

    /// GPT-2's reversible byte <-> unicode mapping (`bytes_to_unicode` in openai/gpt-2's encoder.py):
    /// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100, U+0101, ... in byte order.
    static let byteToUnicode: [UInt32] = {
        var printable = [Bool](repeating: false, count: 256)
        for b in 0x21...0x7E { printable[b] = true }
        for b in 0xA1...0xAC { printable[b] = true }
        for b in 0xAE...0xFF { printable[b] = true }
        var map = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if printable[b] {
                map[b] = UInt32(b)
            } else {
                map[b] = next
                next += 1
            }
        }
        return map
    }()

    static let unicodeToByte: [UInt32: UInt8] = {
        var d = [UInt32: UInt8]()
        for (b, u) in byteToUnicode.enumerated() { d[u] = UInt8(b) }
        return d
    }()

    /// Maps a token string of encoder.json / vocab.bpe back to its bytes; nil if it has a character outside the mapping.
    static func unmapToken(_ s: Substring) -> [UInt8]? {
        var out = [UInt8]()
        out.reserveCapacity(s.unicodeScalars.count)
        for u in s.unicodeScalars {
            guard let b = unicodeToByte[u.value] else { return nil }
            out.append(b)
        }
        return out
    }

    /// encoder.json maps mapped token strings to ids; vocab.bpe lists the 50,000 merges in order. GPT-2's merge i
    /// (0-based) creates token 256 + i, which is checked, so the merges and the ids must describe the same BPE.
    static func parseEncoderJSON(_ jsonData: [UInt8], jsonPath: String, merges mergesData: [UInt8], mergesPath: String)
        throws -> [[UInt8]]
    {
        let (tokens, byBytes) = try tokensOfEncoderJSON(jsonData, path: jsonPath)
        try checkMerges(mergesData, path: mergesPath, against: byBytes, jsonPath: jsonPath)
        return tokens
    }

    /// encoder.json's tokens in id order (as bytes), and each token's id by its bytes.
    static func tokensOfEncoderJSON(_ jsonData: [UInt8], path jsonPath: String) throws -> ([[UInt8]], [[UInt8]: Int]) {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(jsonData))
        } catch {
            throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "not valid JSON: \(error.localizedDescription)")
        }
        guard let dict = object as? [String: Any] else {
            throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "expected a JSON object of token -> id")
        }
        var tokens = [[UInt8]?](repeating: nil, count: ordinaryTokenCount)
        var byBytes = [[UInt8]: Int]()
        byBytes.reserveCapacity(ordinaryTokenCount)
        var sawEndOfText = false
        for (key, value) in dict {
            guard let number = value as? NSNumber, let id = Int(exactly: number.doubleValue) else {
                throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "id of \(key.debugDescription) is not an integer")
            }
            if key == GPT2Tokenizer.endOfTextString {
                guard id == GPT2Tokenizer.endOfText else {
                    throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "<|endoftext|> has id \(id), expected 50256")
                }
                sawEndOfText = true
                continue
            }
            guard id >= 0 && id < ordinaryTokenCount else {
                throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "id \(id) of \(key.debugDescription) is out of range")
            }
            guard let bytes = unmapToken(Substring(key)), !bytes.isEmpty else {
                throw TokenizerError.invalidVocabulary(
                    path: jsonPath, reason: "token \(key.debugDescription) has characters outside GPT-2's byte mapping")
            }
            guard tokens[id] == nil else {
                throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "id \(id) appears twice")
            }
            tokens[id] = bytes
            byBytes[bytes] = id
        }
        guard sawEndOfText else {
            throw TokenizerError.invalidVocabulary(path: jsonPath, reason: "no <|endoftext|> entry")
        }
        guard byBytes.count == ordinaryTokenCount, tokens.allSatisfy({ $0 != nil }) else {
            throw TokenizerError.invalidVocabulary(
                path: jsonPath, reason: "expected \(ordinaryTokenCount) distinct tokens with ids 0..<\(ordinaryTokenCount)")
        }
        return (tokens.map { $0! }, byBytes)
    }

    /// vocab.bpe: "#version: 0.2" then one "left right" merge per line; merge i must make token 256 + i.
    static func checkMerges(_ mergesData: [UInt8], path mergesPath: String, against byBytes: [[UInt8]: Int], jsonPath: String) throws {
        guard let text = String(validating: mergesData, as: UTF8.self) else {
            throw TokenizerError.invalidVocabulary(path: mergesPath, reason: "not valid UTF-8")
        }
        var mergeIndex = 0
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = line
            if line.hasSuffix("\r") { line = line.dropLast() }
            if line.isEmpty || (lineNumber == 1 && line.hasPrefix("#")) { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, let left = unmapToken(parts[0]), let right = unmapToken(parts[1]),
                !left.isEmpty, !right.isEmpty
            else {
                throw TokenizerError.malformedLine(path: mergesPath, line: lineNumber, reason: "expected two mapped tokens")
            }
            let expected = 256 + mergeIndex
            guard byBytes[left] != nil, byBytes[right] != nil, let merged = byBytes[left + right], merged == expected else {
                throw TokenizerError.invalidVocabulary(
                    path: mergesPath,
                    reason: "merge \(mergeIndex) on line \(lineNumber) does not produce token \(expected) of \(jsonPath)")
            }
            mergeIndex += 1
        }
        guard mergeIndex == ordinaryTokenCount - 256 else {
            throw TokenizerError.invalidVocabulary(
                path: mergesPath, reason: "expected \(ordinaryTokenCount - 256) merges, found \(mergeIndex)")
        }
    }
}
