import Foundation

/// Character classes of the GPT-2 pre-tokenization pattern.
@usableFromInline enum CharClass {
    static let other: UInt8 = 0  // [^\s\p{L}\p{N}]
    static let letter: UInt8 = 1  // \p{L}
    static let number: UInt8 = 2  // \p{N}
    static let space: UInt8 = 3  // \s (Unicode White_Space)
}

/// Class of any scalar value, from `unicodeClassRuns` (tiktoken's classes, independent of the Swift runtime's Unicode
/// version). Binary search over the runs; the hot path uses `bmpClassTable` for the BMP.
func tableClass(_ value: UInt32) -> UInt8 {
    unicodeClassRuns.withUnsafeBufferPointer { runs in
        // last run whose start <= value
        var lo = 0
        var hi = runs.count
        while hi - lo > 1 {
            let mid = (lo + hi) >> 1
            if runs[mid] >> 2 <= value { lo = mid } else { hi = mid }
        }
        return UInt8(truncatingIfNeeded: runs[lo] & 3)
    }
}

/// Class of a scalar (as the GPT-2 pattern in tiktoken sees it).
func classify(_ scalar: Unicode.Scalar) -> UInt8 { tableClass(scalar.value) }

/// Class of a scalar above the BMP.
@inline(never)
func astralClass(_ value: Int) -> UInt8 { tableClass(UInt32(truncatingIfNeeded: value)) }

/// Classes of all BMP scalars (surrogate code points: other), built once per process.
let bmpClassTable: [UInt8] = {
    var t = [UInt8](repeating: CharClass.other, count: 0x10000)
    let runs = unicodeClassRuns
    for (k, r) in runs.enumerated() {
        let start = Int(r >> 2)
        if start >= 0x10000 { break }
        let end = k + 1 < runs.count ? min(Int(runs[k + 1] >> 2), 0x10000) : 0x10000
        for v in start..<end { t[v] = UInt8(r & 3) }
    }
    return t
}()

/// Immutable lookup tables of the GPT-2 vocabulary, in manually allocated memory so the hot loops use raw pointers.
final class VocabStorage: @unchecked Sendable {
    static let none = UInt32.max

    let count: Int  // ordinary tokens (50256)
    let bytes: UnsafeMutablePointer<UInt8>  // concatenated token bytes, in rank order
    let offsets: UnsafeMutablePointer<Int32>  // count + 1 offsets into `bytes`
    let byteRank: UnsafeMutablePointer<UInt32>  // rank of each single byte
    let bytePairRank: UnsafeMutablePointer<UInt32>  // [b0 << 8 | b1] -> rank of the two-byte token, or none
    // Whole-token lookup: open addressing, slot = (high 32 bits of hash) << 32 | rank, empty = UInt64.max.
    let seqSlots: UnsafeMutablePointer<UInt32>  // hash tag (16 bits) << 16 | rank; 4 bytes a slot keeps the table in L2
    let seqMask: Int
    // Pair table: (rankA << 16 | rankB) -> rank of the token whose bytes are bytes(A) + bytes(B).
    let pairKeys: UnsafeMutablePointer<UInt32>
    let pairValues: UnsafeMutablePointer<UInt32>
    let pairMask: Int
    let pairShift: UInt64
    let classes: UnsafeMutablePointer<UInt8>  // BMP class table (65536)

    init(tokens: [[UInt8]], path: String) throws {
        let n = tokens.count
        guard n > 256, n < 0xFFFF else {
            throw TokenizerError.invalidVocabulary(path: path, reason: "unsupported vocabulary size \(n)")
        }
        count = n
        (bytes, offsets) = Self.pack(tokens)
        (seqSlots, seqMask, byteRank, bytePairRank) = try Self.indexWholeTokens(n, bytes, offsets, path: path)
        (pairKeys, pairValues, pairMask, pairShift) = Self.indexPairs(n, bytes, offsets, seqSlots, seqMask)
        let classTable = UnsafeMutablePointer<UInt8>.allocate(capacity: 0x10000)
        bmpClassTable.withUnsafeBufferPointer { classTable.initialize(from: $0.baseAddress!, count: 0x10000) }
        classes = classTable
    }

