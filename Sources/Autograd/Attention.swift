import Common
import Foundation

/// Fused causal multi-head self-attention on a packed q|k|v projection.
/// qkv: [B, T, 3C] (columns q | k | v, head h at channels h*hs ..< (h+1)*hs within each);
/// out: [B, T, C]. Per (batch, head): S = Q K^T / sqrt(hs) (sgemm), causal softmax, O = P V (sgemm),
/// reading heads in place through leading dimensions, so there is no transpose or copy.
/// Only each row's log-sum-exp is kept: backward recomputes P = exp(S - lse) from Q and K (one extra sgemm),
/// so attention needs B·H·T floats instead of B·H·T² (4.8 GB for GPT-2 124M at B=8, T=1024).
/// Dropout on P is recomputed from counters.
/// bf16: every operand of the four products is rounded once where it is made (q, k, v and the output's gradient in
/// place, as only these products read them; P and dS row by row), so the products multiply bf16 values with
/// fp32 accumulation while softmax and its backward stay fp32. The products run on the workers' threads through
/// sgemm, exact on bf16 values.
public final class CausalSelfAttentionOp: Op {
    let qkv: Tensor, out: Tensor
    let lse: UnsafeMutablePointer<Float>  // [B, NH, T]
    let scratch: UnsafeMutablePointer<Float>  // per worker: 3 * T * T
    let batch: Int, seqLen: Int, heads: Int, channels: Int, headSize: Int, workers: Int
    let dropRate: Float, site: UInt64, context: StepContext
    let matmul: Matmul

    public init(qkv: Tensor, out: Tensor, batch: Int, seqLen: Int, heads: Int,
                dropRate: Float = 0, site: UInt64 = 0, context: StepContext, arena: ActivationArena, matmul: Matmul = .fp32) {
        channels = out.lastDimension
        precondition(channels % heads == 0, "emb_dim must be divisible by n_heads")
        precondition(qkv.count == batch * seqLen * 3 * channels && out.count == batch * seqLen * channels)
        self.qkv = qkv; self.out = out
        self.batch = batch; self.seqLen = seqLen; self.heads = heads; headSize = channels / heads
        self.dropRate = dropRate; self.site = site; self.context = context
        lse = arena.scratch(batch * heads * seqLen)
        workers = max(Parallel.threads, 1)
        scratch = arena.scratch(workers * 3 * seqLen * seqLen)
        self.matmul = matmul
    }

    var bf16: Bool { matmul.precision == .bf16 }

    /// An operand of the products: rounded to bf16 already (bf16), or fp32.
    @inline(__always)
    func operand(_ p: UnsafePointer<Float>, ld: Int) -> Operand { matmul.roundedOrFP32(p, ld: ld) }

    /// A T x T causal matrix (row i non-zero in columns 0...i) rounded to bf16 into `dst` (may be `src`), zeros above.
    @inline(__always)
    func roundCausal(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>) {
        let T = seqLen
        for i in 0..<T {
            BF16.round(src + i * T, rows: 1, cols: i + 1, ld: T, into: dst + i * T)
            if src != dst && i + 1 < T { memset(dst + i * T + i + 1, 0, (T - i - 1) * 4) }
        }
    }

    /// bf16: rounds rows x cols (leading dimension ld) in place, on the calling thread unless `parallel`.
    @inline(__always)
    func roundInPlace(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int, parallel: Bool = false) {
        if bf16 { BF16.round(p, rows: rows, cols: cols, ld: ld, into: p, ldOut: ld, parallel: parallel) }
    }

    var dropping: Bool { context.training && dropRate > 0 }

    /// Inverted-dropout mask value for probability (b, h, i, j), a function of global coordinates only.
    @inline(__always)
    func maskKey(_ b: Int, _ h: Int) -> UInt64 {
        CounterRandom.key(context.seed, UInt64(context.step), site, UInt64(context.rowOffset + b), UInt64(h))
    }

