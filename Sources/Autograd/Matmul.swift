import CDNNL
import Common
import Foundation

/// What the matrix products of a tape multiply: fp32 operands, or bf16 operands accumulated in fp32 (mixed precision:
/// everything else, the master weights, gradients and optimizer state stay fp32).
public enum MatmulPrecision: String, Sendable, CaseIterable {
    case fp32, bf16
}

/// How bf16 products are computed. Both give bf16 x bf16 -> fp32 (the same numbers up to summation order).
/// native: oneDNN's matmul primitive, where oneDNN runs it on a bf16 instruction set (avx512_core_bf16, AMX);
/// emulated: operands rounded to bf16 and multiplied by OpenBLAS sgemm, on every CPU.
public enum BF16Engine: String, Sendable {
    case native, emulated

    /// The engine of this process and a line that says why: GPT2DIST_BF16_ENGINE=native|emulated forces one
    /// (native where oneDNN cannot run bf16 natively is an error); otherwise native where oneDNN's bf16 matmul
    /// runs on a bf16 ISA here, emulated elsewhere (oneDNN missing, or only its slow emulation, or no bf16 at all).
    public static func choose() throws -> (engine: BF16Engine, detail: String) {
        try chosen.get()
    }

    nonisolated(unsafe) private static let chosen: Result<(engine: BF16Engine, detail: String), Error> = Result {
        let forced = ProcessInfo.processInfo.environment["GPT2DIST_BF16_ENGINE"].flatMap { $0.isEmpty ? nil : $0 }
        if let forced, BF16Engine(rawValue: forced) == nil {
            throw GPT2DistError(.usage, "GPT2DIST_BF16_ENGINE must be native or emulated, got \(forced)")
        }
        if forced == "emulated" { return (.emulated, "emulated (GPT2DIST_BF16_ENGINE=emulated): bf16-rounded operands through OpenBLAS sgemm") }
        let probe = nativeProbe()
        switch (probe, forced) {
        case (.success(let impl), _):
            return (.native, "native: oneDNN matmul, \(impl)")
        case (.failure(let why), "native"?):
            throw GPT2DistError(.usage, "GPT2DIST_BF16_ENGINE=native, but \(why)")
        case (.failure(let why), _):
            return (.emulated, "emulated: bf16-rounded operands through OpenBLAS sgemm, slower than fp32 on this CPU (\(why))")
        }
    }

    /// oneDNN's implementation of a small bf16 matmul here, when it is a native bf16 one.
    public static func nativeProbe() -> Result<String, GPT2DistError> {
        var error = [CChar](repeating: 0, count: 512), impl = [CChar](repeating: 0, count: 128)
        guard gd_dnnl_load(&error, error.count) == 0 else { return .failure(GPT2DistError(.usage, String(cString: error))) }
        guard let probe = gd_matmul_create(0, 0, 64, 64, 64, 64, 1, 0, &impl, impl.count, &error, error.count) else {
            return .failure(GPT2DistError(.usage, "oneDNN has no bf16 matmul on this CPU (\(String(cString: error)))"))
        }
        gd_matmul_destroy(probe)
        let name = String(cString: impl)
        guard name.contains("bf16") || name.contains("amx") else {
            return .failure(GPT2DistError(.usage, "oneDNN's bf16 matmul here is \(name), an emulation slower than sgemm"))
        }
        return .success(name)
    }
}

/// The GEMMs of one tape, at its precision. fp32: OpenBLAS sgemm on the operands as they are. bf16: both operands
/// rounded to bf16 (round to nearest even) into scratch, then sgemm: the product of two bf16 values is exact in fp32,
/// so this is bf16 x bf16 -> fp32 up to summation order (the emulated engine; on every CPU).
///
/// Scratch for the rounded operands is reserved when the tape is built (`reserve`), per worker for callers that
/// multiply on several threads at once (attention), so a steady-state step allocates nothing.
public final class Matmul: @unchecked Sendable {
    public let precision: MatmulPrecision
    /// bf16 only: how products on the calling thread are computed (products on workers' threads, attention's, are
    /// always emulated: oneDNN runs one product at a time across all threads).
    public let engine: BF16Engine
    private var scratch: [UnsafeMutablePointer<Float>] = []
    private var capacity = 0, workers = 0
    /// Native engine: the operands converted to bf16, and one primitive per shape (built once, reused every step).
    private var halfA: UnsafeMutablePointer<UInt16>?, halfB: UnsafeMutablePointer<UInt16>?
    private var primitives: [Shape: OpaquePointer] = [:]
    struct Shape: Hashable { let ta: Bool, tb: Bool, m: Int, n: Int, k: Int, ldc: Int, alpha: Float, beta: Float }

