import Common
import Foundation

// Coarse ops with hand-written kernels, each forward beside its backward (llm.c style).
// Matrices are row-major; "rows" are the B*T positions, the last dimension is the channel width.

// MARK: - Vector helpers (SIMD main loop + scalar tail)

@inline(__always)
func vsum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec(repeating: 0), i = 0
    while i + 8 <= n { acc += load(p + i); i += 8 }
    var s = acc.sum()
    while i < n { s += p[i]; i += 1 }
    return s
}

/// dst += src
@inline(__always)
func vaccumulate(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { store(load(dst + i) + load(src + i), dst + i); i += 8 }
    while i < n { dst[i] += src[i]; i += 1 }
}

/// Row kernels shared by the training ops and the KV-cache decoder.
public enum Kernels {
    /// out = (x - mean) / sqrt(var + eps) * w + b over one row of `n`; returns (mean, 1/std).
    @inline(__always)
    public static func layerNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                                 _ o: UnsafeMutablePointer<Float>, _ n: Int) -> (Float, Float) {
        let m = vsum(x, n) / Float(n)
        var acc = Vec(repeating: 0), i = 0
        let mv = Vec(repeating: m)
        while i + 8 <= n { let d = load(x + i) - mv; acc += d * d; i += 8 }
        var v = acc.sum()
        while i < n { let d = x[i] - m; v += d * d; i += 1 }
        let s = 1 / (v / Float(n) + LayerNormOp.eps).squareRoot()
        let sv = Vec(repeating: s)
        i = 0
        while i + 8 <= n { store((load(x + i) - mv) * sv * load(w + i) + load(b + i), o + i); i += 8 }
        while i < n { o[i] = (x[i] - m) * s * w[i] + b[i]; i += 1 }
        return (m, s)
    }

    static let geluS: Float = 0.797_884_560_802_865_4  // sqrt(2/pi)

    /// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    @inline(__always)
    public static func gelu(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let half = Vec(repeating: 0.5), one = Vec(repeating: 1), s = Vec(repeating: geluS)
        let k = Vec(repeating: 0.044715)
        while i + 8 <= n {
            let v = load(x + i)
            store(half * v * (one + vtanh(s * (v + k * v * v * v))), o + i)
            i += 8
        }
        while i < n {
            let v = x[i]
            o[i] = 0.5 * v * (1 + tanhf(geluS * (v + 0.044715 * v * v * v)))
            i += 1
        }
    }

    /// Largest value of a row.
    @inline(__always)
    public static func rowMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        var mv = Vec(repeating: -.infinity), i = 0
        while i + 8 <= n { mv = pointwiseMax(mv, load(p + i)); i += 8 }
        var m = mv.max()
        while i < n { m = max(m, p[i]); i += 1 }
        return m
    }

    /// log(sum(exp(row))), computed stably; the row is left unchanged.
    @inline(__always)
    public static func logSumExp(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
        let m = rowMax(p, n)
        var acc = Vec(repeating: 0), i = 0
        let mm = Vec(repeating: m)
        while i + 8 <= n { acc += vexp(load(p + i) - mm); i += 8 }
        var s = acc.sum()
        while i < n { s += sexp(p[i] - m); i += 1 }
        return m + logf(s)
    }

    /// In-place numerically stable softmax of one row; returns log-sum-exp.
    @inline(__always)
    @discardableResult
    public static func softmax(_ row: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        let m = rowMax(row, n)
        var acc = Vec(repeating: 0), i = 0
        let mm = Vec(repeating: m)
        while i + 8 <= n { let e = vexp(load(row + i) - mm); store(e, row + i); acc += e; i += 8 }
        var s = acc.sum()
        while i < n { let e = sexp(row[i] - m); row[i] = e; s += e; i += 1 }
        let inv = Vec(repeating: 1 / s)
        i = 0
        while i + 8 <= n { store(load(row + i) * inv, row + i); i += 8 }
        while i < n { row[i] /= s; i += 1 }
        return m + logf(s)
    }
}

// MARK: - Embedding: out[b,t] = wte[token] + wpe[t]

public final class EmbeddingOp: Op {
    let tokens: TokenBuffer, wte: Tensor, wpe: Tensor, out: Tensor
    let batch: Int, seqLen: Int, channels: Int
    /// When set, backward leaves wte's gradient alone: the caller adds the token rows (out.grad by position,
    /// token ids in `tokens`) itself, so wte's dense gradient is final as soon as the output head's backward ends.
    public var defersTokenGradient = false

