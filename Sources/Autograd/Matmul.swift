import CBF16
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

    private static let chosen: Result<(engine: BF16Engine, detail: String), Error> = Result {
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
        guard let probe = gd_matmul_create(0, 0, 64, 64, 64, 64, 64, 64, 1, 0, &impl, impl.count, &error, error.count) else {
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

/// One matrix operand of a product, as stored (row-major, leading dimension `ld`):
/// - `fp32`: fp32 values; a bf16 product rounds them to bf16 first (round to nearest even).
/// - `rounded`: fp32 storage of values already on the bf16 grid (rounded by their producer): the emulated engine
///   multiplies them as they are.
/// - `bf16`: bf16 bits (the parameters' bf16 copy, or an operand `Matmul.prepare`d once for several products): the
///   native engine multiplies them as they are.
public struct Operand {
    public enum Storage { case fp32(UnsafePointer<Float>), rounded(UnsafePointer<Float>), bf16(UnsafePointer<UInt16>) }
    public let storage: Storage, ld: Int

    public static func fp32(_ p: UnsafePointer<Float>, ld: Int) -> Operand { Operand(storage: .fp32(p), ld: ld) }
    public static func rounded(_ p: UnsafePointer<Float>, ld: Int) -> Operand { Operand(storage: .rounded(p), ld: ld) }
    public static func bf16(_ p: UnsafePointer<UInt16>, ld: Int) -> Operand { Operand(storage: .bf16(p), ld: ld) }
}

/// The GEMMs of one tape, at its precision. fp32: OpenBLAS sgemm on the operands as they are. bf16: bf16 x bf16 ->
/// fp32 by one of two engines (`BF16Engine`), the same numbers up to summation order: the native engine converts fp32
/// operands to bf16 and runs oneDNN; the emulated engine rounds fp32 operands (or widens bf16 ones) into fp32 scratch
/// and runs sgemm, exact since a product of two bf16 values is exact in fp32.
///
/// Scratch for converted operands is reserved when the tape is built (`reserve`), so a steady-state step allocates
/// nothing. An operand used by several products is converted once into a slot (`prepare`). Callers that multiply on
/// several threads at once (attention) round their operands themselves and pass them `.rounded`.
public final class Matmul: @unchecked Sendable {
    public let precision: MatmulPrecision
    /// bf16 only: how products on the calling thread are computed (products on workers' threads, attention's, multiply
    /// pre-rounded operands through sgemm: oneDNN runs one product at a time across all threads).
    public let engine: BF16Engine
    private var scratch: [UnsafeMutablePointer<Float>] = []
    private var capacity = 0
    /// Native engine: the operands converted to bf16, and one primitive per shape (built once, reused every step).
    private var halfA: UnsafeMutablePointer<UInt16>?, halfB: UnsafeMutablePointer<UInt16>?
    private var primitives: [Shape: OpaquePointer] = [:]
    struct Shape: Hashable { let ta: Bool, tb: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int, alpha: Float, beta: Float }
    /// Slots for operands prepared once and used by several products (`prepare`).
    private var slots: [UnsafeMutableRawPointer] = []
    private var slotBytes = 0

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
        for s in slots { s.deallocate() }
        halfA?.deallocate(); halfB?.deallocate()
        for p in primitives.values { gd_matmul_destroy(p) }
    }

    /// Bytes of scratch held for converted operands.
    public var scratchBytes: Int {
        scratch.count * capacity * 4 + (halfA != nil ? 2 * capacity * 2 : 0) + slots.count * slotBytes
    }

    /// Bytes per element of a converted operand: bf16 bits (native) or rounded fp32 (emulated).
    var preparedElementBytes: Int { engine == .native ? 2 : 4 }

    /// Makes room for operands of `floats` elements each (A and B of one product), and (`slots`) for that many operands
    /// of `floats` elements prepared at once. Only bf16 needs it; call while building the tape.
    public func reserve(floats: Int, slots slotCount: Int = 0) {
        guard precision == .bf16 else { return }
        if floats > capacity {
            for s in scratch { s.deallocate() }
            capacity = floats
            // The native engine converts into halfA and halfB instead.
            scratch = engine == .native ? [] : (0..<2).map { _ in .allocate(capacity: max(capacity, 1)) }
            if engine == .native {
                halfA?.deallocate(); halfB?.deallocate()
                halfA = .allocate(capacity: max(capacity, 1)); halfB = .allocate(capacity: max(capacity, 1))
            }
        }
        let bytes = floats * preparedElementBytes
        if slotCount > 0 && (bytes > slotBytes || slotCount > slots.count) {
            for s in slots { s.deallocate() }
            slotBytes = max(slotBytes, bytes)
            slots = (0..<max(slotCount, slots.count)).map { _ in .allocate(byteCount: max(slotBytes, 64), alignment: 64) }
        }
    }

    /// The rows x cols block at `p` (leading dimension `ld`) converted once into slot `slot` (see `reserve`), for
    /// several products: bf16 bits (native) or rounded fp32 (emulated), on all threads. fp32 products get `p` itself.
    public func prepare(_ p: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, slot: Int) -> Operand {
        guard precision == .bf16 else { return .fp32(p, ld: ld) }
        precondition(slot < slots.count && rows * cols * preparedElementBytes <= slotBytes,
                     "Matmul.reserve was not given a slot for \(rows)x\(cols)")
        if engine == .native {
            let out = slots[slot].assumingMemoryBound(to: UInt16.self)
            BF16.convert(p, rows: rows, cols: cols, ld: ld, into: out)
            return .bf16(out, ld: cols)
        }
        let out = slots[slot].assumingMemoryBound(to: Float.self)
        BF16.round(p, rows: rows, cols: cols, ld: ld, into: out, parallel: true)
        return .rounded(out, ld: cols)
    }

    /// A parameter matrix as an operand: its bf16 copy for bf16 products where the parameters keep one, else fp32.
    public func weight(_ t: Tensor, offset: Int = 0, ld: Int) -> Operand {
        if precision == .bf16, let h = t.half { return .bf16(h + offset, ld: ld) }
        return .fp32(t.data + offset, ld: ld)
    }

    /// An operand the caller has rounded to bf16 in place (`BF16.round`) where bf16 products are wanted, else fp32.
    public func roundedOrFP32(_ p: UnsafePointer<Float>, ld: Int) -> Operand {
        precision == .bf16 ? .rounded(p, ld: ld) : .fp32(p, ld: ld)
    }

    /// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C for fp32 pointers, as `BLAS.gemm`.
    @inline(__always)
    public func gemm(_ ta: BLAS.Transpose, _ tb: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: .fp32(a, ld: lda), b: .fp32(b, ld: ldb), beta: beta, c: c, ldc: ldc)
    }

    /// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, at this tape's precision. `onWorker`: the caller
    /// is one of several threads multiplying at once; the product runs on its thread alone, and in bf16 both operands
    /// must be `.rounded` (there is no per-thread scratch).
    public func gemm(_ ta: BLAS.Transpose, _ tb: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                     a: Operand, b: Operand, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, onWorker: Bool = false) {
        // The stored matrices: A is M x K (or K x M transposed), B is K x N (or N x K).
        let (aRows, aCols) = ta == .none ? (m, k) : (k, m)
        let (bRows, bCols) = tb == .none ? (k, n) : (n, k)
        if precision == .fp32 {
            guard case .fp32(let pa) = a.storage, case .fp32(let pb) = b.storage else {
                preconditionFailure("fp32 products take fp32 operands")
            }
            BLAS.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: pa, lda: a.ld, b: pb, ldb: b.ld, beta: beta, c: c, ldc: ldc)
            return
        }
        if engine == .native && !onWorker {
            let (ha, lda) = half(a, rows: aRows, cols: aCols, into: halfA)
            let (hb, ldb) = half(b, rows: bRows, cols: bCols, into: halfB)
            let shape = Shape(ta: ta == .transpose, tb: tb == .transpose, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc,
                              alpha: alpha, beta: beta)
            guard gd_matmul_run(primitive(shape), ha, hb, c) == 0 else { fatalError("oneDNN matmul \(shape) failed") }
            return
        }
        precondition(!onWorker || (isRounded(a) && isRounded(b)), "bf16 products on worker threads take rounded operands")
        let (ra, lda) = rounded(a, rows: aRows, cols: aCols, into: 0)
        let (rb, ldb) = rounded(b, rows: bRows, cols: bCols, into: 1)
        BLAS.gemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: ra, lda: lda, b: rb, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    private func isRounded(_ x: Operand) -> Bool { if case .rounded = x.storage { return true } else { return false } }

    /// The operand as bf16 bits (native engine): bf16 ones as they are, fp32 ones converted into `scratch`.
    private func half(_ x: Operand, rows: Int, cols: Int, into scratch: UnsafeMutablePointer<UInt16>?) -> (UnsafePointer<UInt16>, Int) {
        switch x.storage {
        case .bf16(let p): return (p, x.ld)
        case .fp32(let p), .rounded(let p):
            precondition(rows * cols <= capacity, "Matmul.reserve was not given room for a \(rows)x\(cols) operand")
            BF16.convert(p, rows: rows, cols: cols, ld: x.ld, into: scratch!)
            return (UnsafePointer(scratch!), cols)
        }
    }

    /// The operand as fp32 values on the bf16 grid (emulated engine): rounded ones as they are, fp32 ones rounded and
    /// bf16 ones widened into scratch `index`.
    private func rounded(_ x: Operand, rows: Int, cols: Int, into index: Int) -> (UnsafePointer<Float>, Int) {
        switch x.storage {
        case .rounded(let p): return (p, x.ld)
        case .fp32(let p):
            precondition(rows * cols <= capacity, "Matmul.reserve was not given room for a \(rows)x\(cols) operand")
            BF16.round(p, rows: rows, cols: cols, ld: x.ld, into: scratch[index], parallel: true)
        case .bf16(let p):
            precondition(rows * cols <= capacity, "Matmul.reserve was not given room for a \(rows)x\(cols) operand")
            BF16.widen(p, rows: rows, cols: cols, ld: x.ld, into: scratch[index], parallel: true)
        }
        return (UnsafePointer(scratch[index]), cols)
    }
}

