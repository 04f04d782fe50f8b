import Autograd
import Common
import Data
import Checkpoint
import Distributed
import Foundation
import GPT2
import Testing
@testable import Training

/// Training against PyTorch: 10 AdamW steps (two parameter groups, constant LR, clipping) on the fixture's
/// tokens and batch order (Tests/Fixtures/make_gpt2_fixtures.py).
struct TrainingParityTests {
    @Test func tenStepsMatchPyTorchAdamW() throws {
        let expected = try SafeTensorsFile(path: fixtures + "/tiny-gpt2/expected.safetensors")
        let dir = tmpDir("parity")
        let initial = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
        try ModelFile.save(model: initial, step: 0, to: dir + "/init.h5")
        var o = TrainOptions()
        o.initFrom = dir + "/init.h5"
        o.data = fixtures + "/tiny-gpt2/tokens.bin"
        o.out = dir + "/run"
        o.steps = 10; o.batchSize = 4; o.seqLen = 32
        o.lr = 1e-3; o.lrSchedule = .constant; o.warmupSteps = 0
        o.weightDecay = 0.1; o.beta1 = 0.9; o.beta2 = 0.95; o.eps = 1e-8; o.gradClip = 1.0
        try Trainer(options: o, comm: .initialize(), log: { _ in }).run()

        let m = try MetricsLog.read(path: o.out! + "/metrics.h5")
        let losses = try expected.floats("train.losses"), norms = try expected.floats("train.grad_norms")
        #expect(m["train_loss"]!.count == 10)
        for i in 0..<10 {
            let l = m["train_loss"]![i], n = m["grad_norm"]![i]
            #expect(abs(l - Double(losses[i])) / Double(losses[i]) < 1e-4, "step \(i + 1): loss \(l) vs PyTorch \(losses[i])")
            #expect(abs(n - Double(norms[i])) / Double(norms[i]) < 1e-4, "step \(i + 1): grad norm \(n) vs PyTorch \(norms[i])")
        }
        let (trained, step) = try ModelFile.load(path: o.out! + "/" + TrainCheckpoint.fileName(step: 10))
        #expect(step == 10)
        for e in trained.parameters.layout.entries {
            let name = e.name == "wte" || e.name == "wpe" ? e.name + ".weight" : e.name
            var ref = try expected.floats("train.final." + name)
            var ours = Array(UnsafeBufferPointer(start: trained.parameters.values.pointer + e.offset, count: e.count))
            if e.name.hasSuffix("c_attn.bias") {
                // The key bias shifts every score of a softmax row equally, so its true gradient is 0 and both
                // frameworks see only rounding noise, which Adam normalises to full-size steps: compare q and v only.
                let C = e.count / 3
                ref.removeSubrange(C..<(2 * C)); ours.removeSubrange(C..<(2 * C))
                let keyGrad = try expected.floats("grad." + name)[C..<(2 * C)].map(abs).max()!
                #expect(keyGrad < 1e-6)
            }
            let err = maxRelativeError(ours, ref, ref.count)
            #expect(err < 1e-4, "\(e.name) after 10 steps: max-relative error \(err)")
        }
    }

    @Test func adamWStepMatchesFormula() {
        var layout = ParameterLayout()
        layout.append("w", [2, 2])
        layout.append("b", [3])
        let opt = AdamW(layout: layout, hyper: AdamW.Hyper())
        var p: [Float] = [1, -2, 0.5, 3, 1, 2, -1], g: [Float] = [0.1, -0.2, 0.3, 0, 0.5, -0.5, 1]
        let p0 = p
        opt.step(params: &p, grads: g, lr: 0.01, t: 1, gradScale: 0.5)
        for i in 0..<7 {
            let gi = Double(g[i]) * 0.5
            let decayed = Double(p0[i]) * (i < 4 ? 1 - 0.01 * 0.1 : 1)
            let m = 0.1 * gi, v = 0.05 * gi * gi
            let ref = decayed - (0.01 / 0.1) * m / ((v).squareRoot() / (0.05).squareRoot() + 1e-8)
            #expect(abs(Double(p[i]) - ref) < 1e-6, "param \(i): \(p[i]) vs \(ref)")
        }
        _ = g.withUnsafeMutableBufferPointer { $0 }
    }