    /// Where packed rows (`StepContext.packedRows`) give positions their ids.
    let context: StepContext?

    public init(tokens: TokenBuffer, wte: Tensor, wpe: Tensor, out: Tensor, batch: Int, seqLen: Int, context: StepContext? = nil) {
        precondition(tokens.count >= batch * seqLen && wpe.shape[0] >= seqLen && out.count == batch * seqLen * wte.shape[1])
        self.tokens = tokens; self.wte = wte; self.wpe = wpe; self.out = out
        self.batch = batch; self.seqLen = seqLen; channels = wte.shape[1]; self.context = context
    }

    public func forward() {
        let C = channels, T = seqLen
        let ids = context?.packedRows?.positionIDs
        Parallel.chunks(batch * T, costPerItem: C) { _, rows in
            for r in rows {
                let tok = Int(tokens.pointer[r])
                let e = wte.data + tok * C, p = wpe.data + (ids.map { Int($0[r]) } ?? r % T) * C, o = out.data + r * C
                var i = 0
                while i + 8 <= C { store(load(e + i) + load(p + i), o + i); i += 8 }
                while i < C { o[i] = e[i] + p[i]; i += 1 }
            }
        }
    }

    public func backward() {
        precondition(context?.packedRows == nil, "packed rows are for evaluation: no backward")
        // Threads own disjoint channel ranges, so repeated tokens never race.
        let C = channels, T = seqLen, N = batch * seqLen
        let dwte = wte.grad!, dwpe = wpe.grad!, dout = out.grad!
        let tokenRows = !defersTokenGradient
        Parallel.chunks(C, costPerItem: N) { _, cs in
            for r in 0..<N {
                let d = dout + r * C, gp = dwpe + (r % T) * C
                for c in cs { gp[c] += d[c] }
                if tokenRows {
                    let ge = dwte + Int(tokens.pointer[r]) * C
                    for c in cs { ge[c] += d[c] }
                }
            }
        }
    }

    /// The gradient by position that a deferred backward left for the caller: [batch·seqLen, channels].
    public var outputGradient: UnsafePointer<Float> { UnsafePointer(out.grad!) }
}

// MARK: - LayerNorm over the last dimension (eps 1e-5)

public final class LayerNormOp: Op {
    let x: Tensor, weight: Tensor, bias: Tensor, out: Tensor
    let mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>
    let partials: UnsafeMutablePointer<Float>, workers: Int
    let rows: Int, channels: Int
    public static let eps: Float = 1e-5

    public init(x: Tensor, weight: Tensor, bias: Tensor, out: Tensor, arena: ActivationArena) {
        precondition(x.shape == out.shape && weight.count == x.lastDimension && bias.count == x.lastDimension)
        self.x = x; self.weight = weight; self.bias = bias; self.out = out
        rows = x.rows; channels = x.lastDimension
        mean = arena.scratch(rows); rstd = arena.scratch(rows)
        workers = max(Parallel.threads, 1)
        partials = arena.scratch(workers * 2 * channels)
    }

    public func forward() {
        let C = channels
        Parallel.chunks(rows, costPerItem: C * 3) { _, rs in
            for r in rs {
                (mean[r], rstd[r]) = Kernels.layerNorm(x.data + r * C, weight.data, bias.data, out.data + r * C, C)
            }
        }
    }

    public func backward() {
        let C = channels, dx = x.grad!, dout = out.grad!
        memset(partials, 0, workers * 2 * C * 4)
        Parallel.chunks(rows, costPerItem: C * 6) { w, rs in
            precondition(w < workers, "thread count changed after the graph was built")
            let dw = partials + w * 2 * C, db = dw + C
            for r in rs {
                let xr = x.data + r * C, d = dout + r * C, g = dx + r * C
                let m = mean[r], s = rstd[r]
                var a1 = Vec(repeating: 0), a2 = Vec(repeating: 0), i = 0
                let mv = Vec(repeating: m), sv = Vec(repeating: s)
                while i + 8 <= C {
                    let n = (load(xr + i) - mv) * sv, dn = load(weight.data + i) * load(d + i)
                    a1 += dn; a2 += dn * n; i += 8
                }
                var s1 = a1.sum(), s2 = a2.sum()
                while i < C {
                    let n = (xr[i] - m) * s, dn = weight.data[i] * d[i]
                    s1 += dn; s2 += dn * n; i += 1
                }
                let mean1 = s1 / Float(C), mean2 = s2 / Float(C)
                let m1 = Vec(repeating: mean1), m2 = Vec(repeating: mean2)
                i = 0
                while i + 8 <= C {
                    let n = (load(xr + i) - mv) * sv, dv = load(d + i), dn = load(weight.data + i) * dv
                    store(load(db + i) + dv, db + i)
                    store(load(dw + i) + n * dv, dw + i)
                    store(load(g + i) + (dn - m1 - n * m2) * sv, g + i)
                    i += 8
                }
                while i < C {
                    let n = (xr[i] - m) * s, dv = d[i], dn = weight.data[i] * dv
                    db[i] += dv; dw[i] += n * dv; g[i] += (dn - mean1 - n * mean2) * s
                    i += 1
                }
            }
        }
        for w in 0..<workers {
            vaccumulate(weight.grad!, partials + w * 2 * C, C)
            vaccumulate(bias.grad!, partials + w * 2 * C + C, C)
        }
    }
}

