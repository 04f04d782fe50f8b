import Common
import Foundation

/// GPT-2's byte-level BPE tokenizer (OpenAI's r50k/"gpt2" encoding), producing exactly tiktoken's ids.
///
/// Pre-tokenization follows GPT-2's pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (case-sensitive contractions,
/// `\s` = Unicode White_Space), each piece's UTF-8 bytes are merged by rank, and `<|endoftext|>` is token 50256.
/// Immutable after `init`; safe to share between threads.
public final class GPT2Tokenizer: Sendable {
    /// The id of `<|endoftext|>`.
    public static let endOfText: Int = 50256
    /// The text of the special token.
    public static let endOfTextString = "<|endoftext|>"
    /// Number of token ids (50,256 byte-pair tokens + `<|endoftext|>`).
    public static let vocabularySize: Int = 50257
    /// File names of the two vocabulary forms.
    public static let tiktokenFileName = "gpt2.tiktoken"
    public static let encoderJSONFileName = "encoder.json"
    public static let vocabBPEFileName = "vocab.bpe"

    let storage: VocabStorage

    /// Number of token ids (50257).
    public var vocabularySize: Int { GPT2Tokenizer.vocabularySize }

    /// Loads `gpt2.tiktoken` (`base64(bytes) rank` per line, ranks 0..<50256).
    public init(tiktokenFile: URL) throws {
        let data = try VocabularyFiles.readFile(tiktokenFile)
        let tokens = try VocabularyFiles.parseTiktoken(data, path: tiktokenFile.path)
        storage = try VocabStorage(tokens: tokens, path: tiktokenFile.path)
    }

    /// Loads OpenAI's `encoder.json` (mapped token string -> id) and `vocab.bpe` (the merges, checked against the ids).
    public init(encoderJSON: URL, vocabBPE: URL) throws {
        let json = try VocabularyFiles.readFile(encoderJSON)
        let merges = try VocabularyFiles.readFile(vocabBPE)
        let tokens = try VocabularyFiles.parseEncoderJSON(json, jsonPath: encoderJSON.path, merges: merges,
                                                          mergesPath: vocabBPE.path)
        storage = try VocabStorage(tokens: tokens, path: encoderJSON.path)
    }

    /// The vocabulary files a folder provides: `gpt2.tiktoken`, or else `encoder.json` and `vocab.bpe`.
    public static func vocabularyFiles(in directory: URL) throws -> [URL] {
        let fm = FileManager.default
        let tiktoken = directory.appendingPathComponent(GPT2Tokenizer.tiktokenFileName)
        if fm.fileExists(atPath: tiktoken.path) { return [tiktoken] }
        let json = directory.appendingPathComponent(GPT2Tokenizer.encoderJSONFileName)
        let bpe = directory.appendingPathComponent(GPT2Tokenizer.vocabBPEFileName)
        if fm.fileExists(atPath: json.path) && fm.fileExists(atPath: bpe.path) { return [json, bpe] }
        throw TokenizerError.cannotRead(
            path: directory.path, reason: "no \(GPT2Tokenizer.tiktokenFileName), nor \(GPT2Tokenizer.encoderJSONFileName) "
                + "with \(GPT2Tokenizer.vocabBPEFileName), in this folder")
    }

    /// Loads from a folder holding `gpt2.tiktoken`, or else `encoder.json` and `vocab.bpe`.
    public convenience init(directory: URL) throws {
        let files = try GPT2Tokenizer.vocabularyFiles(in: directory)
        if files.count == 1 { try self.init(tiktokenFile: files[0]) } else { try self.init(encoderJSON: files[0], vocabBPE: files[1]) }
    }

    // MARK: encoding

    /// Token ids of `text`. With `allowSpecial` a literal `<|endoftext|>` becomes token 50256; without, it is
    /// encoded as ordinary text (tiktoken's `encode_ordinary`).
    public func encode(_ text: String, allowSpecial: Bool = true) -> [Int32] {
        var text = text
        return text.withUTF8 { buf in encode(validUTF8: buf, allowSpecial: allowSpecial) }
    }

    /// Token ids of UTF-8 bytes; invalid UTF-8 is first repaired the way `String(decoding:as:)` does (U+FFFD).
    public func encode<Bytes: Collection>(utf8 bytes: Bytes, allowSpecial: Bool = true) -> [Int32]
    where Bytes.Element == UInt8 {
        encode(String(decoding: bytes, as: UTF8.self), allowSpecial: allowSpecial)
    }

