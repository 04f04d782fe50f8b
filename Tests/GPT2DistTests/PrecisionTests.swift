import Autograd
import Checkpoint
import Foundation
import GPT2
import Testing
import Training

/// Mixed precision: bf16 rounding, bf16 products, and a bf16 model next to the same model in fp32.
struct PrecisionTests {
    @Test func bf16RoundsToNearestEven() {
        #expect(BF16.rounded(1) == 1)
        #expect(BF16.rounded(1 + 0x1p-8) == 1)                    // halfway, to the even neighbour (below)
        #expect(BF16.rounded(1 + 3 * 0x1p-8) == 1 + 0x1p-6)       // halfway, to the even neighbour (above)
        #expect(BF16.rounded(1 + 0x1p-8 + 0x1p-20) == 1 + 0x1p-7)  // just past halfway
        #expect(BF16.rounded(-2.5) == -2.5 && BF16.rounded(.infinity) == .infinity && BF16.rounded(.nan).isNaN)
        #expect(BF16.rounded(.greatestFiniteMagnitude) == .infinity)  // past bf16's largest finite value
        // The vectorised block rounding equals the scalar one, NaNs included, at any width and leading dimension.
        var r = TestRandom(4)
        let rows = 5, cols = 19, ld = 23
        var a = (0..<(rows * ld)).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: r.next())) }
        a[3] = .nan; a[30] = -.nan; a[31] = .infinity
        var out = [Float](repeating: 0, count: rows * cols)
        BF16.round(a, rows: rows, cols: cols, ld: ld, into: &out)
        for i in 0..<rows { for j in 0..<cols {
            let want = BF16.rounded(a[i * ld + j]), got = out[i * cols + j]
            #expect(want.bitPattern == got.bitPattern || (want.isNaN && got.isNaN), "(\(i), \(j)): \(a[i * ld + j])")
        } }
        // To bf16 bits and back: the rounded value, at every width (vector bodies and tails); a NaN whose payload lies
        // only in the low 16 bits stays a NaN (truncating would make it infinity).
        a[4] = Float(bitPattern: 0x7F80_0001); a[5] = Float(bitPattern: 0xFF80_0100)
        var bits = [UInt16](repeating: 0, count: rows * cols), back = [Float](repeating: 0, count: rows * cols)
        BF16.convert(a, rows: rows, cols: cols, ld: ld, into: &bits)
        BF16.widen(bits, rows: rows, cols: cols, ld: cols, into: &back, parallel: true)
        for i in 0..<rows { for j in 0..<cols {
            let want = BF16.rounded(a[i * ld + j]), got = back[i * cols + j]
            #expect(want.bitPattern == got.bitPattern || (want.isNaN && got.isNaN), "(\(i), \(j)): \(a[i * ld + j]) -> \(got)")
        } }
    }

    /// AdamW rounds what it updates into the parameters' bf16 copy in the same pass: the copy equals the new values
    /// rounded, and the update itself is the one without a copy, bit for bit (also for parts, as under ZeRO-1).
    @Test func adamWRefreshesTheBF16Copy() throws {
        let cfg = try GPT2Config(vocabSize: 97, contextLength: 16, embDim: 24, nHeads: 2, nLayers: 1)
        let withCopy = GPT2Model(config: cfg), plain = GPT2Model(config: cfg)
        withCopy.initialize(seed: 3); plain.initialize(seed: 3)
        withCopy.parameters.enableBF16Copy()
        withCopy.parameters.refreshBF16Copy()
        let n = withCopy.parameters.count
        var r = TestRandom(8)
        r.fill(withCopy.parameters.gradients.pointer, n)
        memcpy(plain.parameters.gradients.pointer, withCopy.parameters.gradients.pointer, n * 4)
        let parts = [0..<(n / 3), (n / 2)..<(n - 5)]
        let a = AdamW(layout: withCopy.parameters.layout, parts: parts, hyper: .init())
        let b = AdamW(layout: plain.parameters.layout, parts: parts, hyper: .init())
        let before = Array(UnsafeBufferPointer(start: withCopy.parameters.bf16Pointer!, count: n))
        for t in 1...3 {
            a.step(params: withCopy.parameters.values.pointer, grads: withCopy.parameters.gradients.pointer, lr: 1e-2, t: t,
                   gradScale: 0.5, bf16: withCopy.parameters.bf16Pointer)
            b.step(params: plain.parameters.values.pointer, grads: plain.parameters.gradients.pointer, lr: 1e-2, t: t, gradScale: 0.5)
        }
        let values = withCopy.parameters.values.pointer, copy = withCopy.parameters.bf16Pointer!
        #expect(memcmp(values, plain.parameters.values.pointer, n * 4) == 0)
        for i in 0..<n {
            let updated = parts.contains { $0.contains(i) }
            let want = updated ? UInt16(BF16.rounded(values[i]).bitPattern >> 16) : before[i]
            #expect(copy[i] == want, "parameter \(i) (updated: \(updated))")
            if copy[i] != want { break }
        }
    }

    /// bf16 x bf16 -> fp32: the exact product of the rounded operands up to fp32 summation order, for every
    /// transpose and leading dimension the ops use; and measurably not the fp32 product.
    @Test(arguments: [(BLAS.Transpose.none, BLAS.Transpose.none), (.none, .transpose), (.transpose, .none)])
    func bf16ProductIsTheRoundedOperandsProduct(ta: BLAS.Transpose, tb: BLAS.Transpose) {
        let m = 37, n = 29, k = 53, pad = 3
        var r = TestRandom(11)
        func random(_ count: Int) -> [Float] { (0..<count).map { _ in Float(Int(r.next() % 20001) - 10000) / 7777 } }
        let (aRows, aCols) = ta == .none ? (m, k) : (k, m), (bRows, bCols) = tb == .none ? (k, n) : (n, k)
        let a = random(aRows * (aCols + pad)), b = random(bRows * (bCols + pad))
        let matmul = Matmul(precision: .bf16)
        matmul.reserve(floats: max(aRows * aCols, bRows * bCols))
        var c = [Float](repeating: 0, count: m * n), c32 = c
        matmul.gemm(ta, tb, m: m, n: n, k: k, a: a, lda: aCols + pad, b: b, ldb: bCols + pad, beta: 0, c: &c, ldc: n)
        BLAS.gemm(ta, tb, m: m, n: n, k: k, a: a, lda: aCols + pad, b: b, ldb: bCols + pad, beta: 0, c: &c32, ldc: n)
        func at(_ x: [Float], _ ld: Int, _ row: Int, _ col: Int, _ t: BLAS.Transpose) -> Double {
            Double(BF16.rounded(t == .none ? x[row * ld + col] : x[col * ld + row]))
        }
        var worst = 0.0, apart = 0.0
        for i in 0..<m { for j in 0..<n {
            var exact = 0.0, scale = 0.0
            for p in 0..<k {
                let term = at(a, aCols + pad, i, p, ta) * at(b, bCols + pad, p, j, tb)
                exact += term; scale += abs(term)
            }
            worst = max(worst, abs(Double(c[i * n + j]) - exact) / scale)
            apart = max(apart, abs(Double(c32[i * n + j]) - exact) / scale)
        } }
        #expect(worst < 1e-6, "bf16 product off the rounded operands' exact product by \(worst)")
        #expect(apart > 1e-4, "fp32 and bf16 products agree to \(apart): were the operands rounded?")
    }

    /// The same model and batch in bf16 and in fp32: the loss within 1e-2 (relative), every gradient tensor
    /// pointing the same way (cosine > 0.99); with recompute (blocked head, recomputed blocks) as well.
    @Test(arguments: [false, true]) func bf16ModelStaysCloseToFP32(recompute: Bool) throws {
        let cfg = try GPT2Config(vocabSize: 311, contextLength: 32, embDim: 48, nHeads: 4, nLayers: 2, dropRate: 0, qkvBias: true)
        let model = GPT2Model(config: cfg)
        model.initialize(seed: 7)
        func run(_ precision: MatmulPrecision) -> (Float, [Float]) {
            lossAndGradients(model, batch: 3, seqLen: 32, recompute: recompute, precision: precision, stride: 37, shift: 5, step: 1, seed: 3)
        }
        let (l32, g32) = run(.fp32), (l16, g16) = run(.bf16)
        #expect(abs(l16 - l32) / l32 < 1e-2, "loss bf16 \(l16) vs fp32 \(l32)")
        #expect(l16 != l32, "bf16 gave the fp32 loss exactly: were the products rounded?")
        for e in model.parameters.layout.entries {
            var dot = 0.0, n16 = 0.0, n32 = 0.0
            // The key bias's true gradient is 0 (it shifts a softmax row evenly): both hold rounding noise only.
            let keyBias = e.name.hasSuffix("c_attn.bias") ? (e.offset + e.count / 3)..<(e.offset + 2 * e.count / 3) : 0..<0
            for i in e.offset..<(e.offset + e.count) where !keyBias.contains(i) {
                dot += Double(g16[i]) * Double(g32[i]); n16 += Double(g16[i] * g16[i]); n32 += Double(g32[i] * g32[i])
            }
            guard n32 > 0 else { continue }
            let cosine = dot / (n16.squareRoot() * n32.squareRoot())
            #expect(cosine > 0.99, "\(e.name): gradient cosine \(cosine)")
        }
    }
}

