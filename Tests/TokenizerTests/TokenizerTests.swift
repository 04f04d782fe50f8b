import Foundation
import Testing
import Tokenizer

// Public-API tests; they also run in release builds (`swift test -c release`, no @testable).
// Reference ids come from tiktoken (Tests/Fixtures/make_tokenizer_fixtures.py -> Tests/Fixtures/tokenizer/cases.json).

private typealias Support = TokenizerTestSupport

@Suite("GPT-2 tokenizer")
struct TokenizerTests {

    @Test func seedChecks() throws {
        guard let tok = Support.tiktokenTokenizer() else { return }
        #expect(tok.encode("Every effort moves you") == [6109, 3626, 6100, 345])
        #expect(tok.encode("Every day holds a") == [6109, 1110, 6622, 257])
        #expect(try tok.decode([6109, 3626, 6100, 345] as [Int32]) == "Every effort moves you")
        #expect(tok.vocabularySize == 50257)
        #expect(GPT2Tokenizer.endOfText == 50256)
    }

    @Test func matchesTiktokenOnFixtureCases() throws {
        guard let tok = Support.tiktokenTokenizer(), let fx = Support.fixtures() else { return }
        #expect(fx.cases.count >= 100)
        var failures = 0
        for c in fx.cases {
            let ids = tok.encode(c.text, allowSpecial: true)
            if ids != c.ids {
                failures += 1
                if failures <= 20 {
                    Issue.record("encode(\(c.text.debugDescription)) = \(ids), tiktoken: \(c.ids)")
                }
            }
            #expect(try tok.decode(c.ids) == c.text)
        }
        for c in fx.cases_ordinary {
            let ids = tok.encode(c.text, allowSpecial: false)
            #expect(ids == c.ids, "ordinary encode(\(c.text.debugDescription))")
            #expect(!ids.contains(Int32(GPT2Tokenizer.endOfText)))
        }
        #expect(failures == 0, "\(failures) of \(fx.cases.count) fixture cases differ from tiktoken")
    }

