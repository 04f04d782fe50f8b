import CZlib
import Common
import Data
import Foundation
import Machine
import Tokenizer

/// Tokenizes a corpus of any size into llm.c token shards, streaming: text files (one document each) and JSONL
/// files (one document per line, the text in `jsonlField`) are read in blocks of about `blockBytes`, tokenized on
/// `threads` threads, and written to shards of at most `shardTokens` tokens as they fill. Memory stays bounded
/// by the block size, whatever the corpus size. Each document is preceded by <|endoftext|>, as llm.c does.
///
/// Validation takes whole documents, spread evenly over the corpus: document d (0-based, in input order, empty
/// ones not counted) goes to val when floor((d+1)·f) > floor(d·f), i.e. every 10th document for f = 0.1. A corpus
/// with fewer than 1/f documents (one big text file, say) falls back to the last f of its tokens.
///
/// Everything is written to a staging directory inside the output directory and moved into place, shards first
/// and `manifest.json` last, only when the whole corpus succeeded: an error or Ctrl-C leaves no shard under a
/// final name.
public struct DatasetPreparer {
    public var inputs: [String]
    public var outDirectory: String
    public var valFraction = 0.1
    public var shardTokens = 100_000_000
    public var lossy = false
    public var skipBadLines = false
    public var jsonlField = "text"
    public var threads = 1
    public var blockBytes = 16 << 20
    public var vocabulary: [DatasetManifest.Vocabulary] = []

    public init(inputs: [String], outDirectory: String) {
        self.inputs = inputs; self.outDirectory = outDirectory
    }

    public struct Progress {
        public var bytesDone = 0, bytesTotal = 0, documents = 0, tokens = 0
        public var seconds = 0.0
        public var line: String {
            let rate = Double(bytesDone) / max(seconds, 1e-9)
            return String(format: "prepare: %.1f/%.1f MB, %.1f MB/s, %d documents, %.2fM tokens, ETA %.0f s",
                          Double(bytesDone) / 1e6, Double(bytesTotal) / 1e6, rate / 1e6, documents, Double(tokens) / 1e6,
                          Double(bytesTotal - bytesDone) / max(rate, 1))
        }
    }

    public struct Summary {
        public var manifest: DatasetManifest
        public var bytes = 0
        public var seconds = 0.0
        /// file:line and reason of the first skipped lines (--skip-bad-lines).
        public var skippedExamples: [String] = []
    }

    public func run(tokenizer: GPT2Tokenizer, progress: (Progress) -> Void) throws -> Summary {
        try checkSettings()
        let files = try CorpusFile.expand(inputs)
        let staging = try makeStagingDirectory()
        defer { try? FileManager.default.removeItem(atPath: staging) }
        let t0 = Date()
        var manifest = DatasetManifest()
        manifest.vocabulary = vocabulary
        manifest.tokenIdLimit = GPT2Tokenizer.vocabularySize
        manifest.jsonlField = jsonlField
        manifest.valFraction = valFraction
        manifest.inputs = files.map { DatasetManifest.Input(path: $0.path, bytes: $0.bytes, documents: 0) }
        let train = ShardWriter(prefix: "train", directory: staging, shardTokens: shardTokens)
        let val = ShardWriter(prefix: "val", directory: staging, shardTokens: shardTokens)
        var report = Progress(bytesTotal: files.reduce(0) { $0 + $1.bytes })
        let merger = BlockMerger(manifest: manifest, train: train, val: val, valFraction: valFraction)
        try tokenize(files, tokenizer: tokenizer, into: merger, report: &report, started: t0, progress: progress)
        manifest = try finishSplits(merger, train: train, val: val)
        guard FileManager.default.createFile(atPath: staging + "/" + DatasetManifest.fileName, contents: try manifest.encoded()) else {
            throw GPT2DistError(.preparation, "cannot write \(staging)/\(DatasetManifest.fileName)")
        }
        report.bytesDone = report.bytesTotal; report.tokens = train.total + val.total
        report.seconds = Date().timeIntervalSince(t0)
        progress(report)
        try publish(manifest, from: staging)
        var summary = Summary(manifest: manifest)
        summary.skippedExamples = merger.skippedExamples
        summary.bytes = report.bytesTotal
        summary.seconds = Date().timeIntervalSince(t0)
        return summary
    }

