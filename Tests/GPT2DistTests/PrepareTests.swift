@testable import Data
import Foundation
import Testing
import Tokenizer
import Checkpoint
import Common
@testable import Prepare
@testable import Training

/// The GPT-2 vocabulary from Launch/fetch-data's data directory ($GPT2DIST_DATA if set, else <repo>/data).
let vocabularyPath: String = {
    let data = ProcessInfo.processInfo.environment["GPT2DIST_DATA"].flatMap { $0.isEmpty ? nil : $0 } ?? repoRoot + "/data"
    return data + "/gpt2/gpt2.tiktoken"
}()

func loadVocabulary() throws -> GPT2Tokenizer? {
    guard FileManager.default.fileExists(atPath: vocabularyPath) else {
        Issue.record("GPT-2 vocabulary missing: no \(vocabularyPath) (run Launch/fetch-data)"); return nil
    }
    return try GPT2Tokenizer(tiktokenFile: URL(fileURLWithPath: vocabularyPath))
}

func write(_ text: String, _ path: String) throws {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

/// Tokens of every shard of a split, in order.
func splitTokens(_ dir: String, _ split: String) throws -> [Int32] {
    guard let paths = try? TokenDataset.resolve(dir + "/\(split)_*.bin") else { return [] }
    return try TokenDataset(paths: paths, vocabSize: nil).tokens()
}

/// Nothing of a dataset under a final name, and no staging directory left.
func expectNoDataset(_ dir: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    #expect(names.allSatisfy { !$0.hasSuffix(".bin") && $0 != DatasetManifest.fileName && !$0.hasPrefix(".prepare-") },
            "left behind in \(dir): \(names)", sourceLocation: sourceLocation)
}

@Suite struct PrepareTests {
    @Test func sha256MatchesKnownDigests() {
        #expect(SHA256.hex(Data()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Data("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let million = Data(repeating: UInt8(ascii: "a"), count: 1_000_000)
        #expect(SHA256.hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Fed in uneven pieces, the digest is the same.
        var h = SHA256(), at = 0, step = 1
        while at < million.count {
            let end = min(at + step, million.count)
            h.update(million[at..<end]); at = end; step = step * 3 % 997 + 1
        }
        #expect(h.finalizeHex() == SHA256.hex(million))
        // The SHA-extension path (where the CPU has it) agrees with the portable one.
        var r = TestRandom(5)
        let random = Data((0..<100_003).map { _ in UInt8(truncatingIfNeeded: r.next()) })
        var portable = SHA256(portable: true)
        portable.update(random)
        #expect(portable.finalizeHex() == SHA256.hex(random))
    }

    @Test func utf8ValidationAgreesWithTheStandardLibrary() {
        var r = TestRandom(11)
        let interesting: [UInt8] = [0x41, 0x80, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xA0, 0xED, 0x9F, 0xEF, 0xF0, 0x90, 0xF4, 0x8F, 0xF5, 0xFF]
        for _ in 0..<3000 {
            let n = Int(r.next() % 12)
            let bytes = (0..<n).map { _ in r.next() % 3 == 0 ? UInt8(truncatingIfNeeded: r.next()) : interesting[Int(r.next() % UInt64(interesting.count))] }
            let bad = bytes.withUnsafeBufferPointer { firstInvalidUTF8($0.baseAddress!, n) }
            let valid = String(validating: bytes, as: UTF8.self) != nil
            #expect((bad == nil) == valid, "\(bytes)")
            if let bad {   // everything before the reported offset is valid
                #expect(String(validating: bytes[..<bad], as: UTF8.self) != nil, "\(bytes) at \(bad)")
            }
        }
        let text = Array("ascii then é and 😀 then".utf8) + [0xE2, 0x28, 0xA1]
        #expect(text.withUnsafeBufferPointer { firstInvalidUTF8($0.baseAddress!, $0.count) } == text.count - 3)
    }

