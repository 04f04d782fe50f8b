import ArgumentParser
import Common
import Foundation
import Machine
import Prepare
import Tokenizer
import Training

struct BenchTokenizer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-tokenizer",
        abstract: "Encode throughput (MB/s) of the GPT-2 tokenizer on a text file, serial and parallel.",
        discussion: """
        Best of --repeats runs. Compare with tiktoken on the same file: Launch/bench/bench_tokenizer.py FILE.
          gpt2-dist bench-tokenizer --text data/corpus/shakespeare_1mb.txt --threads 2
        """
    )
    @Option(help: "UTF-8 text file.") var text: String
    @Option(help: "GPT-2 vocabulary: gpt2.tiktoken or a directory with it.") var vocab = "data/gpt2"
    @Option(help: "Repetitions (best is reported).") var repeats = 10
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let threads = try compute.applyOrExit()
        try runOrFail {
            guard let data = FileManager.default.contents(atPath: text), let s = String(data: data, encoding: .utf8) else {
                throw GPT2DistError(.usage, "cannot read UTF-8 text from \(text)")
            }
            let t0 = Runtime.now()
            let tok = try loadTokenizer(vocab)
            let load = Runtime.now() - t0
            func best(_ body: () -> [Int32]) -> (Double, Int) {
                var b = Double.infinity, n = 0
                for _ in 0..<repeats {
                    let t = Runtime.now()
                    n = body().count
                    b = min(b, Runtime.now() - t)
                }
                return (b, n)
            }
            let (serial, count) = best { tok.encode(s, allowSpecial: false) }
            let (parallel, count2) = best { tok.encodeParallel(s, threads: threads, allowSpecial: false) }
            precondition(count == count2)
            let mb = Double(data.count) / 1e6
            print(String(format: "%@: %.2f MB, %d tokens; vocabulary loaded in %.0f ms", text, mb, count, load * 1000))
            print(String(format: "  encode, 1 thread:   %7.1f ms  %7.1f MB/s", serial * 1000, mb / serial))
            print(String(format: "  encode, %d threads:  %7.1f ms  %7.1f MB/s", threads, parallel * 1000, mb / parallel))
        }
    }
}
