/// Vectorised exp and tanh for the softmax, cross-entropy and GELU kernels.
/// exp is Cephes' expf (range reduction by ln 2, degree-6 polynomial), ~1 ulp on [-87, 88];
/// rounding uses the 1.5·2^23 trick so it needs only SSE2.
public typealias Vec = SIMD8<Float>

@inline(__always)
public func vexp(_ input: Vec) -> Vec {
    let x0 = input.clamped(lowerBound: Vec(repeating: -87.33654), upperBound: Vec(repeating: 88.37626))
    let magic = Vec(repeating: 12_582_912.0)  // 1.5 * 2^23
    let t = x0 * Vec(repeating: 1.442_695_04) + magic
    let n = t - magic  // round(x * log2 e)
    var x = x0 - n * Vec(repeating: 0.693_359_375)
    x = x - n * Vec(repeating: -2.121_944_4e-4)
    let z = x * x
    var p = Vec(repeating: 1.987_569_15e-4)
    p = p * x + Vec(repeating: 1.398_199_95e-3)
    p = p * x + Vec(repeating: 8.333_451_9e-3)
    p = p * x + Vec(repeating: 4.166_579_59e-2)
    p = p * x + Vec(repeating: 1.666_666_55e-1)
    p = p * x + Vec(repeating: 5.000_000_12e-1)
    p = p * z + x + Vec(repeating: 1)
    // 2^n from the integer sitting in t's low mantissa bits.
    let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
    let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Vec.self)
    return p * scale
}

@inline(__always)
public func vtanh(_ x: Vec) -> Vec {
    // tanh(x) = 1 - 2 / (exp(2x) + 1); exact enough in float for |x| small too (error ~1e-7 absolute).
    let e = vexp(x + x)
    return Vec(repeating: 1) - Vec(repeating: 2) / (e + Vec(repeating: 1))
}

@inline(__always)
public func sexp(_ x: Float) -> Float { vexp(Vec(repeating: x))[0] }

@inline(__always)
func load(_ p: UnsafePointer<Float>) -> Vec {
    UnsafeRawPointer(p).loadUnaligned(as: Vec.self)
}

@inline(__always)
func store(_ v: Vec, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec.self)
}