    /// Every setting in range, and no dataset already in --out (never overwritten).
    func checkSettings() throws {
        guard !inputs.isEmpty else { throw GPT2DistError(.preparation, "give at least one --text input (file, directory or glob)") }
        guard valFraction >= 0 && valFraction < 1 else { throw GPT2DistError(.preparation, "--val-fraction must be in [0, 1)") }
        guard shardTokens > 0 && shardTokens <= Int(Int32.max) else { throw GPT2DistError(.preparation, "--shard-tokens must be in 1...\(Int32.max)") }
        guard !jsonlField.isEmpty else { throw GPT2DistError(.preparation, "--jsonl-field must not be empty") }
        let existing = ((try? FileManager.default.contentsOfDirectory(atPath: outDirectory)) ?? []).filter {
            (($0.hasPrefix("train_") || $0.hasPrefix("val_")) && $0.hasSuffix(".bin")) || $0 == DatasetManifest.fileName
        }
        guard existing.isEmpty else {
            throw GPT2DistError(.preparation, "\(outDirectory) already holds a prepared dataset (\(existing.sorted()[0]), ...); not overwriting")
        }
    }

    /// OUT/.prepare-PID: shards are written here and moved into OUT only once all of them and the manifest are.
    func makeStagingDirectory() throws -> String {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: outDirectory, withIntermediateDirectories: true) } catch {
            throw GPT2DistError(.preparation, "cannot create output directory \(outDirectory)")
        }
        let staging = outDirectory + "/.prepare-\(getpid())"
        try? fm.removeItem(atPath: staging)
        do { try fm.createDirectory(atPath: staging, withIntermediateDirectories: true) } catch {
            throw GPT2DistError(.preparation, "cannot write to \(outDirectory)")
        }
        return staging
    }

    /// The pipeline: the reader fills block k + 1 while the workers tokenize block k and the writer merges block
    /// k - 1 into the shards (in corpus order, on its own thread). Ctrl-C stops it with nothing written.
    func tokenize(_ files: [CorpusFile], tokenizer: GPT2Tokenizer, into merger: BlockMerger, report: inout Progress,
                  started t0: Date, progress: (Progress) -> Void) throws {
        let reader = CorpusBlockReader(files: files, tokenizer: tokenizer, blockBytes: blockBytes, threads: threads)
        let workers = (0..<max(threads, 1)).map { _ in SegmentWorker(tokenizer: tokenizer, field: jsonlField, lossy: lossy, skipBadLines: skipBadLines) }
        var lastReport = Date.distantPast
        // Two sets of results: the writer merges one while the workers fill the other.
        var results: [[SegmentResult]] = [[], []]
        let writer = DispatchQueue(label: "prepare.writer"), writing = DispatchGroup()
        let prefetcher = DispatchQueue(label: "prepare.reader")
        var block = 0
        var more = try reader.nextBlock()
        while more {
            if StopSignal.requested {
                writing.wait()
                throw GPT2DistError(.preparation, "interrupted by \(StopSignal.name); nothing was written to \(outDirectory)")
            }
            let segments = reader.segments, buffer = reader.buffer, slot = block % 2
            while results[slot].count < segments.count { results[slot].append(SegmentResult()) }
            let set = results[slot]
            // Read the next block into the reader's other buffer while this one is tokenized.
            let next = Prefetch(), reading = DispatchGroup()
            reading.enter()
            prefetcher.async {
                next.result = Result { try reader.nextBlock() }
                reading.leave()
            }
            // Tokenize the block's segments on all threads, each thread taking the next segment in turn.
            Parallel.forEach(segments.count, workers: workers.count) { w, s in
                let seg = segments[s]
                workers[w].process(UnsafeBufferPointer(rebasing: buffer[seg.range]), seg, file: files[seg.file], into: set[s])
            }
            reading.wait()
            writing.wait()   // block - 1 is merged: its counts are final, and its result set may be reused next
            if let e = merger.error { throw e }
            merger.manifest.emptyDocumentsSkipped += reader.takeEmptyFiles()
            report.bytesDone = reader.inputBytesDone
            report.documents = merger.documents
            report.tokens = merger.train.total + merger.val.total
            report.seconds = Date().timeIntervalSince(t0)
            if Date().timeIntervalSince(lastReport) > 0.5 { progress(report); lastReport = Date() }
            writing.enter()
            writer.async {
                merger.merge(segments, set)
                writing.leave()
            }
            block += 1
            do { more = try next.result.get() } catch {
                writing.wait()   // the writer still appends block - 1 to the staging directory that is about to go
                throw error
            }
        }
        writing.wait()
        if let e = merger.error { throw e }
        merger.manifest.emptyDocumentsSkipped += reader.takeEmptyFiles()
    }

    /// Closes the shards and completes the manifest: how validation was chosen (whole documents, or the tail when
    /// there are too few documents for that), the token counts, the shards and the dataset's id.
    func finishSplits(_ merger: BlockMerger, train: ShardWriter, val: ShardWriter) throws -> DatasetManifest {
        var manifest = merger.manifest
        try train.finish()
        try val.finish()
        guard train.total + val.total > 0 else { throw GPT2DistError(.preparation, "no text in \(inputs.joined(separator: " ")) (every document was empty)") }
        if val.total == 0 && valFraction > 0 {
            let count = Int(Double(train.total) * valFraction)
            try train.moveTail(count, to: val)
            try val.finish()
            manifest.validation = "the last \(count) tokens (\(valFraction * 100)%): only \(merger.documents) document(s), "
                + "fewer than the \(Int((1 / valFraction).rounded(.up))) that document-level selection needs"
        } else {
            manifest.validation = valFraction > 0
                ? "whole documents: document d (0-based, in input order, empty ones not counted) when floor((d+1)*f) > floor(d*f), f = \(valFraction)"
                : "none (--val-fraction 0)"
        }
        manifest.train.tokens = train.total
        manifest.val.tokens = val.total
        manifest.shards = train.shards + val.shards
        manifest.id = DatasetManifest.identity(of: manifest.shards)
        return manifest
    }

    /// Moves the finished shards and the manifest from staging into OUT.
    func publish(_ manifest: DatasetManifest, from staging: String) throws {
        for name in manifest.shards.map(\.name) + [DatasetManifest.fileName] {
            do { try FileManager.default.moveItem(atPath: staging + "/" + name, toPath: outDirectory + "/" + name) } catch {
                throw GPT2DistError(.preparation, "cannot move \(name) into \(outDirectory): \(error.localizedDescription)")
            }
        }
    }

    /// Document d is validation when floor((d+1)·f) > floor(d·f): evenly spread, about f of all documents.
    public static func isValidation(document d: Int, fraction f: Double) -> Bool {
        f > 0 && (Double(d + 1) * f).rounded(.down) > (Double(d) * f).rounded(.down)
    }
}