extension Matmul {
    /// The primitive of a shape, made the first time the shape is multiplied.
    func primitive(_ s: Shape) -> OpaquePointer {
        if let p = primitives[s] { return p }
        var error = [CChar](repeating: 0, count: 512), impl = [CChar](repeating: 0, count: 128)
        guard let p = gd_matmul_create(s.ta ? 1 : 0, s.tb ? 1 : 0, Int64(s.m), Int64(s.n), Int64(s.k), Int64(s.lda), Int64(s.ldb),
                                       Int64(s.ldc), s.alpha, s.beta, &impl, impl.count, &error, error.count) else {
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

    /// Converts a rows x cols block stored with leading dimension `ld` to contiguous bf16 bits (nearest even, NaN kept),
    /// on all threads.
    public static func convert(_ a: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<UInt16>) {
        Parallel.chunks(rows, costPerItem: cols) { _, r in
            for row in r { gd_bf16_convert(a + row * ld, out + row * cols, cols) }
        }
    }

    /// Converts `count` contiguous values to bf16 bits, on all threads when `parallel`.
    public static func convert(_ a: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<UInt16>, parallel: Bool) {
        guard parallel else { return gd_bf16_convert(a, out, count) }
        Parallel.chunks(count) { _, r in gd_bf16_convert(a + r.lowerBound, out + r.lowerBound, r.count) }
    }

    /// bf16 bits (rows x cols, leading dimension `ld`) as fp32 values into contiguous `out` (exact), on all threads
    /// when `parallel`.
    public static func widen(_ a: UnsafePointer<UInt16>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<Float>,
                             parallel: Bool = false) {
        if !parallel {
            for row in 0..<rows { gd_bf16_widen(a + row * ld, out + row * cols, cols) }
            return
        }
        Parallel.chunks(rows, costPerItem: cols) { _, r in
            for row in r { gd_bf16_widen(a + row * ld, out + row * cols, cols) }
        }
    }

    /// Rounds a rows x cols block stored with leading dimension `ld` into `out` with leading dimension `ldOut`
    /// (default: contiguous; `out` may be `a` itself, to round in place), on all threads when `parallel`.
    public static func round(_ a: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<Float>,
                             ldOut: Int? = nil, parallel: Bool = false) {
        let ldOut = ldOut ?? cols
        if !parallel {
            for row in 0..<rows { gd_bf16_round(a + row * ld, out + row * ldOut, cols) }
            return
        }
        Parallel.chunks(rows, costPerItem: cols) { _, r in
            for row in r { gd_bf16_round(a + row * ld, out + row * ldOut, cols) }
        }
    }
}
