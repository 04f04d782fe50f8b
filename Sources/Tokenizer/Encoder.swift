import Foundation

// The encoding engine: a hand-written scanner for GPT-2's pre-tokenization pattern
//
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// over the UTF-8 bytes of valid text, followed by tiktoken's byte-pair merge of each piece.

/// The special token's text, as bytes.
let endOfTextBytes: [UInt8] = Array("<|endoftext|>".utf8)

/// Per-call mutable state: BPE scratch buffers and a bounded cache of BPE results for repeated pieces.
/// Never shared between threads.
final class EncodeState {
    let vocab: VocabStorage

    // BPE scratch.
    var scratchCapacity = 0
    var tok: UnsafeMutablePointer<UInt32> = .allocate(capacity: 1)
    var pr: UnsafeMutablePointer<UInt32> = .allocate(capacity: 1)
    var next: UnsafeMutablePointer<Int32> = .allocate(capacity: 1)
    var prev: UnsafeMutablePointer<Int32> = .allocate(capacity: 1)
    var heap: UnsafeMutablePointer<UInt64> = .allocate(capacity: 1)

    // Cache: open addressing over `slots`; keys and values live in two arenas. Cleared when full.
    struct Slot {
        var hash: UInt64
        var keyOffset: Int32
        var keyLength: Int32  // 0 = empty slot
        var valueOffset: Int32
        var valueLength: Int32
    }
    static let maxCachedPieceLength = 128
    static let maxCacheSlots = 1 << 16  // at most half used: 32,768 entries
    var slots: UnsafeMutablePointer<Slot>? = nil
    var slotMask = 0
    var entries = 0
    var keys: UnsafeMutablePointer<UInt8> = .allocate(capacity: 1)
    var keysCount = 0
    var keysCapacity = 1
    var values: UnsafeMutablePointer<UInt32> = .allocate(capacity: 1)
    var valuesCount = 0
    var valuesCapacity = 1

    init(vocab: VocabStorage) {
        self.vocab = vocab
    }

    deinit {
        tok.deallocate()
        pr.deallocate()
        next.deallocate()
        prev.deallocate()
        heap.deallocate()
        slots?.deallocate()
        keys.deallocate()
        values.deallocate()
    }

    func reserveScratch(_ n: Int) {
        if n <= scratchCapacity { return }
        let cap = max(n, 64, scratchCapacity * 2)
        tok.deallocate()
        pr.deallocate()
        next.deallocate()
        prev.deallocate()
        heap.deallocate()
        tok = .allocate(capacity: cap)
        pr = .allocate(capacity: cap)
        next = .allocate(capacity: cap)
        prev = .allocate(capacity: cap)
        heap = .allocate(capacity: 3 * cap)
        scratchCapacity = cap
    }

    // MARK: cache

    @inline(__always)
    func cacheLookup(_ p: UnsafePointer<UInt8>, _ n: Int, _ h: UInt64, into out: UnsafeMutablePointer<Int32>) -> Int? {
        guard let slots = slots else { return nil }
        var i = Int(truncatingIfNeeded: h) & slotMask
        while true {
            let s = slots[i]
            if s.keyLength == 0 { return nil }
            if s.hash == h && Int(s.keyLength) == n && bytesEqual(keys + Int(s.keyOffset), p, n) {
                let v = values + Int(s.valueOffset)
                let m = Int(s.valueLength)
                for k in 0..<m { out[k] = Int32(bitPattern: v[k]) }
                return m
            }
            i = (i &+ 1) & slotMask
        }
    }

    /// Grows a manually managed array so that `extra` more elements fit after the `used` ones.
    private func reserve<T>(_ storage: inout UnsafeMutablePointer<T>, _ capacity: inout Int, used: Int, extra: Int) {
        guard used + extra > capacity else { return }
        let cap = max(capacity * 2, used + extra, 4096)
        let grown = UnsafeMutablePointer<T>.allocate(capacity: cap)
        grown.moveInitialize(from: storage, count: used)
        storage.deallocate()
        storage = grown
        capacity = cap
    }

