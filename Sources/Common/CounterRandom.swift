/// Counter-based randomness: every random number is a pure function of its coordinates
/// (seed, stream, index), so initialisation and dropout masks do not depend on thread or rank count.
public enum CounterRandom {
    @inline(__always)
    public static func mix(_ x: UInt64) -> UInt64 {
        // splitmix64 finaliser
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A key for a stream of random numbers identified by several coordinates.
    @inline(__always)
    public static func key(_ parts: UInt64...) -> UInt64 {
        var h: UInt64 = 0x6A09_E667_F3BC_C908
        for p in parts { h = mix(h ^ mix(p)) }
        return h
    }

    /// Uniform in [0, 1) with 24 bits, the `index`-th number of stream `key`.
    @inline(__always)
    public static func uniform(_ key: UInt64, _ index: UInt64) -> Float {
        Float(mix(key ^ (index &* 0xD1B5_4A32_D192_ED03)) >> 40) * (1.0 / 16_777_216.0)
    }

    /// Standard normal, the `index`-th number of stream `key` (Box–Muller on two 32-bit halves).
    @inline(__always)
    public static func normal(_ key: UInt64, _ index: UInt64) -> Float {
        let bits = mix(key ^ (index &* 0xD1B5_4A32_D192_ED03))
        let u1 = (Double(bits >> 32) + 0.5) / 4_294_967_296.0
        let u2 = Double(bits & 0xFFFF_FFFF) / 4_294_967_296.0
        return Float((-2.0 * log(u1)).squareRoot() * cos(2.0 * Double.pi * u2))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
