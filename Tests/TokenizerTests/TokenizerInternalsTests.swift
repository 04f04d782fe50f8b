// Tests of internals (character classes, pre-tokenizer pieces, the two byte-pair merge implementations).
// They need @testable, so they are compiled only in debug builds (`swift test`).
#if DEBUG
import Foundation
import Testing

@testable import Tokenizer

private typealias Support = TokenizerTestSupport

@Suite("GPT-2 tokenizer internals")
struct TokenizerInternalsTests {
    @Test func whitespaceClasses() {
        // \s of the Rust regex crate = Unicode White_Space.
        let spaces: [UInt32] = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2005, 0x200A, 0x2028,
                                0x2029, 0x202F, 0x205F, 0x3000]
        let notSpaces: [UInt32] = [0x00, 0x1C, 0x1D, 0x1E, 0x1F, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]
        for v in spaces { #expect(classify(Unicode.Scalar(v)!) == CharClass.space, "U+\(String(v, radix: 16))") }
        for v in notSpaces { #expect(classify(Unicode.Scalar(v)!) != CharClass.space, "U+\(String(v, radix: 16))") }
        #expect(classify("²") == CharClass.number)
        #expect(classify("½") == CharClass.number)
        #expect(classify("Ⅻ") == CharClass.number)
        #expect(classify("\u{0301}") == CharClass.other)
        #expect(classify("ʰ") == CharClass.letter)
        #expect(classify("中") == CharClass.letter)
    }

    /// The generated class table (tiktoken's classes) agrees with Swift's Unicode properties for every scalar that both
    /// Unicode versions assign: it may differ only for scalars newer than tiktoken's Unicode 16.
    @Test func classTableAgreesWithSwiftUnicodeUpTo16() {
        var differences = 0
        for v in UInt32(0)..<0x110000 {
            guard let s = Unicode.Scalar(v), let age = s.properties.age, age.major <= 16 else { continue }
            let p = s.properties
            let expected: UInt8
            if p.isWhitespace {
                expected = CharClass.space
            } else {
                switch p.generalCategory {
                case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
                    expected = CharClass.letter
                case .decimalNumber, .letterNumber, .otherNumber:
                    expected = CharClass.number
                default:
                    expected = CharClass.other
                }
            }
            if classify(s) != expected {
                differences += 1
                if differences <= 10 { Issue.record("U+\(String(v, radix: 16)): table \(classify(s)), Swift \(expected)") }
            }
            if v < 0x10000 && bmpClassTable[Int(v)] != classify(s) {
                Issue.record("BMP table differs at U+\(String(v, radix: 16))")
            }
        }
        #expect(differences == 0)
        // Unicode 17 additions are "other" for tiktoken 0.14.
        #expect(classify("\u{A7F1}") == CharClass.other)
        #expect(classify("\u{323B0}") == CharClass.other)
    }

    /// Pre-tokenization pieces, for readable expectations.
    func pieces(_ text: String) -> [String] {
        var text = text
        return text.withUTF8 { buf in bmpClassTable.withUnsafeBufferPointer { table in
            let p = buf.baseAddress!
            let classes = table.baseAddress!
            var out: [String] = []
            var i = 0
            while i < buf.count {
                let j = nextPieceEnd(p, i, buf.count, classes)
                out.append(String(decoding: UnsafeBufferPointer(start: p + i, count: j - i), as: UTF8.self))
                i = j
            }
            return out
        } }
    }

    @Test func preTokenizerPieces() {
        #expect(pieces("Hello world") == ["Hello", " world"])
        #expect(pieces("I'm they're WE'RE it'S") == ["I", "'m", " they", "'re", " WE", "'", "RE", " it", "'", "S"])
        #expect(pieces("a   b") == ["a", "  ", " b"])
        #expect(pieces("a\t\tb") == ["a", "\t", "\t", "b"])
        #expect(pieces("a\n b") == ["a", "\n", " b"])
        #expect(pieces("x  ") == ["x", "  "])
        #expect(pieces("\r\n\n   \t x") == ["\r\n\n   \t", " x"])
        #expect(pieces("a\u{A0}b") == ["a", "\u{A0}", "b"])
        #expect(pieces("1,000 ½²") == ["1", ",", "000", " ½²"])
        #expect(pieces("''s ?!x") == ["''", "s", " ?!", "x"])
        #expect(pieces("e\u{301}te") == ["e", "\u{301}", "te"])
    }

    /// tiktoken's byte_pair_merge, transcribed naively (lookups by bytes), as the reference for the fast paths.
    func referenceMerge(_ tok: GPT2Tokenizer, _ piece: [UInt8]) -> [UInt32] {
        let s = tok.storage
        func rank(_ a: Int, _ b: Int) -> UInt32 {
            piece.withUnsafeBufferPointer { p in
                s.lookup(p.baseAddress! + a, b - a).map { UInt32($0) } ?? UInt32.max
            }
        }
        var bounds = Array(0...piece.count)
        while bounds.count > 2 {
            var best = UInt32.max
            var at = -1
            for i in 0..<(bounds.count - 2) {
                let r = rank(bounds[i], bounds[i + 2])
                if r < best {
                    best = r
                    at = i
                }
            }
            if at < 0 { break }
            bounds.remove(at: at + 1)
        }
        return (0..<(bounds.count - 1)).map { rank(bounds[$0], bounds[$0 + 1]) }
    }

    @Test func bytePairMergeMatchesReference() throws {
        guard let tok = Support.tiktokenTokenizer() else { return }
        var rng = SplitMix(seed: 42)
        let alphabets: [[UInt8]] = [
            Array("abcdefghijklmnopqrstuvwxyz".utf8), Array("aeinrst ".utf8), Array("=-_*#. ".utf8),
            Array(0...255), Array("ab".utf8), Array("0123456789".utf8),
        ]
        let state = EncodeState(vocab: tok.storage)
        for trial in 0..<3000 {
            let alphabet = alphabets[trial % alphabets.count]
            let n = trial < 2500 ? 2 + Int(rng.next() % 40) : 90 + Int(rng.next() % 400)
            let piece = (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            let expected = referenceMerge(tok, piece)
            let (small, large) = piece.withUnsafeBufferPointer { p -> ([UInt32], [UInt32]) in
                let m1 = state.bytePairMerge(p.baseAddress!, n)
                let a = Array(UnsafeBufferPointer(start: state.tok, count: m1))
                let m2 = state.bytePairMergeLarge(p.baseAddress!, n)
                let b = Array(UnsafeBufferPointer(start: state.tok, count: m2))
                return (a, b)
            }
            if small != expected || large != expected {
                Issue.record("merge of \(piece): small \(small), large \(large), reference \(expected)")
                return
            }
        }
    }
}
#endif