    func cacheInsert(_ p: UnsafePointer<UInt8>, _ n: Int, _ h: UInt64, _ ids: UnsafePointer<UInt32>, _ m: Int) {
        if n > EncodeState.maxCachedPieceLength { return }
        if slots == nil || (entries + 1) * 2 > slotMask + 1 {
            let oldCapacity = slots == nil ? 0 : slotMask + 1
            if oldCapacity >= EncodeState.maxCacheSlots {
                // Full: start over (keeps memory bounded; repeated pieces are re-cached quickly).
                slots!.update(repeating: Slot(hash: 0, keyOffset: 0, keyLength: 0, valueOffset: 0, valueLength: 0),
                              count: oldCapacity)
                entries = 0
                keysCount = 0
                valuesCount = 0
            } else {
                let newCapacity = max(1024, oldCapacity * 2)
                let newSlots = UnsafeMutablePointer<Slot>.allocate(capacity: newCapacity)
                newSlots.initialize(repeating: Slot(hash: 0, keyOffset: 0, keyLength: 0, valueOffset: 0, valueLength: 0),
                                    count: newCapacity)
                let newMask = newCapacity - 1
                if let old = slots {
                    for k in 0..<oldCapacity where old[k].keyLength != 0 {
                        var i = Int(truncatingIfNeeded: old[k].hash) & newMask
                        while newSlots[i].keyLength != 0 { i = (i + 1) & newMask }
                        newSlots[i] = old[k]
                    }
                    old.deallocate()
                }
                slots = newSlots
                slotMask = newMask
            }
        }
        reserve(&keys, &keysCapacity, used: keysCount, extra: n)
        reserve(&values, &valuesCapacity, used: valuesCount, extra: m)
        (keys + keysCount).update(from: p, count: n)
        (values + valuesCount).update(from: ids, count: m)
        var i = Int(truncatingIfNeeded: h) & slotMask
        while slots![i].keyLength != 0 { i = (i &+ 1) & slotMask }
        slots![i] = Slot(hash: h, keyOffset: Int32(keysCount), keyLength: Int32(n),
                         valueOffset: Int32(valuesCount), valueLength: Int32(m))
        keysCount += n
        valuesCount += m
        entries += 1
    }

    // MARK: byte-pair merge

    /// tiktoken's `byte_pair_merge` on one piece (n >= 2 bytes): repeatedly merge the adjacent pair whose
    /// concatenation has the lowest rank, leftmost first. Leaves the resulting ranks in `tok[0..<result]`.
    @inline(__always)
    func bytePairMerge(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        reserveScratch(n)
        if n > 96 { return bytePairMergeLarge(p, n) }
        let v = vocab
        let tok = self.tok
        let pr = self.pr
        for i in 0..<n { tok[i] = v.byteRank[Int(p[i])] }
        for i in 0..<(n - 1) { pr[i] = v.bytePairRank[Int(p[i]) << 8 | Int(p[i + 1])] }
        var m = n
        while true {
            var best = VocabStorage.none
            var at = -1
            var i = 0
            while i < m - 1 {
                if pr[i] < best {
                    best = pr[i]
                    at = i
                }
                i += 1
            }
            if at < 0 { break }
            // Merge parts `at` and `at + 1`.
            tok[at] = best
            var k = at + 1
            while k < m - 1 {
                tok[k] = tok[k + 1]
                k += 1
            }
            k = at + 1
            while k < m - 2 {
                pr[k] = pr[k + 1]
                k += 1
            }
            m -= 1
            pr[at] = at + 1 < m ? v.pairRank(best, tok[at + 1]) : VocabStorage.none
            if at > 0 { pr[at - 1] = v.pairRank(tok[at - 1], best) }
        }
        return m
    }