// MARK: - Linear: out[N,out] = x[N,in] @ W[in,out] + b (W input-major, as GPT-2's Conv1D)

public final class LinearOp: Op {
    let x: Tensor, weight: Tensor, bias: Tensor?, out: Tensor
    let ones: UnsafeMutablePointer<Float>
    let n: Int, inputs: Int, outputs: Int
    let matmul: Matmul

    public init(x: Tensor, weight: Tensor, bias: Tensor?, out: Tensor, arena: ActivationArena, matmul: Matmul = .fp32) {
        n = x.rows; inputs = x.lastDimension; outputs = weight.shape[1]
        precondition(weight.shape == [inputs, outputs] && out.rows == n && out.lastDimension == outputs)
        precondition(bias == nil || bias!.count == outputs)
        self.x = x; self.weight = weight; self.bias = bias; self.out = out; self.matmul = matmul
        ones = arena.scratch(n)
        for i in 0..<n { ones[i] = 1 }
        matmul.reserve(floats: max(n * inputs, inputs * outputs, n * outputs), slots: 1)
    }

    public func forward() {
        if let b = bias {
            Parallel.chunks(n, costPerItem: outputs) { _, rows in
                for r in rows { memcpy(out.data + r * outputs, b.data, outputs * 4) }
            }
        }
        matmul.gemm(.none, .none, m: n, n: outputs, k: inputs, a: .fp32(x.data, ld: inputs), b: matmul.weight(weight, ld: outputs),
                    beta: bias == nil ? 0 : 1, c: out.data, ldc: outputs)
    }

    public func backward() {
        let dout = out.grad!
        // The output's gradient feeds both products: converted once.
        let d = matmul.prepare(dout, rows: n, cols: outputs, ld: outputs, slot: 0)
        if let dx = x.grad {
            matmul.gemm(.none, .transpose, m: n, n: inputs, k: outputs, a: d, b: matmul.weight(weight, ld: outputs),
                        beta: 1, c: dx, ldc: inputs)
        }
        matmul.gemm(.transpose, .none, m: inputs, n: outputs, k: n, a: .fp32(x.data, ld: inputs), b: d,
                    beta: 1, c: weight.grad!, ldc: outputs)
        if let b = bias {
            BLAS.gemv(.transpose, m: n, n: outputs, a: dout, lda: outputs, x: ones, beta: 1, y: b.grad!)
        }
    }
}

// MARK: - Tied output head: logits[N,V] = x[N,C] @ wte[V,C]^T

public final class TiedHeadOp: Op {
    let x: Tensor, logits: Tensor
    let n: Int, vocab: Int
    let products: TiedHeadProducts

    public init(x: Tensor, wte: Tensor, logits: Tensor, matmul: Matmul = .fp32) {
        n = x.rows; vocab = wte.shape[0]
        precondition(wte.shape[1] == x.lastDimension && logits.rows == n && logits.lastDimension == vocab)
        self.x = x; self.logits = logits
        products = TiedHeadProducts(wte: wte, rows: n, matmul: matmul)
    }

    public func forward() { products.logits(x.data, rows: n, into: logits.data) }

    public func backward() { products.backward(logits.grad!, x: x.data, rows: n, dx: x.grad!) }
}

/// The tied head's products, for `TiedHeadOp` and `ChunkedHeadCrossEntropyOp`: logits = x wte^T, and backward
/// dx += dlogits wte, dwte += dlogits^T x. fp32: one product each over the whole vocabulary. bf16: blocks of the
/// vocabulary (converted operands need little scratch), x converted once for all blocks, each block of the logits'
/// gradient once for both its products, wte read from the parameters' bf16 copy.
struct TiedHeadProducts {
    let wte: Tensor, channels: Int, vocab: Int, block: Int
    let matmul: Matmul