    /// --embedding-lr-scale: wte steps (and decays) with the scaled rate, everything else with the base rate; a
    /// ZeRO-1 slice that cuts wte in two applies it to its part.
    @Test func embeddingLearningRateScaleAppliesToTheTokenEmbeddingOnly() {
        var layout = ParameterLayout()
        layout.append("wte", [3, 2])
        layout.append("h.0.ln_1.weight", [2])
        var hyper = AdamW.Hyper(); hyper.embeddingLRScale = 30
        let g: [Float] = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]
        let p0: [Float] = [1, -2, 0.5, 3, 1, 2, -1, 0.25]
        func reference(_ i: Int, lr: Double) -> Double {
            let gi = Double(g[i]), decayed = Double(p0[i]) * (i < 6 ? 1 - lr * 0.1 : 1)
            let m = 0.1 * gi, v = 0.05 * gi * gi
            return decayed - (lr / 0.1) * m / (v.squareRoot() / (0.05).squareRoot() + 1e-8)
        }
        var p = p0
        AdamW(layout: layout, hyper: hyper).step(params: &p, grads: g, lr: 1e-3, t: 1, gradScale: 1)
        for i in 0..<8 {
            let ref = reference(i, lr: i < 6 ? 3e-2 : 1e-3)
            #expect(abs(Double(p[i]) - ref) < 1e-6, "param \(i): \(p[i]) vs \(ref)")
        }
        // A ZeRO-1 rank's parts: not contiguous, and cutting tensors; its state holds them back to back.
        var q = p0
        let shard = AdamW(layout: layout, parts: [1..<3, 5..<8], hyper: hyper)
        #expect(shard.m.count == 5)
        shard.step(params: &q, grads: g, lr: 1e-3, t: 1, gradScale: 1)
        for i in 0..<8 { #expect(q[i] == ([1, 2, 5, 6, 7].contains(i) ? p[i] : p0[i]), "param \(i)") }
    }

    /// Count baselines by hand on a tiny stream: 1 2 1 2 1 3 (vocab 4, add-one unigram).
    @Test func countBaselinesMatchHandComputation() throws {
        let train = TokenDataset(tokens: [1, 2, 1, 2, 1, 3])
        let b = CountBaselines(train: train, vocabSize: 4)
        #expect(abs(b.unigramProbability(1) - 4.0 / 10) < 1e-12 && abs(b.unigramProbability(0) - 1.0 / 10) < 1e-12)
        // After 1: 2 twice, 3 once; after 3: never seen as a predecessor.
        #expect(abs(b.bigramProbability(1, 2) - (0.7 * 2 / 3 + 0.3 * 3 / 10)) < 1e-12)
        #expect(abs(b.bigramProbability(3, 2) - 3.0 / 10) < 1e-12)
        // Scored on the eval positions of a batch of 1 x 2 over tokens 1 2 3: targets 2 (after 1) and 3 (after 2).
        let val = TokenDataset(tokens: [1, 2, 3])
        let l = try b.losses(data: val, batchSize: 1, seqLen: 2, batches: 1)
        #expect(abs(l.unigram - -(log(3.0 / 10) + log(2.0 / 10)) / 2) < 1e-12)
        #expect(abs(l.bigram - -(log(0.7 * 2 / 3 + 0.3 * 3 / 10) + log(0.7 * 0 + 0.3 * 2 / 10)) / 2) < 1e-12)
    }

    @Test func learningRateSchedule() {
        let s = LRSchedule(kind: .cosine, lr: 1e-3, minLR: 1e-4, warmupSteps: 10, totalSteps: 110)
        #expect(abs(s(0) - 1e-4) < 1e-12)
        #expect(abs(s(9) - 1e-3) < 1e-12)
        #expect(abs(s(10) - 1e-3) < 1e-12)
        #expect(abs(s(60) - 5.5e-4) < 1e-9)
        #expect(abs(s(110) - 1e-4) < 1e-12)
        let c = LRSchedule(kind: .constant, lr: 3e-4, minLR: 0, warmupSteps: 0, totalSteps: 50)
        #expect(c(0) == 3e-4 && c(49) == 3e-4)
    }

