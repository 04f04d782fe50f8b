import Autograd
import Foundation
import Testing

/// Every op's backward against central finite differences of L = sum(out * R) for a fixed random R.
struct OpGradientTests {
    let B = 2, T = 5, C = 12, heads = 3, V = 11

    /// Compares backward's gradient of each tensor in `wrt` with central differences of `loss`.
    func check(_ name: String, wrt: [Tensor], loss: () -> Double, backward: () -> Void, eps: Float = 1e-2,
               tolerance: Float = 1e-2, sourceLocation: SourceLocation = #_sourceLocation) {
        for t in wrt { memset(t.grad!, 0, t.count * 4) }
        _ = loss()
        backward()
        for (k, t) in wrt.enumerated() {
            let analytic = Array(t.gradients!)
            let scale = max(analytic.map(abs).max()!, 1e-3)
            var worst: Float = 0
            let stride = max(1, t.count / 40)
            for i in Swift.stride(from: 0, to: t.count, by: stride) {
                let saved = t.data[i]
                t.data[i] = saved + eps
                let plus = loss()
                t.data[i] = saved - eps
                let minus = loss()
                t.data[i] = saved
                let fd = Float((plus - minus) / Double(2 * eps))
                worst = max(worst, abs(fd - analytic[i]) / scale)
            }
            #expect(worst < tolerance, "\(name): input \(k) gradient off by \(worst) (relative to max |grad| \(scale))",
                    sourceLocation: sourceLocation)
        }
    }

    /// L = sum(out * R), out's gradient seeded with R.
    func weighted(_ out: Tensor, seed: UInt64) -> (loss: () -> Double, seedGrad: () -> Void) {
        var rng = TestRandom(seed)
        let r = (0..<out.count).map { _ in rng.uniform() }
        let loss: () -> Double = {
            var s = 0.0
            for i in 0..<out.count { s += Double(out.data[i]) * Double(r[i]) }
            return s
        }
        let seedGrad = { for i in 0..<out.count { out.grad![i] = r[i] } }
        return (loss, seedGrad)
    }

    func randomTensor(_ arena: ActivationArena, _ shape: [Int], _ rng: inout TestRandom, lo: Float = -1, hi: Float = 1) -> Tensor {
        let t = arena.tensor(shape)
        rng.fill(t.data, t.count, lo, hi)
        return t
    }

    @Test func linear() {
        let arena = ActivationArena(); var rng = TestRandom(1)
        let x = randomTensor(arena, [B, T, C], &rng), w = randomTensor(arena, [C, 7], &rng), b = randomTensor(arena, [7], &rng)
        let out = arena.tensor([B, T, 7])
        let op = LinearOp(x: x, weight: w, bias: b, out: out, arena: arena)
        let (l, s) = weighted(out, seed: 2)
        check("linear", wrt: [x, w, b], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
        let opNoBias = LinearOp(x: x, weight: w, bias: nil, out: out, arena: arena)
        check("linear without bias", wrt: [x, w], loss: { opNoBias.forward(); return l() }, backward: { s(); opNoBias.backward() })
    }

    @Test func tiedHead() {
        let arena = ActivationArena(); var rng = TestRandom(3)
        let x = randomTensor(arena, [B, T, C], &rng), wte = randomTensor(arena, [V, C], &rng)
        let out = arena.tensor([B, T, V])
        let op = TiedHeadOp(x: x, wte: wte, logits: out)
        let (l, s) = weighted(out, seed: 4)
        check("tied head", wrt: [x, wte], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
    }

    @Test func layerNorm() {
        let arena = ActivationArena(); var rng = TestRandom(5)
        let x = randomTensor(arena, [B, T, C], &rng, lo: -2, hi: 3)
        let w = randomTensor(arena, [C], &rng, lo: 0.5, hi: 1.5), b = randomTensor(arena, [C], &rng)
        let out = arena.tensor([B, T, C])
        let op = LayerNormOp(x: x, weight: w, bias: b, out: out, arena: arena)
        let (l, s) = weighted(out, seed: 6)
        check("layernorm", wrt: [x, w, b], loss: { op.forward(); return l() }, backward: { s(); op.backward() }, eps: 3e-3)
    }

    @Test func gelu() {
        let arena = ActivationArena(); var rng = TestRandom(7)
        let x = randomTensor(arena, [B, T, 4 * C + 3], &rng, lo: -4, hi: 4)
        let out = arena.tensor(x.shape)
        let op = GELUOp(x: x, out: out)
        let (l, s) = weighted(out, seed: 8)
        check("gelu", wrt: [x], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
        // Forward equals the formula in double precision.
        op.forward()
        for i in 0..<x.count {
            let v = Double(x.data[i])
            let ref = 0.5 * v * (1 + tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v)))
            #expect(abs(Double(out.data[i]) - ref) < 2e-6 * max(1, abs(ref)))
        }
    }

    @Test func attention() {
        for drop in [Float(0), 0.3] {
            let arena = ActivationArena(); var rng = TestRandom(9)
            let ctx = StepContext()
            ctx.training = true; ctx.seed = 42; ctx.step = 3; ctx.rowOffset = 1
            let qkv = randomTensor(arena, [B, T, 3 * C], &rng, lo: -2, hi: 2)
            let out = arena.tensor([B, T, C])
            let op = CausalSelfAttentionOp(qkv: qkv, out: out, batch: B, seqLen: T, heads: heads, dropRate: drop,
                                           site: 5, context: ctx, arena: arena)
            let (l, s) = weighted(out, seed: 10)
            check("attention drop=\(drop)", wrt: [qkv], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
        }
    }

    @Test func attentionOverSeveralRowBlocks() {
        // T spans several 64-row blocks (and a partial one): compare with a direct double-precision evaluation.
        let T = 150, C = 8, H = 2, hs = 4
        let arena = ActivationArena(); var rng = TestRandom(21)
        let ctx = StepContext()
        let qkv = randomTensor(arena, [1, T, 3 * C], &rng, lo: -2, hi: 2)
        let out = arena.tensor([1, T, C])
        let op = CausalSelfAttentionOp(qkv: qkv, out: out, batch: 1, seqLen: T, heads: H, context: ctx, arena: arena)
        op.forward()
        var worst = 0.0
        for h in 0..<H {
            for i in 0..<T {
                var w = [Double](repeating: 0, count: i + 1)
                for j in 0...i {
                    var d = 0.0
                    for c in 0..<hs { d += Double(qkv.data[i * 3 * C + h * hs + c]) * Double(qkv.data[j * 3 * C + C + h * hs + c]) }
                    w[j] = d / Double(hs).squareRoot()
                }
                let m = w.max()!
                let e = w.map { exp($0 - m) }, z = e.reduce(0, +)
                for c in 0..<hs {
                    var o = 0.0
                    for j in 0...i { o += e[j] / z * Double(qkv.data[j * 3 * C + 2 * C + h * hs + c]) }
                    worst = max(worst, abs(o - Double(out.data[i * C + h * hs + c])))
                }
            }
        }
        #expect(worst < 1e-5, "attention differs from the reference by \(worst)")
        let (l, s) = weighted(out, seed: 22)
        check("attention T=150", wrt: [qkv], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
    }

    @Test func attentionIsCausal() {
        // Changing a later position's q, k or v never changes an earlier output.
        let arena = ActivationArena(); var rng = TestRandom(11)
        let ctx = StepContext()
        let qkv = randomTensor(arena, [1, T, 3 * C], &rng)
        let out = arena.tensor([1, T, C])
        let op = CausalSelfAttentionOp(qkv: qkv, out: out, batch: 1, seqLen: T, heads: heads, context: ctx, arena: arena)
        op.forward()
        let before = Array(out.values)
        for c in 0..<(3 * C) { qkv.data[(T - 1) * 3 * C + c] += 1 }
        op.forward()
        let after = Array(out.values)
        #expect(Array(before[0..<((T - 1) * C)]) == Array(after[0..<((T - 1) * C)]))
        #expect(before[((T - 1) * C)...] != after[((T - 1) * C)...])
    }

    @Test func embedding() {
        let arena = ActivationArena(); var rng = TestRandom(12)
        let wte = randomTensor(arena, [V, C], &rng), wpe = randomTensor(arena, [T, C], &rng)
        let tokens = TokenBuffer(count: B * T)
        for i in 0..<(B * T) { tokens.pointer[i] = Int32(i * 7 % 4) }  // repeated ids exercise accumulation
        let out = arena.tensor([B, T, C])
        let op = EmbeddingOp(tokens: tokens, wte: wte, wpe: wpe, out: out, batch: B, seqLen: T)
        let (l, s) = weighted(out, seed: 13)
        check("embedding", wrt: [wte, wpe], loss: { op.forward(); return l() }, backward: { s(); op.backward() })
    }

    @Test func residualAndDropout() {
        let arena = ActivationArena(); var rng = TestRandom(14)
        let a = randomTensor(arena, [B, T, C], &rng), b = randomTensor(arena, [B, T, C], &rng)
        let out = arena.tensor([B, T, C])
        let add = AddOp(a: a, b: b, out: out)
        let (l, s) = weighted(out, seed: 15)
        check("add", wrt: [a, b], loss: { add.forward(); return l() }, backward: { s(); add.backward() })

        let ctx = StepContext()
        ctx.training = true; ctx.seed = 1; ctx.step = 2
        let dropOut = arena.tensor([B, T, C])
        let drop = DropoutOp(x: a, out: dropOut, rate: 0.25, site: 9, context: ctx)
        let (l2, s2) = weighted(dropOut, seed: 16)
        check("dropout", wrt: [a], loss: { drop.forward(); return l2() }, backward: { s2(); drop.backward() })
        drop.forward()
        let zeros = (0..<a.count).filter { dropOut.data[$0] == 0 }.count
        #expect(zeros > a.count / 10 && zeros < a.count / 2, "dropout rate 0.25 zeroed \(zeros) of \(a.count)")
    }

    @Test func dropoutMaskDependsOnGlobalRowNotBatchSplit() {
        // Rows 1 of a batch-2 micro-batch and row 0 of a batch-1 micro-batch at rowOffset 1 see the same mask.
        let arena = ActivationArena(); var rng = TestRandom(17)
        let x = randomTensor(arena, [2, T, C], &rng)
        let ctx = StepContext()
        ctx.training = true; ctx.seed = 7; ctx.step = 11
        let outFull = arena.tensor([2, T, C])
        DropoutOp(x: x, out: outFull, rate: 0.5, site: 3, context: ctx).forward()
        let x1 = Tensor(data: x.data + T * C, grad: nil, shape: [1, T, C])
        let outHalf = arena.tensor([1, T, C])
        ctx.rowOffset = 1
        DropoutOp(x: x1, out: outHalf, rate: 0.5, site: 3, context: ctx).forward()
        #expect(Array(outFull.values[(T * C)...]) == Array(outHalf.values))
    }

    @Test func softmaxCrossEntropy() {
        let arena = ActivationArena(); var rng = TestRandom(18)
        let logits = randomTensor(arena, [B, T, V], &rng, lo: -3, hi: 3)
        let targets = TokenBuffer(count: B * T)
        for i in 0..<(B * T) { targets.pointer[i] = Int32(i % V) }
        let op = SoftmaxCrossEntropyOp(logits: logits, targets: targets, arena: arena)
        check("softmax cross-entropy", wrt: [logits], loss: { op.forward(); return Double(op.loss) }, backward: { op.backward() })
        // Loss equals a double-precision reference.
        op.forward()
        var ref = 0.0
        for r in 0..<(B * T) {
            let row = (0..<V).map { Double(logits.data[r * V + $0]) }
            let m = row.max()!
            let lse = m + log(row.map { exp($0 - m) }.reduce(0, +))
            ref += lse - row[Int(targets.pointer[r])]
        }
        ref /= Double(B * T)
        #expect(abs(Double(op.loss) - ref) < 1e-6 * abs(ref))
        // In place (training: the gradient shares the logits' memory) gives the same loss and gradient.
        let shared = arena.tensor([B, T, V], gradient: .inPlace)
        memcpy(shared.data, logits.data, logits.count * 4)
        let inPlace = SoftmaxCrossEntropyOp(logits: shared, targets: targets, arena: arena)
        op.forward(); op.backward()
        inPlace.forward(); inPlace.backward()
        #expect(abs(inPlace.loss - op.loss) <= 1e-6 * abs(op.loss))
        #expect(maxRelativeError(shared.grad!, logits.grad!, logits.count) < 1e-6)
        // Stable for huge logits.
        for i in 0..<logits.count { logits.data[i] *= 1e4 }
        op.forward()
        #expect(op.loss.isFinite)
    }

    @Test func chunkedHeadCrossEntropyEqualsHeadThenCrossEntropy() {
        let arena = ActivationArena(); var rng = TestRandom(19)
        let x = randomTensor(arena, [B, T, C], &rng), wte = randomTensor(arena, [V, C], &rng)
        let targets = TokenBuffer(count: B * T)
        for i in 0..<(B * T) { targets.pointer[i] = Int32(i * 7 % V) }
        let fused = ChunkedHeadCrossEntropyOp(x: x, wte: wte, targets: targets, chunkRows: 3, arena: arena)  // 10 rows: chunks 3+3+3+1
        check("chunked head + cross-entropy", wrt: [x, wte], loss: { fused.forward(); return Double(fused.loss) },
              backward: { fused.backward() })
        // Same loss and gradients as the unfused pair.
        let logits = arena.tensor([B, T, V], gradient: .inPlace)
        let head = TiedHeadOp(x: x, wte: wte, logits: logits)
        let ce = SoftmaxCrossEntropyOp(logits: logits, targets: targets, arena: arena)
        memset(x.grad!, 0, x.count * 4); memset(wte.grad!, 0, wte.count * 4)
        head.forward(); ce.forward(); ce.backward(); head.backward()
        let gx = Array(x.gradients!), gw = Array(wte.gradients!)
        memset(x.grad!, 0, x.count * 4); memset(wte.grad!, 0, wte.count * 4)
        fused.forward(); fused.backward()
        #expect(abs(fused.loss - ce.loss) <= 1e-6 * abs(ce.loss))
        #expect(maxRelativeError(x.grad!, gx, gx.count) < 1e-5)
        #expect(maxRelativeError(wte.grad!, gw, gw.count) < 1e-5)
    }

    @Test func fastExpAccuracy() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let r = exp(Double(x))
            worst = max(worst, Float(abs(Double(sexp(x)) - r) / r))
            x += 0.0137
        }
        #expect(worst < 5e-7, "vexp relative error \(worst)")
    }
}