    /// `rows`: the most positions one call multiplies.
    init(wte: Tensor, rows: Int, matmul: Matmul) {
        self.wte = wte; self.matmul = matmul
        vocab = wte.shape[0]; channels = wte.shape[1]
        block = matmul.precision == .fp32 ? vocab : min(vocab, 3072)
        matmul.reserve(floats: max(rows * channels, block * channels, rows * block), slots: 2)
    }

    func logits(_ x: UnsafePointer<Float>, rows n: Int, into c: UnsafeMutablePointer<Float>) {
        let C = channels, xo = matmul.prepare(x, rows: n, cols: C, ld: C, slot: 0)
        for v0 in stride(from: 0, to: vocab, by: block) {
            matmul.gemm(.none, .transpose, m: n, n: min(block, vocab - v0), k: C, a: xo, b: matmul.weight(wte, offset: v0 * C, ld: C),
                        beta: 0, c: c + v0, ldc: vocab)
        }
    }

    /// `dlogits` [rows, vocab]; adds into dx [rows, channels] and wte's gradient.
    func backward(_ dlogits: UnsafePointer<Float>, x: UnsafePointer<Float>, rows n: Int, dx: UnsafeMutablePointer<Float>) {
        let C = channels, xo = matmul.prepare(x, rows: n, cols: C, ld: C, slot: 0)
        for v0 in stride(from: 0, to: vocab, by: block) {
            let rv = min(block, vocab - v0)
            let d = matmul.prepare(dlogits + v0, rows: n, cols: rv, ld: vocab, slot: 1)
            matmul.gemm(.none, .none, m: n, n: C, k: rv, a: d, b: matmul.weight(wte, offset: v0 * C, ld: C), beta: 1, c: dx, ldc: C)
            matmul.gemm(.transpose, .none, m: rv, n: C, k: n, a: d, b: xo, beta: 1, c: wte.grad! + v0 * C, ldc: C)
        }
    }
}

// MARK: - GELU, tanh approximation (GPT-2's "gelu_new")

public final class GELUOp: Op {
    let x: Tensor, out: Tensor
    static let s = Kernels.geluS

    public init(x: Tensor, out: Tensor) {
        precondition(x.count == out.count)
        self.x = x; self.out = out
    }

    public func forward() {
        let n = x.count
        Parallel.chunks((n + 7) / 8, costPerItem: 64) { _, blocks in
            let lo = blocks.lowerBound * 8, hi = min(blocks.upperBound * 8, n)
            Kernels.gelu(x.data + lo, out.data + lo, hi - lo)
        }
    }

    public func backward() {
        let n = x.count, dx = x.grad!, dout = out.grad!
        Parallel.chunks((n + 7) / 8, costPerItem: 64) { _, blocks in
            let lo = blocks.lowerBound * 8, hi = min(blocks.upperBound * 8, n)
            var i = lo
            let half = Vec(repeating: 0.5), one = Vec(repeating: 1), s = Vec(repeating: Self.s)
            let k = Vec(repeating: 0.044715), k3 = Vec(repeating: 3 * 0.044715)
            while i + 8 <= hi {
                let v = load(x.data + i)
                let t = vtanh(s * (v + k * v * v * v))
                let local = half * (one + t) + v * half * (one - t * t) * s * (one + k3 * v * v)
                store(load(dx + i) + local * load(dout + i), dx + i)
                i += 8
            }
            while i < hi {
                let v = x.data[i]
                let t = tanhf(Self.s * (v + 0.044715 * v * v * v))
                let local = 0.5 * (1 + t) + v * 0.5 * (1 - t * t) * Self.s * (1 + 3 * 0.044715 * v * v)
                dx[i] += local * dout[i]
                i += 1
            }
        }
    }
}

// MARK: - Residual add: out = a + b

public final class AddOp: Op {
    let a: Tensor, b: Tensor, out: Tensor

    public init(a: Tensor, b: Tensor, out: Tensor) {
        precondition(a.count == b.count && a.count == out.count)
        self.a = a; self.b = b; self.out = out
    }

    public func forward() {
        let n = a.count
        Parallel.chunks((n + 7) / 8, costPerItem: 8) { _, blocks in
            var i = blocks.lowerBound * 8
            let hi = min(blocks.upperBound * 8, n)
            while i + 8 <= hi { store(load(a.data + i) + load(b.data + i), out.data + i); i += 8 }
            while i < hi { out.data[i] = a.data[i] + b.data[i]; i += 1 }
        }
    }

