import Foundation

/// A 64-byte aligned, zero-initialised Float32 allocation that lives as long as its owner.
/// Every large array in gpt2-dist (parameters, gradients, activations, optimizer state) is one of these,
/// made once and reused, so a steady-state training step allocates nothing.
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    private let mapped: Int  // bytes mapped with mmap (0: heap allocation)

    /// Buffers made so far by the calling thread (tests check that a steady-state step makes none).
    public static var allocationsOnThisThread: Int {
        (Thread.current.threadDictionary["gpt2dist.floatBuffers"] as? Int) ?? 0
    }

    /// Large buffers come zeroed and page-aligned from anonymous mmap, so memory is only committed as pages
    /// are touched (a graph can be built just to count its bytes); small ones from the heap, 64-byte aligned.
    /// What happens when memory runs out: by default one line naming the size and exit 1 (a crash report would
    /// say less). Commands never see a partial buffer.
    nonisolated(unsafe) public static var outOfMemory: (_ bytes: Int) -> Never = { bytes in
        let gib = String(format: "%.2f GiB", Double(bytes) / 1_073_741_824)
        FileHandle.standardError.write(Data(("gpt2-dist: error: out of memory: cannot allocate \(bytes) bytes (\(gib)); "
            + "`gpt2-dist info` shows what a model, batch and rank count need per rank\n").utf8))
        exit(1)
    }

    public init(count: Int) {
        precondition(count >= 0, "negative buffer size")
        let (bytes, overflow) = max(count, 1).multipliedReportingOverflow(by: MemoryLayout<Float>.stride)
        if overflow { Self.outOfMemory(Int.max) }
        Thread.current.threadDictionary["gpt2dist.floatBuffers"] = Self.allocationsOnThisThread + 1
        if bytes >= 1 << 20 {
            guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  raw != MAP_FAILED else {
                Self.outOfMemory(bytes)
            }
            pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
            mapped = bytes
        } else {
            var raw: UnsafeMutableRawPointer?
            guard posix_memalign(&raw, 64, bytes) == 0, let raw else { Self.outOfMemory(bytes) }
            memset(raw, 0, bytes)
            pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
            mapped = 0
        }
        self.count = count
    }

    deinit {
        if mapped > 0 { munmap(pointer, mapped) } else { free(pointer) }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }
    public func zero() { memset(pointer, 0, count * MemoryLayout<Float>.stride) }
    /// Copies the first `other.count` values (buffers may differ only in trailing padding).
    public func copy(from other: FloatBuffer) {
        precondition(other.count <= count, "buffer size mismatch")
        memcpy(pointer, other.pointer, other.count * MemoryLayout<Float>.stride)
    }
}

/// Int32 token ids (inputs and targets) for one micro-batch.
public final class TokenBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Int32>
    public let count: Int
    public init(count: Int) {
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
        self.count = count
    }
    deinit { pointer.deallocate() }
}