/// Whether the reader found another block (set on the reader's thread, read after it finished).
final class Prefetch: @unchecked Sendable {
    var result: Result<Bool, Error> = .success(false)
}

/// Appends tokenized blocks to the shards in corpus order, counting documents (runs on the writer thread; the
/// caller reads its fields only between merges).
final class BlockMerger: @unchecked Sendable {
    var manifest: DatasetManifest
    let train: ShardWriter, val: ShardWriter
    let valFraction: Double
    var documents = 0
    var skippedExamples: [String] = []
    var error: Error?
    private var current: ShardWriter

    init(manifest: DatasetManifest, train: ShardWriter, val: ShardWriter, valFraction: Double) {
        self.manifest = manifest; self.train = train; self.val = val; self.valFraction = valFraction; current = train
    }

    func merge(_ segments: [CorpusBlockReader.Segment], _ results: [SegmentResult]) {
        guard error == nil else { return }
        do {
            for (s, seg) in segments.enumerated() {
                let r = results[s]
                if let e = r.error { throw GPT2DistError(.preparation, e) }
                manifest.emptyDocumentsSkipped += r.emptyDocuments
                manifest.badLinesSkipped += r.badLines.count
                manifest.invalidUtf8Replaced += r.replaced
                for example in r.badLines where skippedExamples.count < 5 { skippedExamples.append(example) }
                var start = 0
                for fragment in r.fragments {
                    if fragment.startsDocument {
                        let isVal = DatasetPreparer.isValidation(document: documents, fraction: valFraction)
                        current = isVal ? val : train
                        documents += 1
                        manifest.inputs[seg.file].documents += 1
                        if isVal { manifest.val.documents += 1 } else { manifest.train.documents += 1 }
                        try current.append(endOfText: true)
                    }
                    try current.append(r.tokens + start, count: fragment.end - start)
                    start = fragment.end
                }
            }
        } catch { self.error = error }
    }
}