    public func backward() {
        let n = a.count, d = out.grad!
        Parallel.chunks((n + 7) / 8, costPerItem: 8) { _, blocks in
            let lo = blocks.lowerBound * 8, hi = min(blocks.upperBound * 8, n)
            if let ga = a.grad { vaccumulate(ga + lo, d + lo, hi - lo) }
            if let gb = b.grad { vaccumulate(gb + lo, d + lo, hi - lo) }
        }
    }
}

// MARK: - Dropout (inverted), masks recomputed from counters in backward instead of stored

public final class DropoutOp: Op {
    let x: Tensor, out: Tensor, rate: Float, site: UInt64, context: StepContext

    public init(x: Tensor, out: Tensor, rate: Float, site: UInt64, context: StepContext) {
        precondition(x.shape == out.shape && rate >= 0 && rate < 1)
        self.x = x; self.out = out; self.rate = rate; self.site = site; self.context = context
    }

    @inline(__always)
    func apply(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let C = x.lastDimension, rows = x.rows, T = x.shape.count >= 3 ? x.shape[x.shape.count - 2] : rows
        let keep = 1 - rate, scale = 1 / keep
        let ctx = context
        Parallel.chunks(rows, costPerItem: C * 4) { _, rs in
            for r in rs {
                let globalRow = ctx.rowOffset + r / T, pos = r % T
                let key = CounterRandom.key(ctx.seed, UInt64(ctx.step), site, UInt64(globalRow), UInt64(pos))
                let s = src + r * C, d = dst + r * C
                for c in 0..<C {
                    let m: Float = CounterRandom.uniform(key, UInt64(c)) < keep ? scale : 0
                    if accumulate { d[c] += s[c] * m } else { d[c] = s[c] * m }
                }
            }
        }
    }

    public func forward() {
        if context.training && rate > 0 {
            apply(x.data, out.data, accumulate: false)
        } else if x.data != out.data {
            memcpy(out.data, x.data, x.count * 4)
        }
    }

    public func backward() {
        if context.training && rate > 0 {
            apply(out.grad!, x.grad!, accumulate: true)
        } else {
            vaccumulate(x.grad!, out.grad!, x.count)
        }
    }
}

// MARK: - Fused softmax + cross-entropy, mean over positions

/// Forward computes per-row log-sum-exp and the loss; backward overwrites the logits' gradient with
/// (softmax - onehot) * gradScale. It must be the only consumer of the logits. When the gradient shares the
/// logits' memory (training), forward already replaces the logits by the probabilities, so backward is one
/// multiply pass instead of a second exp pass.
public final class SoftmaxCrossEntropyOp: Op {
    let logits: Tensor, targets: TokenBuffer
    let lse: UnsafeMutablePointer<Float>, rowLoss: UnsafeMutablePointer<Float>
    let rows: Int, vocab: Int
    let cachesProbabilities: Bool
    /// Gradient of the loss that backward propagates: 1/rows by default (the mean);
    /// data-parallel training sets 1/(global positions) so that summed gradients are the global mean.
    public var gradScale: Float
    public private(set) var loss: Float = 0
    /// Sum of per-position losses in this micro-batch (in Double, for exact global means).
    public private(set) var lossSum: Double = 0

    public init(logits: Tensor, targets: TokenBuffer, arena: ActivationArena) {
        rows = logits.rows; vocab = logits.lastDimension
        precondition(targets.count >= rows)
        self.logits = logits; self.targets = targets
        cachesProbabilities = logits.grad == logits.data
        lse = arena.scratch(rows); rowLoss = arena.scratch(rows)
        gradScale = 1 / Float(rows)
    }

    public func forward() {
        let V = vocab, caching = cachesProbabilities
        Parallel.chunks(rows, costPerItem: V * 2) { _, rs in
            for r in rs {
                let l = logits.data + r * V, t = Int(targets.pointer[r])
                let target = l[t]
                let v = caching ? Kernels.softmax(l, V) : Kernels.logSumExp(l, V)
                lse[r] = v
                rowLoss[r] = v - target
            }
        }
        var total = 0.0
        for r in 0..<rows { total += Double(rowLoss[r]) }
        lossSum = total
        loss = Float(total / Double(rows))
    }

