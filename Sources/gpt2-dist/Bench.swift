import ArgumentParser
import Autograd
import Foundation
import GPT2
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
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let threads = try compute.applyOrExit()
        try runOrFail {
            let cfg = try GPT2Config.load(path: config)
            guard seqLen > 0, seqLen <= cfg.contextLength, batchSize > 0, steps > 0 else {
                throw TrainError("need 0 < --seq-len <= \(cfg.contextLength), --batch-size > 0, --steps > 0")
            }
            let peak = Runtime.measureSgemmPeak(seconds: 1.0)
            let model = GPT2Model(config: cfg)
            model.initialize(seed: 1)
            let graph = GPT2Graph(model: model, batch: batchSize, seqLen: seqLen, mode: .train, recompute: recompute)
            for i in 0..<(batchSize * seqLen) {
                graph.inputs.pointer[i] = Int32(i * 7919 % cfg.vocabSize)
                graph.targets.pointer[i] = Int32((i + 1) * 7919 % cfg.vocabSize)
            }
            let opt = optimizer ? AdamW(layout: model.parameters.layout, hyper: AdamW.Hyper()) : nil
            var times: [Double] = [], fwd: [Double] = [], optTimes: [Double] = []
            for s in 0...steps {
                if s == 1 && profile { graph.tape.opSeconds = Array(repeating: 0, count: graph.tape.ops.count) }
                let t0 = Runtime.now()
                model.parameters.zeroGradients()
                graph.forward(step: s, seed: 1)
                let t1 = Runtime.now()
                graph.backward()
                let t2 = Runtime.now()
                opt?.step(params: model.parameters.values.pointer, grads: model.parameters.gradients.pointer, lr: 1e-4, t: s + 1, gradScale: 1)
                let t3 = Runtime.now()
                if s > 0 { times.append(t3 - t0); fwd.append(t1 - t0); optTimes.append(t3 - t2) }
            }
            let best = times.min()!, median = times.sorted()[times.count / 2]
            let tokens = Double(batchSize * seqLen)
            let flops = cfg.flopsPerToken(seqLen: seqLen) * tokens
            let achieved = flops / median
            if json {
                print("""
                {"ms_per_step": \(median * 1000), "best_ms_per_step": \(best * 1000), "tokens_per_s": \(tokens / median), \
                "gflops": \(achieved / 1e9), "sgemm_peak_gflops": \(peak / 1e9), "mfu": \(achieved / peak), \
                "peak_rss_bytes": \(Runtime.peakRSS), "threads": \(threads), "kernel": "\(BLAS.coreName)"}
                """)
                return
            }
            print("\(Runtime.blasDescription); model \(grouped(cfg.parameterCount)) parameters; batch \(batchSize) x \(seqLen)")
            print(String(format: "sgemm peak (measured, %d thread(s)): %.1f GFLOP/s", threads, peak / 1e9))
            print(String(format: "forward+backward%@: median %.1f ms/step (best %.1f, forward %.1f%@), %.0f tokens/s",
                         optimizer ? "+AdamW" : "", median * 1000, best * 1000, fwd.sorted()[fwd.count / 2] * 1000,
                         optimizer ? String(format: ", AdamW %.1f", optTimes.sorted()[optTimes.count / 2] * 1000) : "",
                         tokens / median))
            print(String(format: "achieved %.1f GFLOP/s = %.1f%% MFU of the measured sgemm peak; peak RSS %@",
                         achieved / 1e9, achieved / peak * 100, Runtime.formatBytes(Double(Runtime.peakRSS))))
            if let secs = graph.tape.opSeconds {
                var byKind: [String: Double] = [:]
                for (op, t) in zip(graph.tape.ops, secs) { byKind[String(describing: type(of: op)), default: 0] += t }
                let total = secs.reduce(0, +)
                for (k, t) in byKind.sorted(by: { $0.value > $1.value }) {
                    print(String(format: "  %-26@ %8.1f ms/step  %5.1f%%", k as NSString, t / Double(steps) * 1000, t / total * 100))
                }
            }
        }
    }
}