    /// P with dropout applied, into `dst` (rows i, columns j <= i; the rest zero).
    func droppedProbs(_ p: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, key: UInt64) {
        let T = seqLen, keep = 1 - dropRate, scale = 1 / keep
        for i in 0..<T {
            for j in 0..<T {
                let idx = i * T + j
                dst[idx] = j <= i && CounterRandom.uniform(key, UInt64(idx)) < keep ? p[idx] * scale : 0
            }
        }
    }

    /// Rows are processed in blocks; block [i0, i1) only attends to columns [0, i1), so the products skip most
    /// of the masked upper triangle (half the score and P·V work at long sequence lengths).
    static let rowBlock = 64

    @inline(__always)
    func forEachRowBlock(_ body: (Int, Int) -> Void) {
        var i0 = 0
        while i0 < seqLen {
            let i1 = min(i0 + Self.rowBlock, seqLen)
            body(i0, i1)
            i0 = i1
        }
    }

    /// Scaled scores S = Q K^T / sqrt(hs) of one (batch, head) into `s` [T, T] (row block [i0, i1): columns < i1).
    @inline(__always)
    func scores(_ item: Int, into s: UnsafeMutablePointer<Float>) {
        let T = seqLen, C3 = 3 * channels, b = item / heads, h = item % heads
        let q = qkv.data + b * T * C3 + h * headSize
        forEachRowBlock { i0, i1 in
            matmul.gemm(.none, .transpose, m: i1 - i0, n: i1, k: headSize, alpha: 1 / Float(headSize).squareRoot(),
                        a: operand(q + i0 * C3, ld: C3), b: operand(q + channels, ld: C3), beta: 0, c: s + i0 * T, ldc: T,
                        onWorker: true)
        }
    }

    public func forward() {
        let T = seqLen, C = channels, hs = headSize, C3 = 3 * C
        // q, k and v feed only this op's products.
        roundInPlace(qkv.data, rows: batch * T, cols: C3, ld: C3, parallel: true)
        withSingleThreadedBLAS {
            Parallel.forEach(batch * heads) { w, item in
                let b = item / heads, h = item % heads
                let v = qkv.data + b * T * C3 + h * hs + 2 * C
                let p = scratch + w * 3 * T * T
                scores(item, into: p)
                let packed = context.packedRows
                for i in 0..<T {
                    let row = p + i * T
                    // Packed rows: keys between the shared prefix and the position's own segment are not its.
                    let hidden = packed.map { Int($0.prefixEnd[b * T + i])..<max(Int($0.prefixEnd[b * T + i]), Int($0.segmentStart[b * T + i])) }
                    if let hidden { for j in hidden { row[j] = -.infinity } }
                    lse[item * T + i] = Kernels.softmax(row, i + 1)
                    if let hidden { for j in hidden { row[j] = 0 } }  // (exp is clamped, not zero, at -inf)
                    for j in (i + 1)..<T { row[j] = 0 }
                }
                var pUsed = p
                if dropping {
                    let pd = p + T * T
                    droppedProbs(p, pd, key: maskKey(b, h))
                    pUsed = pd
                }
                if bf16 { roundCausal(pUsed, into: pUsed) }  // forward needs P only for this product
                let o = out.data + b * T * C + h * hs
                forEachRowBlock { i0, i1 in
                    matmul.gemm(.none, .none, m: i1 - i0, n: hs, k: i1, a: operand(pUsed + i0 * T, ld: T), b: operand(v, ld: C3),
                                beta: 0, c: o + i0 * C, ldc: C, onWorker: true)
                }
            }
        }
    }