/// One forward and backward of `model` on a fixed batch (token i is i·stride mod V, its target shifted by `shift`):
/// the loss and every gradient.
func lossAndGradients(_ model: GPT2Model, batch: Int, seqLen: Int, recompute: Bool, precision: MatmulPrecision,
                      engine: BF16Engine? = nil, stride: Int, shift: Int, step: Int, seed: UInt64) -> (Float, [Float]) {
    let graph = GPT2Graph(model: model, batch: batch, seqLen: seqLen, mode: .train, recompute: recompute, precision: precision,
                          bf16Engine: engine)
    let V = model.config.vocabSize
    for i in 0..<(batch * seqLen) { graph.inputs.pointer[i] = Int32(i * stride % V); graph.targets.pointer[i] = Int32((i * stride + shift) % V) }
    model.parameters.zeroGradients()
    let loss = graph.forward(step: step, seed: seed)
    graph.backward()
    return (loss, Array(UnsafeBufferPointer(start: model.parameters.gradients.pointer, count: model.parameters.count)))
}

/// Both bf16 engines on the same products: equal up to summation order. Only where oneDNN runs bf16 natively.
@Suite(.enabled(if: (try? BF16Engine.nativeProbe().get()) != nil,
                "needs a CPU where oneDNN runs bf16 natively (avx512_bf16 or AMX) and libdnnl installed"))