    /// WSD as llm.c's schedulers.h computes it (decay point ⌊0.8·T⌋, then min + (1 − √p)(max − min)), and the other
    /// two shapes, at chosen steps: lr 1e-3 → 1e-4, warmup 10, 100 steps, the last 20% decaying.
    @Test func warmupStableDecaySchedule() {
        func wsd(_ shape: LRSchedule.DecayShape, total: Int = 100) -> LRSchedule {
            LRSchedule(kind: .wsd, lr: 1e-3, minLR: 1e-4, warmupSteps: 10, totalSteps: total, decayFraction: 0.2, decayShape: shape)
        }
        let s = wsd(.sqrt)
        #expect(abs(s(0) - 1e-4) < 1e-12 && abs(s(9) - 1e-3) < 1e-12)     // warmup: lr·(step+1)/10
        #expect(s(10) == 1e-3 && s(79) == 1e-3 && s(80) == 1e-3)         // stable, and the decay's first step (p = 0)
        #expect(abs(s(85) - 5.5e-4) < 1e-12)                              // p = 1/4: 1 − √p = 1/2
        #expect(abs(s(99) - (1e-4 + (1 - (19.0 / 20).squareRoot()) * 9e-4)) < 1e-12)
        #expect(abs(s(100) - 1e-4) < 1e-12)
        #expect(abs(wsd(.linear)(85) - 7.75e-4) < 1e-12)                   // 1 − p = 3/4
        #expect(abs(wsd(.cosine)(85) - (1e-4 + 0.5 * (1 + cos(Double.pi / 4)) * 9e-4)) < 1e-12)
        #expect(wsd(.sqrt, total: 1001).decayStart == 800)                 // ⌊0.8 · 1001⌋, as llm.c's (int) cast
        // Continued to a later end: the stable phase stretches, and every step before the old decay is unchanged.
        let longer = wsd(.sqrt, total: 200)
        for step in 0..<80 { #expect(longer(step) == s(step)) }
        #expect(longer(159) == 1e-3 && longer(170) < 1e-3)
    }
}

/// The bucket schedule that lets gradient traffic overlap backward: regions are announced only once final, and
/// the buckets cover the gradient buffer exactly once, in an order every rank shares.
struct BucketScheduleTests {
    @Test(arguments: [false, true]) func regionsAreFinalWhenAnnouncedAndBucketsCoverTheBuffer(recompute: Bool) throws {
        let cfg = try GPT2Config(vocabSize: 97, contextLength: 16, embDim: 32, nHeads: 4, nLayers: 3, dropRate: 0.1, qkvBias: true)
        let model = GPT2Model(config: cfg)
        model.initialize(seed: 3)
        let B = 2, T = 8
        let graph = GPT2Graph(model: model, batch: B, seqLen: T, mode: .train, recompute: recompute)
        for i in 0..<(B * T) { graph.inputs.pointer[i] = Int32(i * 7 % 97); graph.targets.pointer[i] = Int32(i * 5 % 97) }
        let regions = cfg.gradientRegions, g = model.parameters.gradients.pointer
        // The regions partition the buffer.
        #expect(regions.map(\.count).reduce(0, +) == model.parameters.count)
        #expect(Set(regions.flatMap { Array($0) }).count == model.parameters.count)
        // Each region's gradient, copied when backward says it is final, is what it ends as.
        model.parameters.zeroGradients()
        graph.forward(step: 1, seed: 9)
        graph.defersTokenGradient = true
        var snapshots: [Int: [Float]] = [:], announced: [Int] = []
        graph.backward(progress: { k in
            announced.append(k)
            snapshots[k] = Array(UnsafeBufferPointer(start: g + regions[k].lowerBound, count: regions[k].count))
        })
        #expect(announced == Array(0..<regions.count), "regions must be announced once each, in order: \(announced)")
        for (k, r) in regions.enumerated() {
            #expect(snapshots[k] == Array(UnsafeBufferPointer(start: g + r.lowerBound, count: r.count)), "region \(k) changed after it was announced")
        }
        // Deferred token rows + the rest = the plain backward's wte gradient.
        let deferred = Array(UnsafeBufferPointer(start: g, count: model.parameters.count))
        model.parameters.zeroGradients()
        graph.forward(step: 1, seed: 9)
        graph.defersTokenGradient = false
        graph.backward()
        var withRows = deferred
        let C = cfg.embDim
        for p in 0..<(B * T) {
            let t = Int(graph.inputs.pointer[p])
            for c in 0..<C { withRows[t * C + c] += graph.embeddingGradient[p * C + c] }
        }
        #expect(maxRelativeError(withRows, g, model.parameters.count) < 1e-5)

        // Buckets: each float once, none above the limit, in announcement order, each needing only final regions.
        for limit in [1, 100, 1000, 5000, 1 << 30] {
            let s = BucketSchedule(regions: regions, bucketFloats: limit)
            var seen = [Int](repeating: 0, count: model.parameters.count)
            for b in s.buckets { for i in b.range { seen[i] += 1 } }
            #expect(seen.allSatisfy { $0 == 1 }, "limit \(limit): not a partition")
            #expect(s.buckets.allSatisfy { $0.range.count <= limit && !$0.range.isEmpty })
            #expect(zip(s.buckets, s.buckets.dropFirst()).allSatisfy { $0.region <= $1.region })
            for b in s.buckets {
                let final = regions[0...b.region]
                #expect(b.range.allSatisfy { i in final.contains { $0.contains(i) } }, "limit \(limit): bucket \(b) needs a later region")
            }
            // ZeRO-1: the ranks' parts partition the buffer, and every rank holds a part of every bucket that has
            // at least one float per rank (so each bucket's reduce-scatter and all-gather run both ways on a ring).
            for ranks in [2, 3, 4] {
                var owners = [Int](repeating: 0, count: model.parameters.count)
                for r in 0..<ranks {
                    let sharding = OptimizerSharding(schedule: s, total: model.parameters.count, ranks: ranks, rank: r, sharded: true)
                    #expect(zip(sharding.mine, sharding.mine.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound })
                    for part in sharding.mine { for i in part { owners[i] += 1 } }
                    for b in s.buckets where b.range.count >= ranks {
                        #expect(sharding.mine.contains { $0.overlaps(b.range) }, "rank \(r) of \(ranks) has no part of \(b)")
                    }
                    let (counts, _) = BucketedAllReduce.parts(ofBucket: s.buckets[0].range.count, ranks: ranks)
                    #expect(counts.max()! - counts.min()! <= 1)
                }
                #expect(owners.allSatisfy { $0 == 1 }, "limit \(limit), \(ranks) ranks: the parts are not a partition")
            }
        }
    }
}

/// TensorBoard's smoothing: a debiased EMA (the first point is the first value), and SI tick labels.
struct LossPlotSmoothingTests {
    @Test func smoothingIsADebiasedEMA() {
        let s = LossPlot.smoothed([4, 2, 2, .nan, 2], alpha: 0.5)
        #expect(s[0] == 4 && abs(s[1] - (0.25 * 4 + 0.5 * 2) / 0.75) < 1e-12 && s[3].isNaN && s[4] < s[2])
        #expect(LossPlot.smoothed([3, 1], alpha: 0) == [3, 1])
        #expect(Format.si(2_000, spacing: 1_000) == "2k" && Format.si(1.5e9, spacing: 5e8) == "1.5G" && Format.si(0, spacing: 1) == "0")
    }
}

/// The loss plot's axes are labelled at round values (1, 2 or 5 x 10^k), never at arbitrary fractions of the range.
struct LossPlotTicksTests {
    @Test(arguments: [(8.399, 11.096, false), (1, 150, true), (0.0301, 0.0377, false), (5.2, 5.2000001, false), (1, 3, true),
                      (-2.5, 7.25, false), (1, 100_000, true)])
    func ticksAreRoundAndInsideTheRange(lo: Double, hi: Double, integral: Bool) {
        let (values, step) = LossPlot.niceTicks(lo, hi, integral: integral)
        let mantissa = step / pow(10, floor(log10(step)))
        #expect([1.0, 2, 5].contains { abs(mantissa - $0) < 1e-9 }, "step \(step)")
        if integral { #expect(step >= 1) }
        #expect(values.count >= 1 && values.count <= 11, "\(values)")
        for v in values {
            #expect(v >= lo - 1e-9 * step && v <= hi + 1e-9 * step, "\(v) outside [\(lo), \(hi)]")
            #expect(abs(v / step - (v / step).rounded()) < 1e-6, "\(v) is not a multiple of \(step)")
        }
        let svg = LossPlot.svg(lines: [.init(label: "train", xs: [lo, hi], ys: [lo, hi], color: "#000")], title: "t", xLabel: "step")
        #expect(!svg.contains("11.096") && !svg.contains(">51<"), "labels at raw fractions of the range")
    }
}
