import Foundation

/// A 64-byte aligned, zero-initialised Float32 allocation that lives as long as its owner.
/// Every large array in gpt2-dist (parameters, gradients, activations, optimizer state) is one of these,
/// made once and reused, so a steady-state training step allocates nothing.
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        precondition(count >= 0, "negative buffer size")
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("out of memory allocating \(bytes) bytes")
        }
        memset(raw, 0, bytes)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
    }

    deinit { free(pointer) }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }
    public func zero() { memset(pointer, 0, count * MemoryLayout<Float>.stride) }
    public func copy(from other: FloatBuffer) {
        precondition(other.count == count, "buffer size mismatch")
        memcpy(pointer, other.pointer, count * MemoryLayout<Float>.stride)
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