    /// The tokens' bytes back to back in rank order, and the offset where each starts (plus the end).
    static func pack(_ tokens: [[UInt8]]) -> (UnsafeMutablePointer<UInt8>, UnsafeMutablePointer<Int32>) {
        let total = tokens.reduce(0) { $0 + $1.count }
        let bytes = UnsafeMutablePointer<UInt8>.allocate(capacity: max(total, 1))
        let offsets = UnsafeMutablePointer<Int32>.allocate(capacity: tokens.count + 1)
        var off = 0
        for (r, t) in tokens.enumerated() {
            offsets[r] = Int32(off)
            for (k, b) in t.enumerated() { bytes[off + k] = b }
            off += t.count
        }
        offsets[tokens.count] = Int32(off)
        return (bytes, offsets)
    }

    /// The whole-token hash table (load factor < 0.4; slots hold 16-bit ranks, GPT-2 has 50,257 tokens) and the
    /// ranks of single bytes and byte pairs. Every byte needs a token, and no two tokens may share their bytes.
    static func indexWholeTokens(_ n: Int, _ bytes: UnsafeMutablePointer<UInt8>, _ offsets: UnsafeMutablePointer<Int32>,
                                 path: String) throws
        -> (UnsafeMutablePointer<UInt32>, Int, UnsafeMutablePointer<UInt32>, UnsafeMutablePointer<UInt32>) {
        var seqCap = 1
        while seqCap < n * 5 / 2 { seqCap <<= 1 }
        let seqMask = seqCap - 1
        let seqSlots = UnsafeMutablePointer<UInt32>.allocate(capacity: seqCap)
        seqSlots.initialize(repeating: UInt32.max, count: seqCap)
        let byteRank = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
        byteRank.initialize(repeating: VocabStorage.none, count: 256)
        let bytePairRank = UnsafeMutablePointer<UInt32>.allocate(capacity: 65536)
        bytePairRank.initialize(repeating: VocabStorage.none, count: 65536)
        for r in 0..<n {
            let o = Int(offsets[r])
            let len = Int(offsets[r + 1]) - o
            if len == 1 { byteRank[Int(bytes[o])] = UInt32(r) }
            if len == 2 { bytePairRank[Int(bytes[o]) << 8 | Int(bytes[o + 1])] = UInt32(r) }
            let p = UnsafePointer(bytes + o)
            if let other = find(p, len, hashBytes(p, len), bytes, offsets, seqSlots, seqMask) {
                let hex = (0..<len).map { String(format: "%02x", p[$0]) }.joined()
                throw TokenizerError.invalidVocabulary(path: path, reason: "ranks \(other) and \(r) have the same bytes (hex \(hex))")
            }
            let h = hashBytes(p, len)
            var slot = Int(truncatingIfNeeded: h) & seqMask
            while seqSlots[slot] != UInt32.max { slot = (slot + 1) & seqMask }
            seqSlots[slot] = UInt32(truncatingIfNeeded: h >> 48) << 16 | UInt32(r)
        }
        for b in 0..<256 where byteRank[b] == VocabStorage.none {
            throw TokenizerError.invalidVocabulary(path: path, reason: "no token for the single byte 0x\(String(b, radix: 16))")
        }
        return (seqSlots, seqMask, byteRank, bytePairRank)
    }