/// The sha256 of the vocabulary file(s) `loadTokenizer(path)` reads, for the manifest.
public func vocabularyIdentity(_ path: String) throws -> [DatasetManifest.Vocabulary] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [] }
    let files = isDir.boolValue ? try GPT2Tokenizer.vocabularyFiles(in: URL(fileURLWithPath: path)).map(\.path) : [path]
    return try files.map { DatasetManifest.Vocabulary(file: ($0 as NSString).lastPathComponent, sha256: try SHA256.hex(ofFile: $0)) }
}

/// Reads the inputs in blocks: whole files, or for large ones pieces cut where the token ids cannot change
/// (text) or at line ends (JSONL). Large pieces are split further so that every thread has work. Bytes are read
/// straight into one reused block buffer (no per-block allocation or zero-filling); only the few bytes after the
/// last cut are carried to the next block.
final class CorpusBlockReader {
    struct Segment {
        var file: Int
        var range: Range<Int>     // in `buffer`
        var fileOffset: Int
        var firstLine: Int        // JSONL: line number of the segment's first line
    }

    let files: [CorpusFile]
    let tokenizer: GPT2Tokenizer
    let blockBytes: Int
    let threads: Int
    /// Two block buffers, used in turn: the next block is read into one while the workers tokenize the other.
    private var buffers: [(pointer: UnsafeMutablePointer<UInt8>, capacity: Int)]
    private var current = 0
    private var block: UnsafeMutablePointer<UInt8> { buffers[current].pointer }
    private var capacity: Int { buffers[current].capacity }
    private var used = 0
    var buffer: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: block, count: used) }
    private(set) var segments: [Segment] = []
    private var fileIndex = 0
    private var input: InputFile?
    private var finishedBytes = 0   // on-disk bytes of the files read to the end
    private var offset = 0, line = 1
    private var carry: [UInt8] = []
    private var eof = false
    private var emptyFiles = 0

    init(files: [CorpusFile], tokenizer: GPT2Tokenizer, blockBytes: Int, threads: Int) {
        self.files = files; self.tokenizer = tokenizer; self.blockBytes = max(blockBytes, 1 << 16); self.threads = max(threads, 1)
        buffers = (0..<2).map { _ in (UnsafeMutablePointer<UInt8>.allocate(capacity: max(blockBytes, 1 << 16)), max(blockBytes, 1 << 16)) }
    }

    deinit { for b in buffers { b.pointer.deallocate() } }

    /// Input consumed so far, in on-disk bytes (compressed bytes for .gz), for progress.
    var inputBytesDone: Int { finishedBytes + (input?.consumed ?? 0) }

    /// Empty text files seen since the last call (each is an empty document).
    func takeEmptyFiles() -> Int { defer { emptyFiles = 0 }; return emptyFiles }

    private func ensureCapacity(_ n: Int) {
        guard n > capacity else { return }
        let bigger = max(n, capacity * 2)
        let b = UnsafeMutablePointer<UInt8>.allocate(capacity: bigger)
        b.update(from: block, count: used)
        block.deallocate()
        buffers[current] = (b, bigger)
    }

    /// Reads the next block into `buffer` and `segments` (the other buffer than the previous block's, which stays
    /// valid meanwhile); false at the end of the corpus.
    func nextBlock() throws -> Bool {
        current ^= 1
        used = 0
        segments.removeAll(keepingCapacity: true)
        while used < blockBytes && fileIndex < files.count {
            let file = files[fileIndex]
            if input == nil {
                input = try InputFile(file)
                offset = 0; line = 1; carry.removeAll(keepingCapacity: true); eof = false
            }
            // This file's bytes start at `start`: first those carried over, then fresh ones.
            let start = used
            var want = max(blockBytes - used, carry.count + (64 << 10))
            ensureCapacity(start + want)
            if !carry.isEmpty { carry.withUnsafeBufferPointer { c in (block + start).update(from: c.baseAddress!, count: c.count) } }
            var have = carry.count
            carry.removeAll(keepingCapacity: true)
            var cut: Int? = nil
            while cut == nil {
                have += try read(into: block + start + have, upTo: want - have)
                let view = UnsafeBufferPointer(start: block + start, count: have)
                cut = eof ? have : findCut(view, kind: file.kind)
                if cut == nil {
                    if file.kind == .text && have >= 64 << 20 {
                        // 64 MB without a single safe cut (no spaces or newlines): cut at a scalar boundary. The ids
                        // may differ from the whole text's at this one point.
                        var c = have - 1
                        while c > 0 && view[c] & 0xC0 == 0x80 { c -= 1 }
                        cut = max(c, 1)
                    } else {
                        want = have * 2
                        ensureCapacity(start + want)
                    }
                }
            }
            let n = cut!
            if offset == 0 && eof && n == 0 && file.kind == .text { emptyFiles += 1 }
            carry.append(contentsOf: UnsafeBufferPointer(start: block + start + n, count: have - n))
            used = start + n
            if n > 0 {
                split(Segment(file: fileIndex, range: start..<used, fileOffset: offset, firstLine: line), kind: file.kind)
                if file.kind == .jsonl { line += newlines(block + start, n) }
                offset += n
            }
            if eof && carry.isEmpty {
                input = nil; finishedBytes += file.bytes; fileIndex += 1
            }
        }
        return !segments.isEmpty || emptyFiles > 0
    }

    /// Reads up to `count` bytes of the open file into `p`; returns how many (fewer only at the end of the file).
    private func read(into p: UnsafeMutablePointer<UInt8>, upTo count: Int) throws -> Int {
        guard !eof, count > 0, let input else { return 0 }
        var filled = 0
        while filled < count {
            let got = try input.read(into: p + filled, count: count - filled)
            if got == 0 { eof = true; break }
            filled += got
        }
        return filled
    }

    private func newlines(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var count = 0, i = 0
        while i < n, let hit = memchr(p + i, 0x0A, n - i) {
            count += 1
            i = UnsafePointer<UInt8>(hit.assumingMemoryBound(to: UInt8.self)) - p + 1
        }
        return count
    }

    /// Where the bytes read so far can end a segment: after the last newline (JSONL), or at a safe cut near the
    /// end (text); nil when there is none yet.
    private func findCut(_ b: UnsafeBufferPointer<UInt8>, kind: CorpusFile.Kind) -> Int? {
        switch kind {
        case .jsonl:
            var i = b.count - 1
            while i >= 0 && b[i] != 0x0A { i -= 1 }
            return i >= 0 ? i + 1 : nil
        case .text:
            return tokenizer.safeCut(b, from: max(b.count - (64 << 10), 1), limit: b.count)
                ?? tokenizer.safeCut(b, from: b.count / 2, limit: b.count)
        }
    }

    /// Appends `seg`, split into pieces of about blockBytes / (2 · threads) where they can be cut.
    private func split(_ seg: Segment, kind: CorpusFile.Kind) {
        let target = max(blockBytes / (2 * threads), 1 << 16)
        var piece = seg
        while piece.range.count > target + target / 2 {
            let lo = piece.range.lowerBound, hi = piece.range.upperBound
            let view = UnsafeBufferPointer(start: block + lo, count: hi - lo)
            var cut: Int?
            switch kind {
            case .jsonl:
                if let nl = memchr(view.baseAddress! + target, 0x0A, view.count - target) {
                    cut = UnsafePointer<UInt8>(nl.assumingMemoryBound(to: UInt8.self)) - view.baseAddress! + 1
                }
            case .text:
                cut = tokenizer.safeCut(view, from: target, limit: view.count)
            }
            guard let c = cut, c < view.count else { break }
            segments.append(Segment(file: piece.file, range: lo..<(lo + c), fileOffset: piece.fileOffset, firstLine: piece.firstLine))
            let lines = kind == .jsonl ? newlines(view.baseAddress!, c) : 0
            piece = Segment(file: piece.file, range: (lo + c)..<hi, fileOffset: piece.fileOffset + c, firstLine: piece.firstLine + lines)
        }
        segments.append(piece)
    }
}