    public func backward() {
        let V = vocab, scale = gradScale, dl = logits.grad!, caching = cachesProbabilities
        Parallel.chunks(rows, costPerItem: V) { _, rs in
            for r in rs {
                let l = logits.data + r * V, d = dl + r * V
                let sv = Vec(repeating: scale)
                var i = 0
                if caching {  // l already holds the probabilities (and d is the same memory)
                    while i + 8 <= V { store(load(l + i) * sv, d + i); i += 8 }
                    while i < V { d[i] = l[i] * scale; i += 1 }
                } else {
                    let m = Vec(repeating: lse[r])
                    while i + 8 <= V { store(vexp(load(l + i) - m) * sv, d + i); i += 8 }
                    while i < V { d[i] = sexp(l[i] - lse[r]) * scale; i += 1 }
                }
                d[Int(targets.pointer[r])] -= scale
            }
        }
    }
}

// MARK: - Loss ops

/// The op that ends a graph: a scalar loss whose gradient backward starts from.
public protocol LossOp: Op {
    /// Gradient of the loss propagated by backward (1/rows by default: the mean).
    var gradScale: Float { get set }
    var loss: Float { get }
    /// Sum of per-position losses (in Double, for exact means across micro-batches and ranks).
    var lossSum: Double { get }
}

extension SoftmaxCrossEntropyOp: LossOp {}

/// Tied output head and softmax cross-entropy fused and taken `chunkRows` positions at a time, so the
/// [positions, vocab] logits are never stored: forward keeps each row's log-sum-exp, backward recomputes a
/// chunk's logits (one extra sgemm), turns them into (softmax − onehot)·gradScale and applies both products.
/// Used with --recompute, where the full logits would otherwise dominate activation memory.
public final class ChunkedHeadCrossEntropyOp: LossOp {
    let x: Tensor, targets: TokenBuffer
    let rows: Int, channels: Int, vocab: Int, chunkRows: Int
    let scratch: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, rowLoss: UnsafeMutablePointer<Float>
    public var gradScale: Float
    public private(set) var loss: Float = 0
    public private(set) var lossSum: Double = 0

    let products: TiedHeadProducts

    public init(x: Tensor, wte: Tensor, targets: TokenBuffer, chunkRows: Int = 256, arena: ActivationArena,
                matmul: Matmul = .fp32) {
        rows = x.rows; channels = x.lastDimension; vocab = wte.shape[0]
        precondition(wte.shape[1] == channels && targets.count >= rows && chunkRows > 0)
        self.x = x; self.targets = targets
        self.chunkRows = min(chunkRows, rows)
        scratch = arena.scratch(self.chunkRows * vocab)
        lse = arena.scratch(rows); rowLoss = arena.scratch(rows)
        gradScale = 1 / Float(rows)
        products = TiedHeadProducts(wte: wte, rows: self.chunkRows, matmul: matmul)
    }

    /// Logits of rows [r0, r0 + n) into the scratch buffer.
    @inline(__always)
    func logits(_ r0: Int, _ n: Int) { products.logits(x.data + r0 * channels, rows: n, into: scratch) }

    public func forward() {
        let V = vocab
        var r0 = 0
        while r0 < rows {
            let n = min(chunkRows, rows - r0)
            logits(r0, n)
            Parallel.chunks(n, costPerItem: V * 2) { _, rs in
                for i in rs {
                    let l = scratch + i * V
                    let v = Kernels.logSumExp(l, V)
                    lse[r0 + i] = v
                    rowLoss[r0 + i] = v - l[Int(targets.pointer[r0 + i])]
                }
            }
            r0 += n
        }
        var total = 0.0
        for r in 0..<rows { total += Double(rowLoss[r]) }
        lossSum = total
        loss = Float(total / Double(rows))
    }

    public func backward() {
        let V = vocab, C = channels, scale = gradScale
        var r0 = 0
        while r0 < rows {
            let n = min(chunkRows, rows - r0)
            logits(r0, n)
            Parallel.chunks(n, costPerItem: V) { _, rs in
                for i in rs {
                    let d = scratch + i * V
                    let m = Vec(repeating: lse[r0 + i]), sv = Vec(repeating: scale)
                    var j = 0
                    while j + 8 <= V { store(vexp(load(d + j) - m) * sv, d + j); j += 8 }
                    while j < V { d[j] = sexp(d[j] - lse[r0 + i]) * scale; j += 1 }
                    d[Int(targets.pointer[r0 + i])] -= scale
                }
            }
            products.backward(scratch, x: x.data + r0 * C, rows: n, dx: x.grad! + r0 * C)
            r0 += n
        }
    }
}