    /// `engine` (bf16): as `BF16Engine.choose()` decides unless given.
    public init(precision: MatmulPrecision, engine: BF16Engine? = nil) {
        self.precision = precision
        self.engine = precision == .bf16 ? engine ?? ((try? BF16Engine.choose())?.engine ?? .emulated) : .emulated
        if precision == .bf16 && self.engine == .native { gd_dnnl_set_threads(Int32(BLAS.threads)) }
    }

    /// fp32 products (no scratch): what an op uses unless its tape says otherwise.
    public static let fp32 = Matmul(precision: .fp32)

    deinit {
        for s in scratch { s.deallocate() }
        halfA?.deallocate(); halfB?.deallocate()
        for p in primitives.values { gd_matmul_destroy(p) }
    }

    /// Bytes of scratch held for rounded operands.
    public var scratchBytes: Int { scratch.count * capacity * 4 + (halfA != nil ? 2 * capacity * 2 : 0) }

    /// Makes room for operands of `floats` elements each (A and B of one product) on `workers` threads at once.
    /// Only bf16 needs it; call while building the tape.
    public func reserve(floats: Int, workers: Int = 1) {
        guard precision == .bf16, floats > capacity || workers > self.workers else { return }
        for s in scratch { s.deallocate() }
        capacity = max(capacity, floats)
        self.workers = max(self.workers, workers)
        scratch = (0..<(2 * self.workers)).map { _ in .allocate(capacity: max(capacity, 1)) }
        if engine == .native {
            halfA?.deallocate(); halfB?.deallocate()
            halfA = .allocate(capacity: max(capacity, 1)); halfB = .allocate(capacity: max(capacity, 1))
        }
    }

    /// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major with explicit leading dimensions, as
    /// `BLAS.gemm`. `worker` picks the scratch of the calling thread (0..<workers of `reserve`); a caller that
    /// multiplies on several threads at once passes its worker and rounds on its own thread. `aIsBF16`: A already
    /// holds bf16 values (rounded in place by the caller), so it is used as it is.
    @inline(__always)
    public func gemm(_ ta: BLAS.Transpose, _ tb: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, worker: Int? = nil, aIsBF16: Bool = false) {
        guard precision == .bf16 else {
            BLAS.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        // The stored matrices: A is M x K (or K x M transposed), B is K x N (or N x K).
        let (aRows, aCols) = ta == .none ? (m, k) : (k, m)
        let (bRows, bCols) = tb == .none ? (k, n) : (n, k)
        let w = worker ?? 0, parallel = worker == nil
        precondition(aRows * aCols <= capacity && bRows * bCols <= capacity && 2 * w + 1 < scratch.count,
                     "Matmul.reserve was not given room for a \(m)x\(n)x\(k) product")
        if engine == .native && parallel, let ha = halfA, let hb = halfB {
            BF16.convert(a, rows: aRows, cols: aCols, ld: lda, into: ha)
            BF16.convert(b, rows: bRows, cols: bCols, ld: ldb, into: hb)
            let shape = Shape(ta: ta == .transpose, tb: tb == .transpose, m: m, n: n, k: k, ldc: ldc, alpha: alpha, beta: beta)
            guard gd_matmul_run(primitive(shape), ha, hb, c) == 0 else { fatalError("oneDNN matmul \(shape) failed") }
            return
        }
        let rb = scratch[2 * w + 1]
        BF16.round(b, rows: bRows, cols: bCols, ld: ldb, into: rb, parallel: parallel)
        if aIsBF16 {
            BLAS.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: rb, ldb: bCols, beta: beta, c: c, ldc: ldc)
            return
        }
        let ra = scratch[2 * w]
        BF16.round(a, rows: aRows, cols: aCols, ld: lda, into: ra, parallel: parallel)
        BLAS.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: ra, lda: aCols, b: rb, ldb: bCols, beta: beta, c: c, ldc: ldc)
    }
}