    /// The same merge order with a binary heap of (rank, position) and a linked list: O(n log n) for long pieces.
    func bytePairMergeLarge(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        let v = vocab
        let tok = self.tok
        let pr = self.pr
        let next = self.next
        let prev = self.prev
        let heap = self.heap
        var heapCount = 0

        @inline(__always) func push(_ item: UInt64) {
            var i = heapCount
            heapCount += 1
            while i > 0 {
                let parent = (i - 1) >> 1
                if heap[parent] <= item { break }
                heap[i] = heap[parent]
                i = parent
            }
            heap[i] = item
        }
        @inline(__always) func pop() -> UInt64 {
            let top = heap[0]
            heapCount -= 1
            let last = heap[heapCount]
            var i = 0
            while true {
                var c = 2 * i + 1
                if c >= heapCount { break }
                if c + 1 < heapCount && heap[c + 1] < heap[c] { c += 1 }
                if last <= heap[c] { break }
                heap[i] = heap[c]
                i = c
            }
            heap[i] = last
            return top
        }

        for i in 0..<n {
            tok[i] = v.byteRank[Int(p[i])]
            next[i] = Int32(i + 1)
            prev[i] = Int32(i - 1)
        }
        next[n - 1] = -1
        for i in 0..<(n - 1) {
            pr[i] = v.bytePairRank[Int(p[i]) << 8 | Int(p[i + 1])]
            if pr[i] != VocabStorage.none { push(UInt64(pr[i]) << 32 | UInt64(i)) }
        }
        pr[n - 1] = VocabStorage.none
        // A part is alive while tok != none; merged-away parts get tok = none.
        while heapCount > 0 {
            let item = pop()
            let r = UInt32(truncatingIfNeeded: item >> 32)
            let i = Int(truncatingIfNeeded: item & 0xFFFF_FFFF)
            if tok[i] == VocabStorage.none || pr[i] != r { continue }  // stale entry
            let j = Int(next[i])
            tok[i] = r
            tok[j] = VocabStorage.none
            let after = Int(next[j])
            next[i] = Int32(after)
            if after >= 0 { prev[after] = Int32(i) }
            if after >= 0 {
                pr[i] = v.pairRank(r, tok[after])
                if pr[i] != VocabStorage.none { push(UInt64(pr[i]) << 32 | UInt64(i)) }
            } else {
                pr[i] = VocabStorage.none
            }
            let before = Int(prev[i])
            if before >= 0 {
                pr[before] = v.pairRank(tok[before], r)
                if pr[before] != VocabStorage.none { push(UInt64(pr[before]) << 32 | UInt64(before)) }
            }
        }
        var m = 0
        var i = 0
        while i >= 0 {
            tok[m] = tok[i]
            m += 1
            i = Int(next[i])
        }
        return m
    }

    // MARK: encoding

    /// Encodes `p[start..<end]` (valid UTF-8, no special-token handling) into `out`, returns the number of ids written.
    /// `out` must have room for `end - start` ids (every token has at least one byte).
    func encodeOrdinary(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, _ out: UnsafeMutablePointer<Int32>) -> Int {
        let v = vocab
        let classes = UnsafePointer(v.classes)
        var written = 0
        var i = start
        while i < end {
            let j = nextPieceEnd(p, i, end, classes)
            let n = j - i
            let piece = p + i
            i = j
            if n == 1 {
                out[written] = Int32(bitPattern: v.byteRank[Int(piece[0])])
                written += 1
                continue
            }
            let h = hashBytes(piece, n)
            if let r = v.lookup(piece, n, hash: h) {
                out[written] = Int32(truncatingIfNeeded: r)
                written += 1
                continue
            }
            if let m = cacheLookup(piece, n, h, into: out + written) {
                written += m
                continue
            }
            let m = bytePairMerge(piece, n)
            for k in 0..<m { out[written + k] = Int32(bitPattern: tok[k]) }
            written += m
            cacheInsert(piece, n, h, tok, m)
        }
        return written
    }

    /// Encodes `p[start..<end]`, splitting on `<|endoftext|>` first when `allowSpecial`.
    func encode(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, allowSpecial: Bool,
                _ out: UnsafeMutablePointer<Int32>) -> Int {
        if !allowSpecial { return encodeOrdinary(p, start, end, out) }
        var written = 0
        var segment = start
        while true {
            let s = findEndOfText(p, segment, end)
            written += encodeOrdinary(p, segment, s ?? end, out + written)
            guard let s else { break }
            out[written] = Int32(GPT2Tokenizer.endOfText)
            written += 1
            segment = s + endOfTextBytes.count
        }
        return written
    }
}