/// An open input: a plain file through read(2), or a gzip file through zlib (decompressed as it is read).
final class InputFile {
    let path: String
    private var fd: Int32 = -1
    private var gz: gzFile?
    private var position = 0

    init(_ file: CorpusFile) throws {
        path = file.path
        if file.compressed {
            gz = gzopen(file.path, "rb")
            guard let gz else { throw GPT2DistError(.preparation, "cannot read input file \(file.path)") }
            gzbuffer(gz, 1 << 18)
        } else {
            fd = open(file.path, O_RDONLY)
            guard fd >= 0 else { throw GPT2DistError(.preparation, "cannot read input file \(file.path)") }
        }
    }

    deinit {
        if fd >= 0 { close(fd) }
        if let gz { gzclose(gz) }
    }

    /// On-disk bytes consumed.
    var consumed: Int { gz.map { Int(gzoffset($0)) } ?? position }

    /// Up to `count` bytes; 0 at the end.
    func read(into p: UnsafeMutablePointer<UInt8>, count: Int) throws -> Int {
        if let gz {
            let got = gzread(gz, p, UInt32(min(count, 1 << 30)))
            var code: Int32 = 0
            let message = String(cString: gzerror(gz, &code))
            if got < 0 || (code != Z_OK && code != Z_STREAM_END) {
                throw GPT2DistError(.preparation, "\(path): not a valid gzip file (\(message))")
            }
            return Int(got)
        }
        while true {
            let got = Foundation.read(fd, p, count)
            if got < 0 {
                if errno == EINTR { continue }
                throw GPT2DistError(.preparation, "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            position += got
            return got
        }
    }
}

/// What tokenizing one segment produced: ids, where each document fragment ends in them, and what was skipped.
final class SegmentResult {
    struct Fragment { var end: Int; var startsDocument: Bool }
    private(set) var tokens = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    private var capacity = 1
    var count = 0
    var fragments: [Fragment] = []
    var emptyDocuments = 0
    var replaced = 0
    var badLines: [String] = []
    var error: String?

    deinit { tokens.deallocate() }

    func reset() {
        count = 0; fragments.removeAll(keepingCapacity: true); emptyDocuments = 0; replaced = 0
        badLines.removeAll(keepingCapacity: true); error = nil
    }

    func append(_ ids: UnsafePointer<Int32>, count n: Int, startsDocument: Bool) {
        reserve(n)
        (tokens + count).update(from: ids, count: n)
        count += n
        fragments.append(.init(end: count, startsDocument: startsDocument))
    }

    /// Room for `n` more ids.
    private func reserve(_ n: Int) {
        guard count + n > capacity else { return }
        let bigger = max(capacity * 2, count + n)
        let t = UnsafeMutablePointer<Int32>.allocate(capacity: bigger)
        t.update(from: tokens, count: count)
        tokens.deallocate()
        tokens = t; capacity = bigger
    }
}

/// Tokenizes segments on one thread, with its own tokenizer session (whose cache serves many documents).
final class SegmentWorker {
    let session: GPT2Tokenizer.Session
    let field: JSONLineField
    let fieldName: String
    let lossy: Bool, skipBadLines: Bool
    var text: [UInt8] = []
    private var scratch = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    private var scratchCapacity = 1

    deinit { scratch.deallocate() }

    init(tokenizer: GPT2Tokenizer, field: String, lossy: Bool, skipBadLines: Bool) {
        session = tokenizer.session()
        self.field = JSONLineField(key: Array(field.utf8), lossy: lossy)
        fieldName = field; self.lossy = lossy; self.skipBadLines = skipBadLines
    }

    func process(_ bytes: UnsafeBufferPointer<UInt8>, _ seg: CorpusBlockReader.Segment, file: CorpusFile, into r: SegmentResult) {
        r.reset()
        switch file.kind {
        case .text:
            if let nul = memchr(bytes.baseAddress!, 0, bytes.count) {
                r.error = "\(file.path) looks like a binary file (NUL byte at offset \(seg.fileOffset + (UnsafePointer<UInt8>(nul.assumingMemoryBound(to: UInt8.self)) - bytes.baseAddress!))), not UTF-8 text"
                return
            }
            if let bad = firstInvalidUTF8(bytes.baseAddress!, bytes.count) {
                guard lossy else {
                    r.error = "\(file.path): invalid UTF-8 at byte offset \(seg.fileOffset + bad)\(file.compressed ? " of the decompressed text" : "") (pass --lossy to replace bad bytes with U+FFFD)"
                    return
                }
                encodeRepaired(bytes, r, startsDocument: seg.fileOffset == 0)
                return
            }
            encode(bytes, r, startsDocument: seg.fileOffset == 0)
        case .jsonl:
            var lineNumber = seg.firstLine
            var start = 0
            let p = bytes.baseAddress!
            while start < bytes.count {
                var end = start
                while end < bytes.count && p[end] != 0x0A { end += 1 }
                defer { start = end + 1; lineNumber += 1 }
                let line = UnsafeBufferPointer(start: p + start, count: end - start)
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }   // blank line
                text.removeAll(keepingCapacity: true)
                var problem: String?
                do { try field.extract(line, into: &text) } catch {
                    switch error {
                    case .malformed(let why): problem = "malformed JSON: \(why)"
                    case .missing: problem = "no \"\(fieldName)\" field"
                    case .notString(let kind): problem = "field \"\(fieldName)\" is \(kind), not a string"
                    case .unpairedSurrogate: problem = "field \"\(fieldName)\" holds an unpaired surrogate \\u escape (pass --lossy to replace it with U+FFFD)"
                    }
                }
                if let problem {
                    let location = "\(file.path):\(lineNumber)"
                    guard skipBadLines else {
                        let hint = problem.hasPrefix("field") && problem.contains("--lossy") ? "" : " (pass --skip-bad-lines to skip such lines)"
                        r.error = "\(location): \(problem)\(hint)"
                        return
                    }
                    r.badLines.append("\(location): \(problem)")
                    continue
                }
                if text.isEmpty { r.emptyDocuments += 1; continue }
                let ok = text.withUnsafeBufferPointer { t -> Bool in
                    if firstInvalidUTF8(t.baseAddress!, t.count) == nil { encode(t, r, startsDocument: true); return true }
                    guard lossy else { return false }
                    encodeRepaired(t, r, startsDocument: true)
                    return true
                }
                if !ok {
                    r.error = "\(file.path):\(lineNumber): invalid UTF-8 in field \"\(fieldName)\" (pass --lossy to replace bad bytes with U+FFFD)"
                    return
                }
            }
        }
    }

    /// Encodes into this worker's scratch (a text of n bytes may have n ids), then appends the ids alone to the
    /// result: results hold ~1 byte per text byte, not 4.
    private func encode(_ t: UnsafeBufferPointer<UInt8>, _ r: SegmentResult, startsDocument: Bool) {
        if t.count > scratchCapacity {
            scratch.deallocate()
            scratchCapacity = max(t.count, scratchCapacity * 2)
            scratch = .allocate(capacity: scratchCapacity)
        }
        let n = session.encode(validUTF8: t, into: scratch)
        r.append(scratch, count: n, startsDocument: startsDocument)
    }

    private func encodeRepaired(_ t: UnsafeBufferPointer<UInt8>, _ r: SegmentResult, startsDocument: Bool) {
        var repaired = String(decoding: t, as: UTF8.self)
        r.replaced += 1
        repaired.withUTF8 { encode($0, r, startsDocument: startsDocument) }
    }
}

/// Writes one split's shards as they fill: `<prefix>_NNNNNN.bin` in llm.c's format, hashing as it goes.
final class ShardWriter {
    let prefix: String, directory: String, shardTokens: Int
    private(set) var shards: [DatasetManifest.Shard] = []
    private(set) var total = 0
    private var handle: FileHandle?
    private var inShard = 0
    private var hasher = SHA256()
    private var pending: [UInt16] = []