struct NativeBF16Tests {
    @Test(arguments: [(BLAS.Transpose.none, BLAS.Transpose.none), (.none, .transpose), (.transpose, .none)])
    func nativeEqualsEmulated(ta: BLAS.Transpose, tb: BLAS.Transpose) {
        let m = 70, n = 50, k = 90
        var r = TestRandom(5)
        let a = (0..<(m * k)).map { _ in Float(Int(r.next() % 20001) - 10000) / 3333 }
        let b = (0..<(k * n)).map { _ in Float(Int(r.next() % 20001) - 10000) / 3333 }
        let c0 = (0..<(m * n)).map { _ in Float(Int(r.next() % 201) - 100) / 17 }
        let (lda, ldb) = (ta == .none ? k : m, tb == .none ? n : k)
        func product(_ engine: BF16Engine, alpha: Float, beta: Float) -> [Float] {
            let mm = Matmul(precision: .bf16, engine: engine)
            mm.reserve(floats: max(m * k, k * n))
            var c = c0
            mm.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: &c, ldc: n)
            return c
        }
        for (alpha, beta) in [(Float(1), Float(0)), (0.25, 1)] {
            let native = product(.native, alpha: alpha, beta: beta), emulated = product(.emulated, alpha: alpha, beta: beta)
            let err = maxRelativeError(native, emulated, m * n)
            #expect(err < 1e-5, "alpha \(alpha) beta \(beta): native vs emulated \(err)")
        }
    }

    /// A whole training step of a small model (dropout, the blocked head, recompute): both engines give the same loss and
    /// gradients up to summation order, since both multiply the same bf16 operands. Through a model, a summation-order
    /// difference sometimes moves a downstream operand across a bf16 rounding boundary (a 2^-8 change of one element),
    /// so gradients agree to 1% in norm, not to fp32's 1e-6; a wrong operand (a stale weight copy, a wrong stride)
    /// is off by order one.
    @Test(arguments: [false, true]) func nativeModelEqualsEmulated(recompute: Bool) throws {
        let cfg = try GPT2Config(vocabSize: 5000, contextLength: 32, embDim: 64, nHeads: 4, nLayers: 2, dropRate: 0.1)
        let model = GPT2Model(config: cfg)
        model.initialize(seed: 9)
        func run(_ engine: BF16Engine) -> (Float, [Float]) {
            lossAndGradients(model, batch: 2, seqLen: 32, recompute: recompute, precision: .bf16, engine: engine, stride: 311, shift: 7,
                             step: 2, seed: 5)
        }
        let (ln, gn) = run(.native), (le, ge) = run(.emulated)
        #expect(abs(ln - le) / le < 1e-5, "loss native \(ln) vs emulated \(le)")
        for e in model.parameters.layout.entries {
            var diff = 0.0, norm = 0.0
            for i in e.offset..<(e.offset + e.count) { diff += pow(Double(gn[i] - ge[i]), 2); norm += pow(Double(ge[i]), 2) }
            #expect(diff.squareRoot() <= 1e-2 * norm.squareRoot() + 1e-9, "\(e.name): native vs emulated gradients differ by \(diff.squareRoot()) of \(norm.squareRoot())")
        }
    }
}