    @Test func matchesTiktokenOnCorpus() throws {
        guard let tok = Support.tiktokenTokenizer(), let fx = Support.fixtures() else { return }
        #expect(!fx.corpus.isEmpty, "fixtures have no corpus entries")
        for c in fx.corpus {
            guard let text = Support.corpusText(c) else { continue }
            #expect(text.utf8.count == c.byte_count, "\(c.name): byte count")
            let ids = tok.encode(text, allowSpecial: false)
            #expect(ids.count == c.count, "\(c.name): token count")
            #expect(Array(ids.prefix(c.first_ids.count)) == c.first_ids, "\(c.name): first ids")
            #expect(Support.sha256Hex(ofIDs: ids) == c.sha256, "\(c.name): sha256 of ids")
            for threads in [2, 3, 8] {
                let par = tok.encodeParallel(text, threads: threads, allowSpecial: false)
                #expect(par == ids, "\(c.name): encodeParallel(threads: \(threads)) differs from encode")
            }
            if c.prefix_chars == nil { #expect(c.count == 359954) }
            let decoded = try tok.decode(ids)
            #expect(decoded == text, "\(c.name): decode(encode(text)) != text")
        }
    }

    @Test func bothLoadersGiveTheSameVocabulary() throws {
        guard let a = Support.tiktokenTokenizer(), let b = Support.encoderJSONTokenizer() else { return }
        for id in 0..<GPT2Tokenizer.vocabularySize {
            if try a.tokenBytes(id) != b.tokenBytes(id) {
                Issue.record("token \(id) differs between gpt2.tiktoken and encoder.json")
                break
            }
        }
        if let fx = Support.fixtures() {
            for c in fx.cases {
                #expect(b.encode(c.text) == c.ids, "encoder.json tokenizer: \(c.text.debugDescription)")
            }
        }
        let directory = try GPT2Tokenizer(directory: Support.vocabFile("gpt2.tiktoken")!.deletingLastPathComponent())
        #expect(directory.encode("Every day holds a") == [6109, 1110, 6622, 257])
    }

    @Test func specialToken() throws {
        guard let tok = Support.tiktokenTokenizer() else { return }
        #expect(tok.encode("<|endoftext|>") == [50256])
        #expect(tok.encode("<|endoftext|>", allowSpecial: false) == [27, 91, 437, 1659, 5239, 91, 29])
        #expect(tok.encode("a<|endoftext|>b") == tok.encode("a") + [50256] + tok.encode("b"))
        #expect(try tok.decode([50256]) == "<|endoftext|>")
        #expect(tok.encode("") == [])
    }

    @Test func decodeErrorsAndInvalidUTF8() throws {
        guard let tok = Support.tiktokenTokenizer() else { return }
        #expect(throws: TokenizerError.invalidTokenID(50257)) { try tok.decode([50257]) }
        #expect(throws: TokenizerError.invalidTokenID(-1)) { try tok.decodeBytes([1, -1]) }
        #expect(throws: TokenizerError.invalidTokenID(-7)) { try tok.decodeBytes([Int64(1), -7]) }
        #expect(try tok.decode([Int](arrayLiteral: 6109, 1110)) == "Every day")
        #expect(throws: TokenizerError.invalidTokenID(1 << 40)) { try tok.decode([Int](arrayLiteral: 1 << 40)) }
        let message = TokenizerError.invalidTokenID(70000).description
        #expect(message.contains("70000") && !message.contains("\n"))
        // "你" is three byte tokens: each alone is invalid UTF-8.
        let ids = tok.encode("你")
        #expect(try tok.decodeBytes(ids) == Array("你".utf8))
        #expect(try tok.decode(ids.prefix(1)) == "\u{FFFD}")
        #expect(try tok.decode([Int]()) == "")
    }

    @Test func encodeUTF8Bytes() throws {
        guard let tok = Support.tiktokenTokenizer() else { return }
        let text = "Héllo, wörld! 你好 <|endoftext|> x"
        #expect(tok.encode(utf8: Array(text.utf8)) == tok.encode(text))
        let invalid: [UInt8] = [0x61, 0xFF, 0x62, 0xE4, 0xBD]
        #expect(tok.encode(utf8: invalid) == tok.encode(String(decoding: invalid, as: UTF8.self)))
        #expect(tok.encode(utf8: Data("Every day holds a".utf8)) == [6109, 1110, 6622, 257])
    }

    @Test func parallelMatchesSerialOnTrickyText() throws {
        guard let tok = Support.tiktokenTokenizer(), let fx = Support.fixtures() else { return }
        // Concatenate all fixture texts, with assorted separators, into > 2 MB of hard input (long enough for the chunked serial path).
        var parts: [String] = []
        let separators = [" ", "\n", "  ", "\n\n", " \n ", "\t", "<|endoftext|>", "", "\r\n", "\u{3000}"]
        var k = 0
        while parts.reduce(0, { $0 + $1.utf8.count }) < 2_300_000 {
            for c in fx.cases {
                parts.append(c.text)
                parts.append(separators[k % separators.count])
                k += 1
            }
        }
        let text = parts.joined()
        for allow in [true, false] {
            let serial = tok.encode(text, allowSpecial: allow)
            for threads in [1, 2, 5, 16] {
                #expect(tok.encodeParallel(text, threads: threads, allowSpecial: allow) == serial,
                        "threads \(threads), allowSpecial \(allow)")
            }
            #expect(try tok.decode(serial) == text)
        }
    }

    @Test func loaderErrorsAreClear() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = dir.appendingPathComponent("nope.tiktoken")
        do {
            _ = try GPT2Tokenizer(tiktokenFile: missing)
            Issue.record("loading a missing file did not throw")
        } catch let e as TokenizerError {
            guard case .cannotRead = e else { Issue.record("unexpected error \(e)"); return }
            #expect(e.description.contains("nope.tiktoken"))
        }
        let bad = dir.appendingPathComponent("bad.tiktoken")
        try Data("IQ== 0\nnot-base64!! 1\n".utf8).write(to: bad)
        #expect(throws: TokenizerError.malformedLine(path: bad.path, line: 2, reason: "invalid base64 token")) {
            try GPT2Tokenizer(tiktokenFile: bad)
        }
        let short = dir.appendingPathComponent("short.tiktoken")
        try Data("IQ== 0\nIg== 1\n".utf8).write(to: short)
        do {
            _ = try GPT2Tokenizer(tiktokenFile: short)
            Issue.record("a 2-token vocabulary was accepted")
        } catch let e as TokenizerError {
            #expect(e.description.contains("expected 50256 tokens"), "\(e)")
        }
        #expect(throws: TokenizerError.self) { try GPT2Tokenizer(directory: dir) }
    }
}