extension Matmul {
    /// For an operand that feeds several products and nothing else (the head's logits gradient): the emulated engine
    /// rounds it once, in place, and returns true, so those products pass `aIsBF16`; otherwise (fp32, or the native
    /// engine, which converts operands itself) leaves it alone and returns false.
    public func roundInPlaceForProducts(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int) -> Bool {
        guard precision == .bf16 && engine == .emulated else { return false }
        BF16.round(p, rows: rows, cols: cols, ld: ld, into: p, ldOut: ld, parallel: true)
        return true
    }

    /// The primitive of a shape, made the first time the shape is multiplied.
    func primitive(_ s: Shape) -> OpaquePointer {
        if let p = primitives[s] { return p }
        var error = [CChar](repeating: 0, count: 512), impl = [CChar](repeating: 0, count: 128)
        guard let p = gd_matmul_create(s.ta ? 1 : 0, s.tb ? 1 : 0, Int64(s.m), Int64(s.n), Int64(s.k), Int64(s.ldc), s.alpha, s.beta,
                                       &impl, impl.count, &error, error.count) else {
            fatalError("oneDNN bf16 matmul \(s): \(String(cString: error))")
        }
        primitives[s] = p
        return p
    }
}

/// bfloat16: the top 16 bits of an fp32.
public enum BF16 {
    /// `x` rounded to the nearest bf16 (ties to even), as an fp32; NaN stays NaN, infinities stay.
    @inline(__always)
    public static func rounded(_ x: Float) -> Float {
        let bits = x.bitPattern
        if x.isNaN { return x }
        let lsb = (bits >> 16) & 1
        return Float(bitPattern: (bits &+ 0x7FFF &+ lsb) & 0xFFFF_0000)
    }

    /// Converts a rows x cols block stored with leading dimension `ld` to contiguous bf16 (nearest even), on all threads.
    public static func convert(_ a: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<UInt16>) {
        Parallel.chunks(rows, costPerItem: cols) { _, r in
            for row in r {
                let src = a + row * ld, dst = out + row * cols
                for j in 0..<cols { dst[j] = UInt16(truncatingIfNeeded: rounded(src[j]).bitPattern >> 16) }
            }
        }
    }

    /// Rounds a rows x cols block stored with leading dimension `ld` into `out` with leading dimension `ldOut`
    /// (default: contiguous; `out` may be `a` itself, to round in place), on all threads when `parallel`.
    public static func round(_ a: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<Float>,
                             ldOut: Int? = nil, parallel: Bool = false) {
        if parallel {
            Parallel.chunks(rows, costPerItem: cols) { _, r in
                round(a + r.lowerBound * ld, rows: r.count, cols: cols, ld: ld, into: out + r.lowerBound * (ldOut ?? cols), ldOut: ldOut)
            }
            return
        }
        let ldOut = ldOut ?? cols
        for r in 0..<rows {
            let src = UnsafeRawPointer(a + r * ld).assumingMemoryBound(to: UInt32.self)
            let dst = UnsafeMutableRawPointer(out + r * ldOut).assumingMemoryBound(to: UInt32.self)
            var j = 0
            while j + 8 <= cols {
                let v = UnsafeRawPointer(src + j).loadUnaligned(as: SIMD8<UInt32>.self)
                // NaN (exponent all ones, mantissa non-zero) would round into infinity: keep it as it is.
                let isNaN = (v & 0x7FFF_FFFF) .> 0x7F80_0000
                let roundedBits = (v &+ 0x7FFF &+ ((v &>> 16) & 1)) & 0xFFFF_0000
                UnsafeMutableRawPointer(dst + j).storeBytes(of: roundedBits.replacing(with: v, where: isNaN), as: SIMD8<UInt32>.self)
                j += 8
            }
            while j < cols { dst[j] = rounded(Float(bitPattern: src[j])).bitPattern; j += 1 }
        }
    }
}
