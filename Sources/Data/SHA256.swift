import CSHA256
import Common
import Foundation

/// SHA-256 (FIPS 180-4), streaming: the shard hashes of a dataset manifest, the same digests `sha256sum`
/// prints. Written here rather than pulling a crypto package into the build for one function; blocks go through
/// the CPU's SHA extensions when it has them (about 10x the portable rate).
public struct SHA256 {
    static let hardware = gpt2dist_sha256_hardware_available() == 1

    private var state: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
        (0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)
    private var pending = [UInt8](repeating: 0, count: 64)
    private var pendingCount = 0
    private var length: UInt64 = 0

    private var portable = false

    public init() {}

    /// Without the SHA extensions even where the CPU has them (to compare both paths).
    init(portable: Bool) { self.portable = portable }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        var n = bytes.count
        length &+= UInt64(n)
        if pendingCount > 0 {
            let take = min(64 - pendingCount, n)
            for i in 0..<take { pending[pendingCount + i] = p[i] }
            pendingCount += take; p += take; n -= take
            guard pendingCount == 64 else { return }
            pending.withUnsafeBufferPointer { compress($0.baseAddress!, blocks: 1) }
            pendingCount = 0
        }
        let blocks = n / 64
        if blocks > 0 { compress(p, blocks: blocks) }
        p += blocks * 64; n -= blocks * 64
        for i in 0..<n { pending[i] = p[i] }
        pendingCount = n
    }

    public mutating func update(_ data: Data) { data.withUnsafeBytes { update($0) } }

    /// The digest as 64 lowercase hex characters.
    public mutating func finalizeHex() -> String {
        let bits = length &* 8
        var tail: [UInt8] = [0x80] + [UInt8](repeating: 0, count: (119 - pendingCount) % 64)
        for k in (0..<8).reversed() { tail.append(UInt8(truncatingIfNeeded: bits >> (UInt64(k) * 8))) }
        tail.withUnsafeBytes { update($0) }
        let words = [state.0, state.1, state.2, state.3, state.4, state.5, state.6, state.7]
        return words.map { String(format: "%08x", $0) }.joined()
    }

    public static func hex(_ data: Data) -> String {
        var h = SHA256(); h.update(data); return h.finalizeHex()
    }

    /// The digest of a file, read in 4 MB pieces.
    public static func hex(ofFile path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw GPT2DistError(.data, "cannot read \(path)") }
        defer { try? handle.close() }
        var h = SHA256()
        while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty { h.update(chunk) }
        return h.finalizeHex()
    }


    @inline(__always) private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

    private mutating func compress(_ p: UnsafePointer<UInt8>, blocks: Int) {
        if Self.hardware && !portable {
            withUnsafeMutableBytes(of: &state) { gpt2dist_sha256_hardware_blocks($0.baseAddress!.assumingMemoryBound(to: UInt32.self), p, blocks) }
            return
        }
        compressPortable(p, blocks: blocks)
    }

    private mutating func compressPortable(_ p: UnsafePointer<UInt8>, blocks: Int) {
        var (h0, h1, h2, h3, h4, h5, h6, h7) = state
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
            withUnsafePointer(to: gpt2dist_sha256_round_constants) { table in
                let k = UnsafeRawPointer(table).assumingMemoryBound(to: UInt32.self)
                for b in 0..<blocks {
                    let q = p + b * 64
                    for i in 0..<16 {
                        w[i] = UInt32(q[4 * i]) << 24 | UInt32(q[4 * i + 1]) << 16 | UInt32(q[4 * i + 2]) << 8 | UInt32(q[4 * i + 3])
                    }
                    for i in 16..<64 {
                        let s0 = Self.rotr(w[i - 15], 7) ^ Self.rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                        let s1 = Self.rotr(w[i - 2], 17) ^ Self.rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                        w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
                    }
                    var a = h0, bb = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7
                    for i in 0..<64 {
                        let s1 = Self.rotr(e, 6) ^ Self.rotr(e, 11) ^ Self.rotr(e, 25)
                        let ch = (e & f) ^ (~e & g)
                        let t1 = h &+ s1 &+ ch &+ k[i] &+ w[i]
                        let s0 = Self.rotr(a, 2) ^ Self.rotr(a, 13) ^ Self.rotr(a, 22)
                        let maj = (a & bb) ^ (a & c) ^ (bb & c)
                        let t2 = s0 &+ maj
                        h = g; g = f; f = e; e = d &+ t1; d = c; c = bb; bb = a; a = t1 &+ t2
                    }
                    h0 &+= a; h1 &+= bb; h2 &+= c; h3 &+= d; h4 &+= e; h5 &+= f; h6 &+= g; h7 &+= h
                }
            }
        }
        state = (h0, h1, h2, h3, h4, h5, h6, h7)
    }
}