/// Position of the next "<|endoftext|>" in p[start..<end].
func findEndOfText(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int) -> Int? {
    let m = 13  // "<|endoftext|>".utf8.count
    return endOfTextBytes.withUnsafeBufferPointer { needle -> Int? in
        var i = start
        while i + m <= end {
            guard let hit = memchr(p + i, 0x3C, end - m + 1 - i) else { return nil }
            let k = UnsafePointer<UInt8>(hit.assumingMemoryBound(to: UInt8.self)) - p
            if memcmp(p + k, needle.baseAddress!, m) == 0 { return k }
            i = k + 1
        }
        return nil
    }
}

// MARK: pre-tokenizer

/// Class and UTF-8 length of the scalar starting at p[i] (valid UTF-8).
@inline(__always)
func scalarClass(_ p: UnsafePointer<UInt8>, _ i: Int, _ classes: UnsafePointer<UInt8>) -> (UInt8, Int) {
    let b0 = p[i]
    if b0 < 0x80 { return (classes[Int(b0)], 1) }
    if b0 < 0xE0 {
        return (classes[Int(b0 & 0x1F) << 6 | Int(p[i + 1] & 0x3F)], 2)
    }
    if b0 < 0xF0 {
        return (classes[Int(b0 & 0x0F) << 12 | Int(p[i + 1] & 0x3F) << 6 | Int(p[i + 2] & 0x3F)], 3)
    }
    let v = Int(b0 & 0x07) << 18 | Int(p[i + 1] & 0x3F) << 12 | Int(p[i + 2] & 0x3F) << 6 | Int(p[i + 3] & 0x3F)
    return (astralClass(v), 4)
}

/// End of the run of scalars of class `cls` starting at i.
@inline(__always)
func runEnd(_ p: UnsafePointer<UInt8>, _ i: Int, _ end: Int, _ cls: UInt8, _ classes: UnsafePointer<UInt8>) -> Int {
    var k = i
    while k < end {
        let b = p[k]
        if b < 0x80 {
            if classes[Int(b)] != cls { break }
            k += 1
        } else {
            let (c, l) = scalarClass(p, k, classes)
            if c != cls { break }
            k += l
        }
    }
    return k
}

/// End of the pre-token starting at `i` (< end): the leftmost-first match of the GPT-2 pattern at i, where `end`
/// is the end of the text (the `(?!\S)` lookahead sees the end there).
@inline(__always)
func nextPieceEnd(_ p: UnsafePointer<UInt8>, _ i: Int, _ end: Int, _ classes: UnsafePointer<UInt8>) -> Int {
    let b = p[i]
    // 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive)
    if b == 0x27 && i + 1 < end {
        let c = p[i + 1]
        if c == 0x73 || c == 0x74 || c == 0x6D || c == 0x64 { return i + 2 }  // s t m d
        if i + 2 < end {
            let d = p[i + 2]
            if (c == 0x72 && d == 0x65) || (c == 0x76 && d == 0x65) || (c == 0x6C && d == 0x6C) { return i + 3 }  // re ve ll
        }
    }
    //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+   with the optional ASCII space
    if b == 0x20 && i + 1 < end {
        let (c, l) = scalarClass(p, i + 1, classes)
        if c != CharClass.space { return runEnd(p, i + 1 + l, end, c, classes) }
    }
    let (c, l) = scalarClass(p, i, classes)
    if c != CharClass.space { return runEnd(p, i + l, end, c, classes) }
    // \s+(?!\S) | \s+ : a whitespace run that reaches the end is taken whole; one followed by a non-space gives up
    // its last scalar (which then starts the next piece) unless the run is a single scalar.
    var k = i + l
    var last = i
    while k < end {
        let (c2, l2) = scalarClass(p, k, classes)
        if c2 != CharClass.space { break }
        last = k
        k += l2
    }
    if k == end { return end }
    return last > i ? last : k
}
