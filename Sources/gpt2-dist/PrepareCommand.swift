import ArgumentParser
import Common
import Foundation
import Machine
import Prepare
import Tokenizer
import Training

struct PrepareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare",
        abstract: "Tokenize a corpus of any size into llm.c .bin shards (train_*.bin, val_*.bin) and manifest.json.",
        discussion: """
        Inputs are files, directories (recursively: *.txt, *.jsonl and their .gz forms) and glob patterns. Each text file is one \
        document; each JSONL line is one document, its text in --jsonl-field. Every document is preceded by \
        <|endoftext|> (50256). The corpus is streamed: memory stays bounded whatever its size, and shards of at \
        most --shard-tokens tokens are written as they fill.

        Validation takes whole documents spread over the corpus: document d goes to val_*.bin when \
        floor((d+1)·f) > floor(d·f) for f = --val-fraction (every 10th document at 0.1). With fewer than 1/f \
        documents (a single text file), the last f of the tokens become validation instead.

        manifest.json records the inputs, document and token counts, and the sha256 of every shard and of the \
        vocabulary; train checks shards against it instead of scanning their tokens, and stores its id in \
        checkpoints. Nothing appears under a final name until the whole corpus succeeded.
          gpt2-dist prepare --text data/corpus/shakespeare --out data/shakespeare
          gpt2-dist prepare --text 'crawl/*.jsonl' --jsonl-field content --skip-bad-lines --out data/crawl
        """
    )
    @Option(parsing: .upToNextOption, help: "Inputs: UTF-8 text files, JSONL files (either may be .gz), directories or glob patterns.") var text: [String]
    @Option(help: "Output directory for the shards and manifest.json (must not hold a dataset yet).") var out: String
    @Option(help: "Fraction of documents for validation (0: none).") var valFraction = 0.1
    @Option(help: "Maximum tokens per shard (llm.c's default: 100M).") var shardTokens = 100_000_000
    @Option(help: "The JSONL field holding each document's text.") var jsonlField = "text"
    @Flag(help: "Replace invalid UTF-8 (and unpaired \\u surrogates) with U+FFFD instead of failing.") var lossy = false
    @Flag(help: "Skip malformed JSONL lines and lines without the text field (counted and reported) instead of failing.") var skipBadLines = false
    @Option(help: "Read the corpus in blocks of this many MB (memory use scales with it, not with the corpus).") var readBlockMb = 16
    @Option(help: "GPT-2 vocabulary: gpt2.tiktoken or a directory with it.") var vocab = "data/gpt2"
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let threads = try compute.applyOrExit()
        try runOrFail {
            var p = DatasetPreparer(inputs: text, outDirectory: out)
            p.valFraction = valFraction; p.shardTokens = shardTokens; p.lossy = lossy; p.threads = threads
            p.jsonlField = jsonlField; p.skipBadLines = skipBadLines
            guard readBlockMb > 0 && readBlockMb <= 4096 else { throw GPT2DistError(.usage, "--read-block-mb must be in 1...4096") }
            p.blockBytes = readBlockMb << 20
            let tok = try loadTokenizer(vocab)
            p.vocabulary = try vocabularyIdentity(vocab)
            StopSignal.install()
            let isTTY = isatty(2) != 0
            let s = try p.run(tokenizer: tok) { progress in
                FileHandle.standardError.write(Data((isTTY ? "\r\u{1B}[K" + progress.line : progress.line + "\n").utf8))
            }
            if isTTY { FileHandle.standardError.write(Data("\n".utf8)) }
            let m = s.manifest
            print(String(format: "wrote %d shards and %@ to %@ in %.1f s (%.1f MB/s): %.2f MB of input",
                         m.shards.count, "manifest.json", out, s.seconds, Double(s.bytes) / 1e6 / max(s.seconds, 1e-9), Double(s.bytes) / 1e6))
            print("  train: \(m.train.documents) documents, \(m.train.tokens) tokens; val: \(m.val.documents) documents, \(m.val.tokens) tokens")
            print("  validation: \(m.validation)")
            if m.emptyDocumentsSkipped > 0 { print("  skipped \(m.emptyDocumentsSkipped) empty documents") }
            if m.invalidUtf8Replaced > 0 { print("  replaced invalid UTF-8 in \(m.invalidUtf8Replaced) documents (--lossy)") }
            if m.badLinesSkipped > 0 {
                print("  skipped \(m.badLinesSkipped) bad JSONL lines (--skip-bad-lines), first: " + s.skippedExamples.joined(separator: "; "))
            }
        }
    }
}
