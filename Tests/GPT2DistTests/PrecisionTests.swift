import Autograd
import Checkpoint
import Foundation
import GPT2
import Testing

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
        let B = 3, T = 32
        func run(_ precision: MatmulPrecision) -> (Float, [Float]) {
            let graph = GPT2Graph(model: model, batch: B, seqLen: T, mode: .train, recompute: recompute, precision: precision)
            for i in 0..<(B * T) { graph.inputs.pointer[i] = Int32(i * 37 % 311); graph.targets.pointer[i] = Int32((i * 37 + 5) % 311) }
            model.parameters.zeroGradients()
            let loss = graph.forward(step: 1, seed: 3)
            graph.backward()
            return (loss, Array(UnsafeBufferPointer(start: model.parameters.gradients.pointer, count: model.parameters.count)))
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