    init(prefix: String, directory: String, shardTokens: Int) {
        self.prefix = prefix; self.directory = directory; self.shardTokens = shardTokens
        pending.reserveCapacity(1 << 20)
    }

    private func path(_ index: Int) -> String { directory + "/" + String(format: "%@_%06d.bin", prefix, index) }

    func append(endOfText: Bool) throws {
        var eot = Int32(GPT2Tokenizer.endOfText)
        try append(&eot, count: 1)
    }

    func append(_ ids: UnsafePointer<Int32>, count n: Int) throws {
        var done = 0
        while done < n {
            if handle == nil { try open() }
            let take = min(n - done, shardTokens - inShard - pending.count)
            for i in 0..<take { pending.append(UInt16(truncatingIfNeeded: ids[done + i])) }
            done += take
            total += take
            if pending.count >= 1 << 20 || inShard + pending.count == shardTokens { try flush() }
            if inShard == shardTokens { try close() }
        }
    }

    /// Copies raw shard tokens (already uint16).
    private func append(raw: UnsafeBufferPointer<UInt16>) throws {
        var i = 0
        while i < raw.count {
            let n = min(4096, raw.count - i)
            let ids = (0..<n).map { Int32(raw[i + $0]) }
            try ids.withUnsafeBufferPointer { try append($0.baseAddress!, count: n) }
            i += n
        }
    }

