import Autograd
import Common
import Foundation
import GPT2
import Machine

/// `gpt2-dist bench`: one rank's training step on synthetic tokens, timed after a warm-up step, against the sgemm
/// rate measured here (MFU), with the peak resident memory and, optionally, the time per op kind.
public struct StepBenchmark {
    public var config: GPT2Config
    public var batchSize = 8, seqLen = 128, steps = 5
    /// Include an AdamW update in each step; recompute block activations in backward; time each op kind.
    public var optimizer = false, recompute = false, profile = false
    public var precision = MatmulPrecision.fp32

    public init(config: GPT2Config) { self.config = config }

    public struct Result {
        public var medianSeconds = 0.0, bestSeconds = 0.0, forwardSeconds = 0.0, optimizerSeconds = 0.0
        public var tokensPerSecond = 0.0, flopsPerSecond = 0.0, sgemmPeak = 0.0, peakRSS = 0
        /// bf16: the measured rate of the bf16 engine on the same shape (MFU is against it); fp32: the sgemm rate.
        public var gemmPeak: Double?
        /// Seconds per step by op kind (forward + backward), largest first; empty unless profiled.
        public var opKinds: [(kind: String, seconds: Double)] = []
        public var mfu: Double { flopsPerSecond / (gemmPeak ?? sgemmPeak) }
    }

    public func run() throws -> Result {
        guard seqLen > 0, seqLen <= config.contextLength, batchSize > 0, steps > 0 else {
            throw GPT2DistError(.usage, "need 0 < --seq-len <= \(config.contextLength), --batch-size > 0, --steps > 0")
        }
        if precision == .bf16 { _ = try BF16Engine.choose() }
        var r = Result()
        r.sgemmPeak = Runtime.measureSgemmPeak(seconds: 1.0)
        if precision == .bf16 { r.gemmPeak = Runtime.measureGemmPeak(Matmul(precision: .bf16), seconds: 1.0) }
        let model = GPT2Model(config: config)
        model.initialize(seed: 1)
        let graph = GPT2Graph(model: model, batch: batchSize, seqLen: seqLen, mode: .train, recompute: recompute,
                              precision: precision)
        for i in 0..<(batchSize * seqLen) {
            graph.inputs.pointer[i] = Int32(i * 7919 % config.vocabSize)
            graph.targets.pointer[i] = Int32((i + 1) * 7919 % config.vocabSize)
        }
        let adamW = optimizer ? AdamW(layout: model.parameters.layout, hyper: AdamW.Hyper()) : nil
        var times: [Double] = [], forward: [Double] = [], update: [Double] = []
        for s in 0...steps {  // step 0 warms up
            if s == 1 && profile { graph.tape.opSeconds = Array(repeating: 0, count: graph.tape.ops.count) }
            let t0 = Runtime.now()
            model.parameters.zeroGradients()
            graph.forward(step: s, seed: 1, bf16CopyIsCurrent: s > 0)  // after the first, AdamW keeps it current
            let t1 = Runtime.now()
            graph.backward()
            let t2 = Runtime.now()
            adamW?.step(params: model.parameters.values.pointer, grads: model.parameters.gradients.pointer, lr: 1e-4, t: s + 1, gradScale: 1,
                         bf16: model.parameters.bf16Pointer)
            let t3 = Runtime.now()
            if s > 0 { times.append(t3 - t0); forward.append(t1 - t0); update.append(t3 - t2) }
        }
        func median(_ x: [Double]) -> Double { x.sorted()[x.count / 2] }
        r.medianSeconds = median(times); r.bestSeconds = times.min()!
        r.forwardSeconds = median(forward); r.optimizerSeconds = median(update)
        let tokens = Double(batchSize * seqLen)
        r.tokensPerSecond = tokens / r.medianSeconds
        r.flopsPerSecond = config.flopsPerToken(seqLen: seqLen) * tokens / r.medianSeconds
        r.peakRSS = Runtime.peakRSS
        if let seconds = graph.tape.opSeconds {
            var byKind: [String: Double] = [:]
            for (op, t) in zip(graph.tape.ops, seconds) { byKind[String(describing: type(of: op)), default: 0] += t / Double(steps) }
            r.opKinds = byKind.sorted { $0.value > $1.value }.map { ($0.key, $0.value) }
        }
        return r
    }
}