/// The fixture model (Tests/Fixtures/tiny-gpt2) in bf16 against PyTorch's bf16 autocast on the same batch
/// (Tests/Fixtures/make_autocast_fixtures.py): the loss within 1e-2 (relative), every gradient's cosine above 0.99.
/// Autocast also rounds each product's output to bf16, which gpt2-dist keeps in fp32: close, not equal.
struct AutocastParityTests {
    @Test func bf16LossAndGradientsMatchPyTorchAutocast() throws {
        let model = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
        let batch = try SafeTensorsFile(path: fixtures + "/tiny-gpt2/expected.safetensors")
        let reference = try SafeTensorsFile(path: fixtures + "/tiny-gpt2/autocast-bf16.safetensors")
        let graph = GPT2Graph(model: model, batch: 4, seqLen: 32, mode: .train, precision: .bf16)
        graph.setBatch(inputs: try batch.ints("batch0.inputs").map(Int32.init), targets: try batch.ints("batch0.targets").map(Int32.init))
        model.parameters.zeroGradients()
        let loss = graph.forward()
        graph.backward()
        let refLoss = try reference.floats("loss")[0]
        #expect(abs(loss - refLoss) / refLoss < 1e-2, "loss \(loss) vs autocast \(refLoss)")
        for e in model.parameters.layout.entries {
            let ref = try reference.floats("grad." + (e.name == "wte" || e.name == "wpe" ? e.name + ".weight" : e.name))
            try #require(ref.count == e.count)
            let g = model.parameters.gradients.pointer + e.offset
            // The key bias's true gradient is 0 (it shifts a softmax row evenly): both hold rounding noise there.
            let keyBias = e.name.hasSuffix("c_attn.bias") ? (e.count / 3)..<(2 * e.count / 3) : 0..<0
            var dot = 0.0, a = 0.0, b = 0.0
            for i in 0..<e.count where !keyBias.contains(i) {
                dot += Double(g[i]) * Double(ref[i]); a += Double(g[i] * g[i]); b += Double(ref[i] * ref[i])
            }
            let cosine = dot / (a.squareRoot() * b.squareRoot())
            #expect(cosine > 0.99, "\(e.name): gradient cosine \(cosine) against autocast")
        }
    }
}
