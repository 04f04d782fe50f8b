import Autograd
import Common
import Foundation

/// AdamW with PyTorch's semantics: p -= lr·wd·p, then the bias-corrected Adam step
/// p -= (lr / (1 - β1^t)) · m / (sqrt(v) / sqrt(1 - β2^t) + eps). Weight decay only on tensors with
/// 2 or more dimensions. The token embedding (wte, tied with the output head) may take a multiple of the
/// learning rate (`embeddingLRScale`, as separate embedding learning rates in modded-nanogpt): each of its rows
/// is updated only when its token occurs, and a small model trained briefly learns token statistics much faster
/// with it. State m and v cover parts of the flat parameter buffer, stored back to back (the whole buffer, or
/// this rank's parts under ZeRO-1).
public final class AdamW {
    public struct Hyper: Equatable, Sendable {
        public var beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weightDecay = 0.1
        public var embeddingLRScale = 1.0
        public init() {}
    }

    public let layout: ParameterLayout
    public let m: FloatBuffer, v: FloatBuffer
    public var hyper: Hyper
    /// Runs of the parts by tensor: (flat range, where its state starts, decays, learning-rate multiplier).
    let runs: [(range: Range<Int>, state: Int, decays: Bool, lrScale: Double)]

    /// `parts`: the ranges of the flat buffer this optimizer updates, in ascending order (default: all of it).
    public init(layout: ParameterLayout, parts: [Range<Int>]? = nil, hyper: Hyper) {
        self.layout = layout
        let parts = parts ?? [0..<layout.totalCount]
        precondition(zip(parts, parts.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }, "parts must ascend")
        self.hyper = hyper
        let count = parts.reduce(0) { $0 + $1.count }
        m = FloatBuffer(count: count)
        v = FloatBuffer(count: count)
        var runs: [(range: Range<Int>, state: Int, decays: Bool, lrScale: Double)] = []
        var state = 0
        for part in parts {
            for e in layout.entries {
                let lo = max(e.offset, part.lowerBound), hi = min(e.offset + e.count, part.upperBound)
                if lo < hi {
                    runs.append((lo..<hi, state + lo - part.lowerBound, e.decays, e.name == "wte" ? hyper.embeddingLRScale : 1))
                }
            }
            state += part.count
        }
        self.runs = runs
    }

    /// One update of this optimizer's parts of `params` (the whole flat buffer) from `grads` (likewise), with the
    /// gradient multiplied by `gradScale` first (global-norm clipping). `t` is the 1-based step count. `bf16`: the
    /// parameters' bf16 copy (same layout), whose updated parts are rounded from the new values in the same pass,
    /// a cache-sized block at a time.
    public func step(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, lr: Double, t: Int, gradScale: Float,
                     bf16: UnsafeMutablePointer<UInt16>? = nil) {
        let b1 = Float(hyper.beta1), b2 = Float(hyper.beta2), eps = Float(hyper.eps)
        let bc1 = 1 - pow(hyper.beta1, Double(t)), bc2 = 1 - pow(hyper.beta2, Double(t))
        let invSqrtBc2 = Float(1 / bc2.squareRoot())
        let mp = m.pointer, vp = v.pointer
        for (run, state, decays, lrScale) in runs {
            let lr = lr * lrScale
            let stepSize = Float(lr / bc1)
            let decay: Float = decays ? 1 - Float(lr * hyper.weightDecay) : 1
            Parallel.chunks(run.count, costPerItem: 12) { _, r in
                for block in stride(from: r.lowerBound, to: r.upperBound, by: 4096) {
                    let end = min(block + 4096, r.upperBound)
                    for j in block..<end {
                        let i = run.lowerBound + j, k = state + j
                        let g = grads[i] * gradScale
                        let p = params[i] * decay
                        let mi = b1 * mp[k] + (1 - b1) * g
                        let vi = b2 * vp[k] + (1 - b2) * g * g
                        mp[k] = mi; vp[k] = vi
                        params[i] = p - stepSize * (mi / (vi.squareRoot() * invSqrtBc2 + eps))
                    }
                    if let bf16 {
                        let i = run.lowerBound + block
                        BF16.convert(params + i, count: end - block, into: bf16 + i, parallel: false)
                    }
                }
            }
        }
    }
}

/// Learning rate at a 0-based step: linear warmup to `lr` over `warmupSteps` (lr·(step+1)/warmup), then
/// - cosine: cosine decay to `minLR` at `totalSteps`;
/// - constant: `lr` from then on;
/// - wsd (warmup-stable-decay): `lr` until the decay starts at D = ⌊(1 − decayFraction)·totalSteps⌋ (llm.c's decay
///   point), then from `lr` towards `minLR` over the last steps: with p = (step − D) / (totalSteps − D),
///   lr_min + f(p)·(lr − lr_min), f = 1 − p (linear), 1 − √p (sqrt, llm.c's WSD) or (1 + cos πp) / 2 (cosine).
///   A run in its stable phase can be continued to a later end (`--resume --steps`): the decay then covers the new
///   run's final fraction, and every step before it is as it was.
public struct LRSchedule: Sendable {
    public enum Kind: String, Sendable, CaseIterable { case cosine, constant, wsd }
    public enum DecayShape: String, Sendable, CaseIterable { case linear, sqrt, cosine }
    public var kind: Kind, lr: Double, minLR: Double, warmupSteps: Int, totalSteps: Int
    public var decayFraction: Double, decayShape: DecayShape

    public init(kind: Kind, lr: Double, minLR: Double, warmupSteps: Int, totalSteps: Int, decayFraction: Double = 0.2,
                decayShape: DecayShape = .sqrt) {
        self.kind = kind; self.lr = lr; self.minLR = minLR; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
        self.decayFraction = decayFraction; self.decayShape = decayShape
    }

    /// WSD's first decaying step.
    public var decayStart: Int { Int((1 - decayFraction) * Double(totalSteps)) }

    public func callAsFunction(_ step: Int) -> Double {
        if step < warmupSteps { return lr * Double(step + 1) / Double(warmupSteps) }
        switch kind {
        case .constant:
            return lr
        case .cosine:
            let span = max(1, totalSteps - warmupSteps)
            let ratio = min(1, Double(step - warmupSteps) / Double(span))
            return minLR + 0.5 * (1 + cos(Double.pi * ratio)) * (lr - minLR)
        case .wsd:
            let start = max(decayStart, warmupSteps)
            guard step >= start else { return lr }
            let p = min(1, Double(step - start) / Double(max(1, totalSteps - start)))
            let f: Double
            switch decayShape {
            case .linear: f = 1 - p
            case .sqrt: f = 1 - p.squareRoot()
            case .cosine: f = 0.5 * (1 + cos(Double.pi * p))
            }
            return minLR + f * (lr - minLR)
        }
    }
}
