import ArgumentParser
import Foundation
import Training

struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tokenize text files into llm.c .bin shards (train_*.bin, val_*.bin).",
        discussion: """
        Each file is one document, preceded by <|endoftext|> (50256). The last --val-fraction of the tokens \
        becomes val_*.bin, the rest train_*.bin; shards hold at most --shard-tokens tokens (uint16, llm.c format). \
        Train with --data DIR (train_*.bin) and --val DIR (val_*.bin).
          gpt2-dist prepare --text data/corpus/shakespeare_1mb.txt --out data/shakespeare
        """
    )
    @Option(parsing: .upToNextOption, help: "UTF-8 text files.") var text: [String]
    @Option(help: "Output directory for the shards.") var out: String
    @Option(help: "Fraction of tokens for validation.") var valFraction = 0.1
    @Option(help: "Maximum tokens per shard.") var shardTokens = 100_000_000
    @Flag(help: "Replace invalid UTF-8 with U+FFFD instead of failing.") var lossy = false
    @Option(help: "GPT-2 vocabulary: gpt2.tiktoken or a directory with it.") var vocab = "data/gpt2"
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let threads = try compute.applyOrExit()
        try runOrFail {
            var p = DatasetPreparer(inputs: text, outDirectory: out)
            p.valFraction = valFraction; p.shardTokens = shardTokens; p.lossy = lossy; p.threads = threads
            let tok = try loadTokenizer(vocab)
            let isTTY = isatty(2) != 0
            let s = try p.run(tokenizer: tok) { line in
                FileHandle.standardError.write(Data((isTTY ? "\r\u{1B}[K" + line : line + "\n").utf8))
            }
            if isTTY { FileHandle.standardError.write(Data("\n".utf8)) }
            print(String(format: "wrote %@ to %@: %d train + %d val tokens from %.2f MB in %.2f s (%.1f MB/s)",
                         s.files.joined(separator: ", "), out, s.trainTokens, s.valTokens, Double(s.bytes) / 1e6, s.seconds,
                         Double(s.bytes) / 1e6 / max(s.seconds, 1e-9)))
        }
    }
}