    private func open() throws {
        let p = path(shards.count)
        guard FileManager.default.createFile(atPath: p, contents: nil), let h = FileHandle(forWritingAtPath: p) else {
            throw GPT2DistError(.preparation, "cannot write \(p)")
        }
        // The header assumes a full shard; the last one's is rewritten (and rehashed) when it closes short.
        let head = TokenShardFormat.header(tokens: shardTokens)
        try h.write(contentsOf: head)
        hasher = SHA256(); hasher.update(head)
        handle = h; inShard = 0
    }

    private func flush() throws {
        guard let h = handle, !pending.isEmpty else { return }
        let bytes = pending.withUnsafeBytes { Data($0) }
        hasher.update(bytes)
        do { try h.write(contentsOf: bytes) } catch { throw GPT2DistError(.preparation, "cannot write \(path(shards.count)): \(error.localizedDescription)") }
        inShard += pending.count
        pending.removeAll(keepingCapacity: true)
    }

    private func close() throws {
        try flush()
        guard let h = handle else { return }
        let name = (path(shards.count) as NSString).lastPathComponent
        var digest = hasher.finalizeHex()
        if inShard != shardTokens {
            try h.seek(toOffset: 0)
            try h.write(contentsOf: TokenShardFormat.header(tokens: inShard))
            try h.close()
            digest = try SHA256.hex(ofFile: path(shards.count))
        } else {
            try h.close()
        }
        handle = nil
        shards.append(.init(name: name, split: prefix, tokens: inShard, sha256: digest))
    }