    /// Same ids as `encode`, computed on up to `threads` threads: the text is cut only at single spaces or
    /// newlines between two non-space characters, where the pattern always ends one piece and starts the next,
    /// so each chunk encodes exactly as it does inside the whole text.
    public func encodeParallel(_ text: String, threads: Int, allowSpecial: Bool = true) -> [Int32] {
        var text = text
        return text.withUTF8 { buf -> [Int32] in
            let n = buf.count
            let minimumChunk = 1 << 16
            let chunks = min(max(threads, 1), n / minimumChunk)
            guard chunks > 1, let base = buf.baseAddress else {
                return encode(validUTF8: buf, allowSpecial: allowSpecial)
            }
            var cuts = [0]
            for k in 1..<chunks {
                let target = max(n * k / chunks, cuts.last! + 1)
                if let c = safeCut(base, from: target, limit: min(n, n * (k + 1) / chunks), end: n) { cuts.append(c) }
            }
            cuts.append(n)
            let pieces = cuts.count - 1
            // Chunk c writes its ids at offset cuts[c] of one buffer: a chunk of b bytes has at most b ids.
            let out = UnsafeMutablePointer<Int32>.allocate(capacity: max(n, 1))
            defer { out.deallocate() }
            let counts = UnsafeMutablePointer<Int>.allocate(capacity: pieces)
            defer { counts.deallocate() }
            let job = ParallelJob(storage: storage, text: base, cuts: cuts, out: out, counts: counts,
                                  allowSpecial: allowSpecial)
            Parallel.forEach(pieces, workers: pieces) { _, c in job.run(c) }
            var total = 0
            for c in 0..<pieces { total += counts[c] }
            return [Int32](unsafeUninitializedCapacity: total) { dst, initialized in
                var w = 0
                for c in 0..<pieces {
                    (dst.baseAddress! + w).initialize(from: out + cuts[c], count: counts[c])
                    w += counts[c]
                }
                initialized = total
            }
        }
    }

    /// An encoder that keeps its BPE scratch and cache across calls: for many documents on one thread
    /// (a JSONL collection), one session per thread instead of one state per call. Not for sharing between threads.
    public final class Session {
        let state: EncodeState
        init(_ storage: VocabStorage) { state = EncodeState(vocab: storage) }

        /// Encodes valid UTF-8 `text` (as `encode(_:allowSpecial:)` does) into `out`, which must hold
        /// `text.count` ids (a text of n bytes has at most n tokens); returns the number written.
        public func encode(validUTF8 text: UnsafeBufferPointer<UInt8>, allowSpecial: Bool = false,
                           into out: UnsafeMutablePointer<Int32>) -> Int {
            guard let base = text.baseAddress, text.count > 0 else { return 0 }
            return state.encode(base, 0, text.count, allowSpecial: allowSpecial, out)
        }
    }

    public func session() -> Session { Session(storage) }

    /// The first position in [from, limit) of `text` where it can be cut without changing the ids (see
    /// `encodeParallel`), or nil.
    public func safeCut(_ text: UnsafeBufferPointer<UInt8>, from: Int, limit: Int) -> Int? {
        guard let base = text.baseAddress else { return nil }
        return safeCut(base, from: from, limit: min(limit, text.count), end: text.count)
    }

    func encode(validUTF8 buf: UnsafeBufferPointer<UInt8>, allowSpecial: Bool) -> [Int32] {
        let n = buf.count
        guard n > 0, let base = buf.baseAddress else { return [] }
        let state = EncodeState(vocab: storage)
        let chunk = 1 << 20
        if n <= 4096 {
            // A text of n bytes has at most n tokens.
            return [Int32](unsafeUninitializedCapacity: n) { dst, initialized in
                initialized = state.encode(base, 0, n, allowSpecial: allowSpecial, dst.baseAddress!)
            }
        }
        // Long texts: encode ~1 MB chunks, cut where the ids cannot change (see encodeParallel), so the scratch
        // output stays small.
        var result = [Int32]()
        result.reserveCapacity(n / 3)
        var scratchCapacity = 0
        var scratch = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { scratch.deallocate() }
        var start = 0
        while start < n {
            var end = n
            if n - start > chunk + chunk / 2 {
                end = safeCut(base, from: start + chunk, limit: n, end: n) ?? n
            }
            if end - start > scratchCapacity {
                scratch.deallocate()
                scratchCapacity = end - start
                scratch = .allocate(capacity: scratchCapacity)
            }
            let count = state.encode(base, start, end, allowSpecial: allowSpecial, scratch)
            result.append(contentsOf: UnsafeBufferPointer(start: scratch, count: count))
            start = end
        }
        return result
    }

    /// First position in [from, limit) where the text can be cut without changing the ids: a single ' ' or '\n'
    /// with a non-whitespace scalar on each side.
    func safeCut(_ p: UnsafePointer<UInt8>, from: Int, limit: Int, end: Int) -> Int? {
        let classes = UnsafePointer(storage.classes)
        var i = max(from, 1)
        while i < limit && i + 1 < end {
            let b = p[i]
            if b == 0x20 || b == 0x0A {
                // previous scalar: step back over continuation bytes
                var s = i - 1
                while s > 0 && p[s] & 0xC0 == 0x80 { s -= 1 }
                if scalarClass(p, s, classes).0 != CharClass.space && scalarClass(p, i + 1, classes).0 != CharClass.space {
                    return i
                }
            }
            i += 1
        }
        return nil
    }