    /// Every split of every token into two tokens: (rank(left), rank(right)) -> rank(token). BPE then looks up the
    /// concatenation of two adjacent parts by their ranks, which is the same as tiktoken's lookup by bytes.
    static func indexPairs(_ n: Int, _ bytes: UnsafeMutablePointer<UInt8>, _ offsets: UnsafeMutablePointer<Int32>,
                           _ seqSlots: UnsafeMutablePointer<UInt32>, _ seqMask: Int)
        -> (UnsafeMutablePointer<UInt32>, UnsafeMutablePointer<UInt32>, Int, UInt64) {
        var pairs: [(UInt32, UInt32)] = []  // (key, merged)
        for r in 0..<n {
            let o = Int(offsets[r])
            let len = Int(offsets[r + 1]) - o
            guard len >= 2 else { continue }
            let p = UnsafePointer(bytes + o)
            for k in 1..<len {
                guard let a = find(p, k, hashBytes(p, k), bytes, offsets, seqSlots, seqMask),
                    let b = find(p + k, len - k, hashBytes(p + k, len - k), bytes, offsets, seqSlots, seqMask)
                else { continue }
                pairs.append((UInt32(a) << 16 | UInt32(b), UInt32(r)))
            }
        }
        var pairCap = 1
        var bits: UInt64 = 0
        while pairCap < pairs.count * 2 {
            pairCap <<= 1
            bits += 1
        }
        let pairMask = pairCap - 1, pairShift = 64 - bits
        let pairKeys = UnsafeMutablePointer<UInt32>.allocate(capacity: pairCap)
        pairKeys.initialize(repeating: UInt32.max, count: pairCap)
        let pairValues = UnsafeMutablePointer<UInt32>.allocate(capacity: pairCap)
        pairValues.initialize(repeating: VocabStorage.none, count: pairCap)
        for (key, merged) in pairs {
            var slot = Int(truncatingIfNeeded: (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> pairShift)
            while pairKeys[slot] != UInt32.max && pairKeys[slot] != key { slot = (slot + 1) & pairMask }
            pairKeys[slot] = key
            pairValues[slot] = merged
        }
        return (pairKeys, pairValues, pairMask, pairShift)
    }

    @inline(__always)
    static func find(
        _ p: UnsafePointer<UInt8>, _ n: Int, _ h: UInt64, _ bytes: UnsafeMutablePointer<UInt8>,
        _ offsets: UnsafeMutablePointer<Int32>, _ seqSlots: UnsafeMutablePointer<UInt32>, _ seqMask: Int
    ) -> Int? {
        let tag = UInt32(truncatingIfNeeded: h >> 48)
        var slot = Int(truncatingIfNeeded: h) & seqMask
        while true {
            let s = seqSlots[slot]
            if s == UInt32.max { return nil }
            if s >> 16 == tag {
                let r = Int(s & 0xFFFF)
                let o = Int(offsets[r])
                if Int(offsets[r + 1]) - o == n && bytesEqual(bytes + o, p, n) { return r }
            }
            slot = (slot &+ 1) & seqMask
        }
    }

    deinit {
        bytes.deallocate()
        offsets.deallocate()
        byteRank.deallocate()
        bytePairRank.deallocate()
        seqSlots.deallocate()
        pairKeys.deallocate()
        pairValues.deallocate()
        classes.deallocate()
    }

    /// Rank of the token with exactly these bytes.
    @inline(__always)
    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int? {
        VocabStorage.find(p, n, hashBytes(p, n), bytes, offsets, seqSlots, seqMask)
    }

    @inline(__always)
    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int, hash: UInt64) -> Int? {
        VocabStorage.find(p, n, hash, bytes, offsets, seqSlots, seqMask)
    }

    /// Rank of the token bytes(a) + bytes(b), or `none`.
    @inline(__always)
    func pairRank(_ a: UInt32, _ b: UInt32) -> UInt32 {
        let key = a << 16 | b
        var slot = Int(truncatingIfNeeded: (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> pairShift)
        while true {
            let k = pairKeys[slot]
            if k == key { return pairValues[slot] }
            if k == UInt32.max { return VocabStorage.none }
            slot = (slot &+ 1) & pairMask
        }
    }
}

/// 64-bit hash of a byte string (word-at-a-time multiply-xorshift).
@inline(__always)
func hashBytes(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
    var h: UInt64 = UInt64(truncatingIfNeeded: n) &* 0x9E37_79B9_7F4A_7C15
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i &+ 8 <= n {
        h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
        h ^= h >> 29
        i &+= 8
    }
    if i < n {
        var w: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            w |= UInt64(p[i]) << shift
            shift &+= 8
            i &+= 1
        }
        h = (h ^ w) &* 0x94D0_49BB_1331_11EB
    }
    h ^= h >> 32
    h = h &* 0xD6E8_FEB8_6659_FD93
    h ^= h >> 29
    return h
}

/// Whether a[0..<n] == b[0..<n]: inline, 8 bytes at a time (pieces are short; a libc memcmp call per lookup
/// was 13% of encoding time).
@inline(__always)
func bytesEqual(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if UnsafeRawPointer(a + i).loadUnaligned(as: UInt64.self) != UnsafeRawPointer(b + i).loadUnaligned(as: UInt64.self) { return false }
        i += 8
    }
    while i < n {
        if a[i] != b[i] { return false }
        i += 1
    }
    return true
}