    func finish() throws { try close() }

    /// Moves the last `count` tokens of this split into `other` (the fallback validation split), shrinking or
    /// removing this split's last shards. Streams through a small buffer.
    func moveTail(_ count: Int, to other: ShardWriter) throws {
        guard count > 0 else { return }
        var first = shards.count - 1, skip = total - count   // tokens kept
        var before = total - shards[first].tokens
        while before > skip { first -= 1; before -= shards[first].tokens }
        let keepInFirst = skip - before
        for s in first..<shards.count {
            let data = try Data(contentsOf: URL(fileURLWithPath: path(s)), options: .alwaysMapped)
            let from = s == first ? keepInFirst : 0
            try data.withUnsafeBytes { raw in
                let t = (raw.baseAddress! + TokenShardFormat.headerBytes).assumingMemoryBound(to: UInt16.self)
                try other.append(raw: UnsafeBufferPointer(start: t + from, count: shards[s].tokens - from))
            }
        }
        for s in (first + 1)..<shards.count { try? FileManager.default.removeItem(atPath: path(s)) }
        shards.removeLast(shards.count - first - 1)
        if keepInFirst == 0 {
            try? FileManager.default.removeItem(atPath: path(first))
            shards.removeLast()
        } else {
            let h = try FileHandle(forUpdating: URL(fileURLWithPath: path(first)))
            try h.truncate(atOffset: UInt64(TokenShardFormat.headerBytes + 2 * keepInFirst))
            try h.seek(toOffset: 0)
            try h.write(contentsOf: TokenShardFormat.header(tokens: keepInFirst))
            try h.close()
            shards[first].tokens = keepInFirst
            shards[first].sha256 = try SHA256.hex(ofFile: path(first))
        }
        total -= count
    }
}

/// A UTF-8 text file as one document of GPT-2 tokens, preceded by <|endoftext|> as `prepare` writes documents
/// (for `eval --text`); every id must fit `vocabSize`.
public func tokenizeDocument(path: String, vocabulary: String, vocabSize: Int) throws -> TokenDataset {
    guard let raw = FileManager.default.contents(atPath: path), let text = String(data: raw, encoding: .utf8) else {
        throw GPT2DistError(.usage, "cannot read UTF-8 text from \(path)")
    }
    let ids = [Int32(GPT2Tokenizer.endOfText)] + (try loadTokenizer(vocabulary)).encode(text, allowSpecial: false)
    if let bad = ids.first(where: { Int($0) >= vocabSize }) {
        throw GPT2DistError(.usage, "token id \(bad) of \(path) is out of range for the model's vocab_size \(vocabSize)")
    }
    return TokenDataset(tokens: ids.map { UInt16($0) })
}