    // MARK: decoding

    /// The bytes of the tokens, concatenated. Throws `TokenizerError.invalidTokenID` for an id outside 0..<50257.
    public func decodeBytes(_ ids: [Int32]) throws -> [UInt8] {
        try ids.withUnsafeBufferPointer { try decodeBytes(buffer: $0) }
    }

    /// The bytes of the tokens, concatenated. Throws `TokenizerError.invalidTokenID` for an id outside 0..<50257.
    public func decodeBytes<IDs: Sequence>(_ ids: IDs) throws -> [UInt8] where IDs.Element: BinaryInteger {
        var narrowed = [Int32]()
        narrowed.reserveCapacity(ids.underestimatedCount)
        for id in ids {
            guard let r = Int32(exactly: id), r >= 0, Int(r) < GPT2Tokenizer.vocabularySize else {
                throw TokenizerError.invalidTokenID(Int(clamping: id))
            }
            narrowed.append(r)
        }
        return try decodeBytes(narrowed)
    }

    func decodeBytes(buffer ids: UnsafeBufferPointer<Int32>) throws -> [UInt8] {
        let s = storage
        let special = Int32(GPT2Tokenizer.endOfText)
        var total = 0
        for id in ids {
            if id >= 0 && id < special {
                total += Int(s.offsets[Int(id) + 1] &- s.offsets[Int(id)])
            } else if id == special {
                total += endOfTextBytes.count
            } else {
                throw TokenizerError.invalidTokenID(Int(id))
            }
        }
        return endOfTextBytes.withUnsafeBufferPointer { eot in
            [UInt8](unsafeUninitializedCapacity: total) { dst, initialized in
                var w = dst.baseAddress!
                for id in ids {
                    if id == special {
                        w.initialize(from: eot.baseAddress!, count: eot.count)
                        w += eot.count
                    } else {
                        let o = Int(s.offsets[Int(id)])
                        let n = Int(s.offsets[Int(id) + 1]) - o
                        w.initialize(from: s.bytes + o, count: n)
                        w += n
                    }
                }
                initialized = total
            }
        }
    }

    /// The text of the tokens; byte sequences that are not valid UTF-8 become U+FFFD.
    /// Throws `TokenizerError.invalidTokenID` for an id outside 0..<50257.
    public func decode(_ ids: [Int32]) throws -> String {
        String(decoding: try decodeBytes(ids), as: UTF8.self)
    }

    /// The text of the tokens; byte sequences that are not valid UTF-8 become U+FFFD.
    /// Throws `TokenizerError.invalidTokenID` for an id outside 0..<50257.
    public func decode<IDs: Sequence>(_ ids: IDs) throws -> String where IDs.Element: BinaryInteger {
        String(decoding: try decodeBytes(ids), as: UTF8.self)
    }

    /// The bytes of one token. Throws `TokenizerError.invalidTokenID` for an id outside 0..<50257.
    public func tokenBytes(_ id: Int) throws -> [UInt8] {
        try decodeBytes(CollectionOfOne(id))
    }
}

/// Shared description of one `encodeParallel` call; each iteration touches only its own chunk and output range.
private final class ParallelJob: @unchecked Sendable {
    let storage: VocabStorage
    let text: UnsafePointer<UInt8>
    let cuts: [Int]
    let out: UnsafeMutablePointer<Int32>
    let counts: UnsafeMutablePointer<Int>
    let allowSpecial: Bool

    init(storage: VocabStorage, text: UnsafePointer<UInt8>, cuts: [Int], out: UnsafeMutablePointer<Int32>,
         counts: UnsafeMutablePointer<Int>, allowSpecial: Bool) {
        self.storage = storage
        self.text = text
        self.cuts = cuts
        self.out = out
        self.counts = counts
        self.allowSpecial = allowSpecial
    }

    func run(_ c: Int) {
        let state = EncodeState(vocab: storage)
        let start = cuts[c]
        counts[c] = state.encode(text, start, cuts[c + 1], allowSpecial: allowSpecial, out + start)
    }
}

/// Finds the GPT-2 vocabulary: a gpt2.tiktoken file, or a directory holding it (or encoder.json + vocab.bpe).
public func loadTokenizer(_ path: String) throws -> GPT2Tokenizer {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw GPT2DistError(.preparation, "GPT-2 vocabulary not found at \(path) (run Launch/fetch-data, or pass --vocab)")
    }
    let url = URL(fileURLWithPath: path)
    return isDir.boolValue ? try GPT2Tokenizer(directory: url) : try GPT2Tokenizer(tiktokenFile: url)
}