    @Test func jsonLineFieldReadsStringsAndRejectsBrokenLines() throws {
        func field(_ line: String, _ key: String = "text", lossy: Bool = false) -> Result<String, JSONLineField.Failure> {
            var out: [UInt8] = []
            let bytes = Array(line.utf8)
            do {
                try bytes.withUnsafeBufferPointer { try JSONLineField(key: Array(key.utf8), lossy: lossy).extract($0, into: &out) }
                return .success(String(decoding: out, as: UTF8.self))
            } catch { return .failure(error as! JSONLineField.Failure) }
        }
        func text(_ r: Result<String, JSONLineField.Failure>) -> String? { if case .success(let s) = r { return s }; return nil }
        #expect(text(field(#"{"text": "plain"}"#)) == "plain")
        #expect(text(field(#" {"id": 3, "meta": {"a": [1, -2.5e3, true, null, {"text": "inner"}]}, "text": "a\"b\\c\/d\n\t\u00e9\ud83d\ude00"} "#))
                == "a\"b\\c/d\n\té😀")
        #expect(text(field(#"{"text": "first", "text": "last"}"#)) == "last")
        #expect(text(field(#"{"content": "x"}"#, "content")) == "x")
        #expect(text(field(#"{"text": ""}"#)) == "")
        #expect(text(field(#"{"text": "lone \ud83d here"}"#, lossy: true)) == "lone \u{FFFD} here")
        func failure(_ r: Result<String, JSONLineField.Failure>) -> String {
            if case .failure(let f) = r { return "\(f)" }; return "success"
        }
        #expect(failure(field(#"{"id": 1}"#)) == "missing")
        #expect(failure(field(#"{"text": 5}"#)).hasPrefix("notString"))
        #expect(failure(field(#"{"text": ["a"]}"#)).hasPrefix("notString"))
        #expect(failure(field(#"{"text": "lone \ud83d"}"#)) == "unpairedSurrogate")
        for broken in [#"{"text": "unterminated}"#, #"{"text": "x",}"#, #"{"text" "x"}"#, #"["text"]"#, #"{"text": "x"} trailing"#,
                       #"{"text": "bad \q escape"}"#, #"{"a": tru, "text": "x"}"#, #"{"a": 1.}"#, "{\"text\": \"tab\tinside\"}", "",
                       #"{"text": "x""#, #"{"a": {"b": [1, 2}, "text": "x"}"#] {
            #expect(failure(field(broken)).hasPrefix("malformed"), "\(broken)")
        }
    }

    @Test func manifestRoundTripsAndDetectsEdits() throws {
        var m = DatasetManifest()
        m.shards = [.init(name: "train_000000.bin", split: "train", tokens: 10, sha256: String(repeating: "a", count: 64))]
        m.id = DatasetManifest.identity(of: m.shards)
        m.vocabulary = [.init(file: "gpt2.tiktoken", sha256: "b")]
        m.inputs = [.init(path: "x.jsonl", bytes: 3, documents: 1)]
        m.tokenIdLimit = 50257; m.invalidUtf8Replaced = 2; m.validation = "rule"
        let dir = tmpDir("manifest")
        try m.encoded().write(to: URL(fileURLWithPath: dir + "/" + DatasetManifest.fileName))
        #expect(try DatasetManifest.load(directory: dir) == m)
        m.shards[0].tokens = 11
        m.id = "0"
        try m.encoded().write(to: URL(fileURLWithPath: dir + "/" + DatasetManifest.fileName))
        #expect(throws: GPT2DistError.self) { try DatasetManifest.load(directory: dir) }
    }

    /// Directories (recursive), globs and JSONL in one corpus, read in blocks much smaller than it: documents in
    /// input order, each preceded by <|endoftext|>, encoded exactly as whole; every 4th document (f = 0.25) in val;
    /// shards of at most 700 tokens; the manifest's hashes are the files' sha256.
    @Test func prepareStreamsDirectoriesGlobsAndJSONL() throws {
        guard let tok = try loadVocabulary() else { return }
        let dir = tmpDir("prepare-mixed")
        var r = TestRandom(3)
        let words = ["the", "king", "shall", "speak", "é", "naïve", "42", "what's", "  ", "\n", "—", "😀", ",", "."]
        func prose(_ n: Int) -> String { (0..<n).map { _ in words[Int(r.next() % UInt64(words.count))] }.joined(separator: " ") }
        var documents: [String] = []
        // corpus/b/2.txt and corpus/a.txt (sorted: a.txt, b/2.txt), a hidden file and a non-text file that are skipped.
        let a = prose(30_000), b2 = prose(50)
        try write(a, dir + "/corpus/a.txt"); try write(b2, dir + "/corpus/b/2.txt")
        try write("hidden", dir + "/corpus/.hidden.txt"); try write("notes", dir + "/corpus/notes.md")
        documents += [a, b2]
        // A JSONL file with an empty record (skipped, counted) and a blank line.
        var lines: [String] = []
        for i in 0..<40 {
            let t = i == 7 ? "" : prose(Int(r.next() % 400) + 1)
            let quoted = String(decoding: try JSONSerialization.data(withJSONObject: ["text": t, "n": i]), as: UTF8.self)
            lines.append(quoted)
            if !t.isEmpty { documents.append(t) }
            if i == 20 { lines.append("   ") }
        }
        try write(lines.joined(separator: "\n") + "\n", dir + "/records.jsonl")
        // Globbed text files.
        for i in 0..<3 { let t = prose(200); try write(t, dir + "/extra/x\(i).txt"); documents.append(t) }

        var p = DatasetPreparer(inputs: [dir + "/corpus", dir + "/records.jsonl", dir + "/extra/x*.txt"], outDirectory: dir + "/out")
        p.valFraction = 0.25; p.shardTokens = 700; p.blockBytes = 1 << 16; p.threads = 2
        let s = try p.run(tokenizer: tok) { _ in }
        var train: [Int32] = [], val: [Int32] = []
        for (d, text) in documents.enumerated() {
            let ids = [Int32(50256)] + tok.encode(text, allowSpecial: false)
            if DatasetPreparer.isValidation(document: d, fraction: 0.25) { val += ids } else { train += ids }
        }
        #expect(try splitTokens(dir + "/out", "train") == train)
        #expect(try splitTokens(dir + "/out", "val") == val)
        let m = s.manifest
        #expect(m.train.documents + m.val.documents == documents.count && m.val.documents == documents.count / 4)
        #expect(m.emptyDocumentsSkipped == 1 && m.inputs.map(\.documents) == [1, 1, 39, 1, 1, 1])
        #expect(m.shards.count > 4 && m.shards.allSatisfy { $0.tokens <= 700 })
        for shard in m.shards { #expect(try SHA256.hex(ofFile: dir + "/out/" + shard.name) == shard.sha256) }
        #expect(try DatasetManifest.load(directory: dir + "/out") == m)
        #expect(!FileManager.default.fileExists(atPath: dir + "/out/.prepare-\(getpid())"))
        // Never over an existing dataset.
        #expect(throws: GPT2DistError.self) { _ = try p.run(tokenizer: tok) { _ in } }
    }

    /// One text file is one document: too few for document-level selection, so the last f of the tokens
    /// become validation (nanoGPT's split), across shard boundaries.
    @Test func prepareFallsBackToTheTokenTailForFewDocuments() throws {
        guard let tok = try loadVocabulary() else { return }
        let dir = tmpDir("prepare-tail")
        let text = String(repeating: "Every effort moves you. To be, or not to be.\n", count: 50)
        try write(text, dir + "/a.txt")
        var p = DatasetPreparer(inputs: [dir + "/a.txt"], outDirectory: dir + "/out")
        p.valFraction = 0.3; p.shardTokens = 200
        let s = try p.run(tokenizer: tok) { _ in }
        let all = [Int32(50256)] + tok.encode(text, allowSpecial: false)
        let valCount = Int(Double(all.count) * 0.3)
        #expect(try splitTokens(dir + "/out", "train") == Array(all.prefix(all.count - valCount)))
        #expect(try splitTokens(dir + "/out", "val") == Array(all.suffix(valCount)))
        #expect(s.manifest.val.tokens == valCount && s.manifest.validation.hasPrefix("the last"))
        for shard in s.manifest.shards { #expect(try SHA256.hex(ofFile: dir + "/out/" + shard.name) == shard.sha256) }
    }

    /// Each bad input: a one-line error naming the place, or with the flag, a count; never a shard under a final name.
    @Test func prepareRejectsBadInputAndLeavesNoPartialShards() throws {
        guard let tok = try loadVocabulary() else { return }
        let dir = tmpDir("prepare-bad")
        // Good documents first, written to many small shards, then the bad one: nothing may remain.
        for i in 0..<5 { try write(String(repeating: "good text number \(i). ", count: 300), dir + "/in/\(i).txt") }
        func attempt(_ extra: String, _ configure: (inout DatasetPreparer) -> Void = { _ in }) -> (String?, DatasetPreparer.Summary?) {
            let out = dir + "/out-\(UUID().uuidString.prefix(8))"
            var p = DatasetPreparer(inputs: [dir + "/in", extra], outDirectory: out)
            p.shardTokens = 100; p.blockBytes = 1 << 16
            configure(&p)
            do { return (nil, try p.run(tokenizer: tok) { _ in }) } catch {
                expectNoDataset(out)
                return ("\(error)", nil)
            }
        }
        // Invalid UTF-8, with its byte offset; --lossy replaces it.
        try Data(Array("fine start ".utf8) + [0xFF, 0xFE] + Array(" fine end".utf8)).write(to: URL(fileURLWithPath: dir + "/bad.txt"))
        let (utf8Error, _) = attempt(dir + "/bad.txt")
        #expect(utf8Error?.contains("bad.txt: invalid UTF-8 at byte offset 11") == true && utf8Error?.contains("--lossy") == true, "\(utf8Error ?? "")")
        let (_, lossy) = attempt(dir + "/bad.txt") { $0.lossy = true }
        #expect(lossy?.manifest.invalidUtf8Replaced == 1)
        // A binary file given as text.
        try Data([0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x00, 0x00]).write(to: URL(fileURLWithPath: dir + "/program"))
        let (binary, _) = attempt(dir + "/program")
        #expect(binary?.contains("looks like a binary file") == true)
        // Malformed JSONL, a missing field and a non-string field: file:line; --skip-bad-lines counts them.
        try write(#"{"text": "one"}"# + "\n" + #"{"text": "two""# + "\n" + #"{"body": "three"}"# + "\n" + #"{"text": 4}"# + "\n"
                  + #"{"text": "five"}"# + "\n", dir + "/bad.jsonl")
        let (json, _) = attempt(dir + "/bad.jsonl")
        #expect(json?.contains("bad.jsonl:2: malformed JSON") == true && json?.contains("--skip-bad-lines") == true, "\(json ?? "")")
        let (skipped, summary) = attempt(dir + "/bad.jsonl") { $0.skipBadLines = true }
        #expect(skipped == nil && summary?.manifest.badLinesSkipped == 3 && summary?.manifest.inputs.last?.documents == 2)
        #expect(summary?.skippedExamples.map { $0.components(separatedBy: ": ").first!.components(separatedBy: ":").last! } == ["2", "3", "4"])
        try write(#"{"body": "x"}"# + "\n", dir + "/nofield.jsonl")
        #expect(attempt(dir + "/nofield.jsonl").0?.contains("nofield.jsonl:1: no \"text\" field") == true)
        try write(#"{"text": 4}"# + "\n", dir + "/number.jsonl")
        #expect(attempt(dir + "/number.jsonl").0?.contains("field \"text\" is a number, not a string") == true)
        // Inputs that do not exist, and nothing to read.
        #expect(attempt(dir + "/missing.txt").0?.contains("input not found") == true)
        try write("", dir + "/empty/e.txt")
        var p = DatasetPreparer(inputs: [dir + "/empty"], outDirectory: dir + "/out-empty")
        #expect(throws: GPT2DistError.self) { _ = try p.run(tokenizer: tok) { _ in } }
        expectNoDataset(dir + "/out-empty")
        p.inputs = [dir + "/in", dir + "/empty"]
        #expect(try p.run(tokenizer: tok) { _ in }.manifest.emptyDocumentsSkipped == 1)
    }
}

/// Peak RSS in MiB of the release binary running `args` (measured by a fresh Python parent, so no other child of
/// the test process counts).
func peakRSS(_ args: [String]) throws -> (CLI.Result, Double) {
    let script = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        + "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    p.arguments = ["-c", script, CLI.binary] + args
    p.environment = CLI.environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    let fields = o.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    guard fields.count == 2 else { return (CLI.Result(status: -1, stdout: o, stderr: e), 0) }
    return (CLI.Result(status: Int32(fields[0]), stdout: o, stderr: e), fields[1] / 1024)
}

@Suite(.serialized) struct PrepareCLITests {
    /// Corpora 8x and 40x the read block: peak RSS stays the same within a few MB; Ctrl-C mid-run leaves nothing
    /// under a final name.
    @Test func prepareMemoryStaysBoundedAndCtrlCLeavesNothing() throws {
        guard FileManager.default.fileExists(atPath: vocabularyPath) else { Issue.record("no vocabulary"); return }
        let dir = tmpDir("prepare-big")
        var r = TestRandom(9)
        let words = ["the", "king", "shall", "speak", "of", "war", "and", "peace", "to", "all", "his", "men", "now", "42", ".", ","]
        let base = (0..<200_000).map { _ in words[Int(r.next() % UInt64(words.count))] }.joined(separator: " ")   // ~0.8 MB
        for i in 0..<40 { try write("\(i) " + base, dir + "/in/\(i / 10)/doc\(i).txt") }
        var jsonl = ""
        for i in 0..<2000 { jsonl += #"{"text": "record \#(i) "# + base.prefix(4000) + "\"}\n" }
        try write(jsonl, dir + "/in/records.jsonl")
        let vocab = ["--vocab", vocabularyPath, "--threads", "2", "--read-block-mb", "1", "--shard-tokens", "3000000"]
        // Peak RSS of one prepare; the smallest of `tries` (thread timing moves malloc's peak by a few MiB from run
        // to run, while holding the corpus would add the same 30+ MiB every time).
        func peak(_ input: String, _ out: String, tries: Int) throws -> Double {
            var best = Double.infinity
            for t in 0..<tries {
                let dest = dir + "/\(out)-\(t)"
                let (r, peak) = try peakRSS(["prepare", "--text", dir + "/" + input, "--out", dest] + vocab)
                #expect(r.status == 0, "\(r.stderr)")
                if t < tries - 1 { try? FileManager.default.removeItem(atPath: dest) }
                best = min(best, peak)
            }
            return best
        }
        var partPeak = try peak("in/0", "out-part", tries: 1), bigPeak = try peak("in", "out-big", tries: 1)
        if bigPeak - partPeak >= 8 {  // measure again before calling it growth
            partPeak = min(partPeak, try peak("in/0", "out-part-again", tries: 2))
            bigPeak = min(bigPeak, try peak("in", "out-big-again", tries: 2))
        }
        let m = try #require(try DatasetManifest.load(directory: dir + "/out-big-0"))
        #expect(m.train.documents + m.val.documents == 2040 && m.shards.count >= 4)
        // 4x the corpus (8 MB -> 40 MB): holding it, or its ids, would add 30 MB or more.
        #expect(bigPeak - partPeak < 8, "peak RSS \(bigPeak) MiB for 40 MB vs \(partPeak) MiB for 8 MB")

        // Ctrl-C while it runs: exit non-zero with a one-line message, nothing under a final name.
        let p = CLI.process(ranks: 0, ["prepare", "--text", dir + "/in", "--out", dir + "/out-int"] + vocab)
        try CLI.startAsFromShell(p, logPath: dir + "/int.log")
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && !((try? String(contentsOfFile: dir + "/int.log", encoding: .utf8)) ?? "").contains("prepare:") { usleep(20_000) }
        kill(p.processIdentifier, SIGINT)
        #expect(CLI.wait(p, seconds: 30))
        let log = (try? String(contentsOfFile: dir + "/int.log", encoding: .utf8)) ?? ""
        if p.terminationStatus == 0 {
            Issue.record("prepare finished before the interrupt reached it: \(log)")
        } else {
            #expect(log.contains("interrupted by SIGINT; nothing was written"), "\(log)")
        }
        expectNoDataset(dir + "/out-int")
    }

    /// train trusts a manifest's shards once their sha256 match (a changed byte is a one-line error), stores the
    /// manifest id in checkpoints, and a resume on a different dataset needs --allow-data-change.
    @Test func trainChecksTheManifestAndRefusesAnotherDatasetOnResume() throws {
        guard FileManager.default.fileExists(atPath: vocabularyPath) else { Issue.record("no vocabulary"); return }
        let dir = tmpDir("prepare-train")
        var r = TestRandom(4)
        let words = ["the", "king", "shall", "speak", "of", "war", "and", "peace", "to", "all"]
        for name in ["a", "b"] {
            for d in 0..<12 { try write((0..<800).map { _ in words[Int(r.next() % 10)] }.joined(separator: " "), dir + "/\(name)/\(d).txt") }
            let prep = try CLI.run(["prepare", "--text", dir + "/\(name)", "--out", dir + "/data-\(name)", "--vocab", vocabularyPath, "--val-fraction", "0.25"])
            #expect(prep.status == 0, "\(prep.stderr)")
        }
        let config = repoRoot + "/Configs/gpt2-small-cpu.json"
        func train(_ data: String, steps: Int, _ extra: [String] = []) throws -> CLI.Result {
            try CLI.run(["train", "--config", config, "--data", dir + "/" + data, "--val", dir + "/" + data, "--out", dir + "/run",
                         "--steps", String(steps), "--batch-size", "2", "--seq-len", "32", "--threads", "1", "--eval-every", "0"] + extra)
        }
        let first = try train("data-a", steps: 2)
        #expect(first.status == 0, "\(first.stderr)")
        let idA = try #require(try DatasetManifest.load(directory: dir + "/data-a")).id
        #expect(try TrainCheckpoint.readDataIdentity(path: dir + "/run/" + TrainCheckpoint.fileName(step: 2)) == idA)
        let other = try train("data-b", steps: 3, ["--resume"])
        #expect(other.status != 0 && other.stderr.contains("--allow-data-change") && other.stderr.split(separator: "\n").count == 1, "\(other.stderr)")
        let same = try train("data-a", steps: 3, ["--resume"])
        #expect(same.status == 0, "\(same.stderr)")
        let allowed = try train("data-b", steps: 4, ["--resume", "--allow-data-change"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
        // One flipped byte in a shard: caught by its sha256, before any step.
        let shard = dir + "/data-a/train_000000.bin"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: shard))
        bytes[TokenShardFormat.headerBytes + 10] ^= 1
        try bytes.write(to: URL(fileURLWithPath: shard))
        let corrupt = try CLI.run(["train", "--config", config, "--data", dir + "/data-a", "--out", dir + "/run2", "--steps", "1",
                                   "--batch-size", "2", "--seq-len", "32", "--threads", "1"])
        #expect(corrupt.status != 0 && corrupt.stderr.contains("sha256 differs"), "\(corrupt.stderr)")
    }
}

extension PrepareTests {
    /// .txt.gz and .jsonl.gz read as their plain forms (also found in directories); a truncated gzip file is a
    /// one-line error that leaves nothing behind.
    @Test func prepareReadsGzipInputs() throws {
        guard let tok = try loadVocabulary() else { return }
        let dir = tmpDir("prepare-gz")
        var r = TestRandom(21)
        let words = ["to", "be", "or", "not", "é", "😀", "\n", "the", "question"]
        func prose(_ n: Int) -> String { (0..<n).map { _ in words[Int(r.next() % UInt64(words.count))] }.joined(separator: " ") }
        try write(prose(20_000), dir + "/plain/a.txt")
        try write((0..<30).map { _ in #"{"text": "\#(prose(50).replacingOccurrences(of: "\n", with: "\\n"))"}"# }.joined(separator: "\n") + "\n",
                  dir + "/plain/b.jsonl")
        try FileManager.default.createDirectory(atPath: dir + "/zipped", withIntermediateDirectories: true)
        for name in ["a.txt", "b.jsonl"] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "gzip -c '\(dir)/plain/\(name)' > '\(dir)/zipped/\(name).gz'"]
            try p.run(); p.waitUntilExit()
            #expect(p.terminationStatus == 0)
        }
        func prepare(_ input: String, _ out: String) throws -> DatasetPreparer.Summary {
            var p = DatasetPreparer(inputs: [input], outDirectory: out)
            p.valFraction = 0.2; p.blockBytes = 1 << 16
            return try p.run(tokenizer: tok) { _ in }
        }
        let plain = try prepare(dir + "/plain", dir + "/out-plain"), zipped = try prepare(dir + "/zipped", dir + "/out-zipped")
        #expect(zipped.manifest.train.documents == 25 && zipped.manifest.val.documents == 6)
        #expect(zipped.manifest.shards.map(\.sha256) == plain.manifest.shards.map(\.sha256))
        // Truncated: the first half of the compressed text file.
        let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/zipped/a.txt.gz"))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: dir + "/cut.txt.gz"))
        do {
            _ = try prepare(dir + "/cut.txt.gz", dir + "/out-cut")
            Issue.record("a truncated gzip file was accepted")
        } catch {
            #expect("\(error)".contains("cut.txt.gz: not a valid gzip file"), "\(error)")
        }
        expectNoDataset(dir + "/out-cut")
    }
}
