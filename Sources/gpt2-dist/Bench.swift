import ArgumentParser
import Autograd
import Common
import Foundation
import GPT2
import Machine
import Training

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure forward+backward speed: ms/step, tokens/s, GFLOP/s, MFU, peak RSS.",
        discussion: """
        FLOPs per token are 6N + 12·L·C·T (nanoGPT's count). MFU is against the sgemm rate measured here at the \
        same thread count (GPT-2-like shapes, best of several runs). Random weights; the first step is warm-up.
          gpt2-dist bench --config Configs/gpt2-124M.json --batch-size 8 --seq-len 128 --steps 5 --threads 2
        """
    )
    @Option(help: "Model config JSON.") var config: String
    @Option(help: "Sequences per step.") var batchSize = 8
    @Option(help: "Tokens per sequence.") var seqLen = 128
    @Option(help: "Timed steps (after one warm-up step).") var steps = 5
    @Flag(help: "Include an AdamW update in each step.") var optimizer = false
    @Flag(help: "Print time per op kind.") var profile = false
    @Flag(help: "Recompute block activations in backward.") var recompute = false
    @Option(help: "Matrix products: fp32 or bf16 (bf16-rounded operands, fp32 accumulation).") var precision: MatmulPrecision = .fp32
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let threads = try compute.applyOrExit()
        try runOrFail {
            var bench = StepBenchmark(config: try GPT2Config.load(path: config))
            bench.batchSize = batchSize; bench.seqLen = seqLen; bench.steps = steps
            bench.optimizer = optimizer; bench.recompute = recompute; bench.profile = profile; bench.precision = precision
            let r = try bench.run()
            if json {
                print("""
                {"ms_per_step": \(r.medianSeconds * 1000), "best_ms_per_step": \(r.bestSeconds * 1000), "tokens_per_s": \(r.tokensPerSecond), \
                "gflops": \(r.flopsPerSecond / 1e9), "sgemm_peak_gflops": \(r.sgemmPeak / 1e9), "gemm_peak_gflops": \((r.gemmPeak ?? r.sgemmPeak) / 1e9), "mfu": \(r.mfu), \
                "peak_rss_bytes": \(r.peakRSS), "threads": \(threads), "kernel": "\(BLAS.coreName)", "precision": "\(precision.rawValue)", \
                "bf16_engine": "\(precision == .bf16 ? (try? BF16Engine.choose())?.engine.rawValue ?? "" : "")"}
                """)
                return
            }
            print("\(Runtime.blasDescription); model \(grouped(bench.config.parameterCount)) parameters; batch \(batchSize) x \(seqLen); "
                  + "precision \(precision.rawValue)\((try? BF16Engine.choose()).map { precision == .bf16 ? ", engine \($0.detail)" : "" } ?? "")")
            print(String(format: "sgemm peak (measured, %d thread(s)): %.1f GFLOP/s", threads, r.sgemmPeak / 1e9)
                  + (r.gemmPeak.map { String(format: "; bf16 products (this engine): %.1f GFLOP/s", $0 / 1e9) } ?? ""))
            print(String(format: "forward+backward%@: median %.1f ms/step (best %.1f, forward %.1f%@), %.0f tokens/s",
                         optimizer ? "+AdamW" : "", r.medianSeconds * 1000, r.bestSeconds * 1000, r.forwardSeconds * 1000,
                         optimizer ? String(format: ", AdamW %.1f", r.optimizerSeconds * 1000) : "", r.tokensPerSecond))
            print(String(format: "achieved %.1f GFLOP/s = %.1f%% MFU of the measured peak of its products; peak RSS %@",
                         r.flopsPerSecond / 1e9, r.mfu * 100, Format.bytes(Double(r.peakRSS))))
            let total = r.opKinds.map(\.seconds).reduce(0, +)
            for (kind, t) in r.opKinds {
                print(String(format: "  %-26@ %8.1f ms/step  %5.1f%%", kind as NSString, t * 1000, t / total * 100))
            }
        }
    }
}