    public func backward() {
        precondition(context.packedRows == nil, "packed rows are for evaluation: no backward")
        let T = seqLen, C = channels, hs = headSize, C3 = 3 * C
        let scale = 1 / Float(hs).squareRoot()
        let dqkv = qkv.grad!, dout = out.grad!
        // The output's gradient feeds only this op's products.
        roundInPlace(dout, rows: batch * T, cols: C, ld: C, parallel: true)
        withSingleThreadedBLAS {
            Parallel.forEach(batch * heads) { w, item in
                let b = item / heads, h = item % heads
                let off = b * T * C3 + h * hs
                let q = qkv.data + off, k = q + C, v = q + 2 * C
                let dq = dqkv + off, dk = dq + C, dv = dq + 2 * C
                let dO = dout + b * T * C + h * hs
                let p = scratch + w * 3 * T * T, dp = p + T * T, pd = dp + T * T
                // P = exp(S - lse), recomputed.
                scores(item, into: p)
                for i in 0..<T {
                    let row = p + i * T, m = Vec(repeating: lse[item * T + i])
                    var j = 0
                    while j + 8 <= i + 1 { store(vexp(load(row + j) - m), row + j); j += 8 }
                    while j <= i { row[j] = sexp(row[j] - m[0]); j += 1 }
                    for j in (i + 1)..<T { row[j] = 0 }
                }
                // P' (dropped, or P itself): softmax backward needs P in fp32, the product a bf16 copy.
                var pUsed = p
                if dropping {
                    droppedProbs(p, pd, key: maskKey(b, h))
                    if bf16 { roundCausal(pd, into: pd) }
                    pUsed = pd
                } else if bf16 {
                    roundCausal(p, into: pd)
                    pUsed = pd
                }
                // dV += P'^T dO ; dP' = dO V^T (block [i0, i1) touches columns < i1 only)
                forEachRowBlock { i0, i1 in
                    matmul.gemm(.transpose, .none, m: i1, n: hs, k: i1 - i0, a: operand(pUsed + i0 * T, ld: T),
                                b: operand(dO + i0 * C, ld: C), beta: 1, c: dv, ldc: C3, onWorker: true)
                    matmul.gemm(.none, .transpose, m: i1 - i0, n: i1, k: hs, a: operand(dO + i0 * C, ld: C), b: operand(v, ld: C3),
                                beta: 0, c: dp + i0 * T, ldc: T, onWorker: true)
                }
                let inv = 1 / (1 - dropRate)
                for i in 0..<T {
                    let pr = p + i * T, dr = dp + i * T, kept = pd + i * T
                    if dropping {
                        // The mask is already in P' (zero where dropped); where P itself is 0 the mask cannot
                        // matter, since dS = P * (...). So no second pass of hashing.
                        for j in 0...i { dr[j] = kept[j] != 0 ? dr[j] * inv : 0 }
                    }
                    // softmax backward: dS = P * (dP - sum_j P dP)
                    var dot: Float = 0
                    for j in 0...i { dot += pr[j] * dr[j] }
                    for j in 0...i { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in (i + 1)..<T { dr[j] = 0 }
                    roundInPlace(dr, rows: 1, cols: i + 1, ld: T)  // dS feeds only the two products below
                }
                // dQ += scale * dS K ; dK += scale * dS^T Q
                forEachRowBlock { i0, i1 in
                    matmul.gemm(.none, .none, m: i1 - i0, n: hs, k: i1, alpha: scale, a: operand(dp + i0 * T, ld: T),
                                b: operand(k, ld: C3), beta: 1, c: dq + i0 * C3, ldc: C3, onWorker: true)
                    matmul.gemm(.transpose, .none, m: i1, n: hs, k: i1 - i0, alpha: scale, a: operand(dp + i0 * T, ld: T),
                                b: operand(q + i0 * C3, ld: C3), beta: 1, c: dk, ldc: C3, onWorker: true)
                }
            }
        }
    }
}

/// Runs `body` with OpenBLAS on one thread when our own workers parallelise around many small products.
@inline(__always)
func withSingleThreadedBLAS(_ body: () -> Void) {
    let saved = BLAS.threads
    if saved > 1 && Parallel.threads > 1 {
        BLAS.threads = 1
        body()
        BLAS.threads = saved
    } else {
        body()
    }
}
