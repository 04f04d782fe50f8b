/// A Float32 tensor: a row-major view of `shape` into memory owned by a `FloatBuffer`,
/// with an optional gradient view of the same shape. Views cost nothing to make or copy.
public struct Tensor: @unchecked Sendable {
    public let data: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>?
    /// A parameter's bf16 copy (see `Parameters.enableBF16Copy`), kept for bf16 products; nil elsewhere.
    public let half: UnsafeMutablePointer<UInt16>?
    public let shape: [Int]
    public let count: Int

    public init(data: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>?, half: UnsafeMutablePointer<UInt16>? = nil,
                shape: [Int]) {
        precondition(shape.allSatisfy { $0 > 0 }, "tensor dimensions must be positive: \(shape)")
        self.data = data
        self.grad = grad
        self.half = half
        self.shape = shape
        self.count = shape.reduce(1, *)
    }

    public var values: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public var gradients: UnsafeMutableBufferPointer<Float>? {
        grad.map { UnsafeMutableBufferPointer(start: $0, count: count) }
    }
    /// Number of rows when viewed as a matrix whose last dimension is the row width.
    public var rows: Int { count / shape[shape.count - 1] }
    public var lastDimension: Int { shape[shape.count - 1] }
}

/// Owns the activation tensors of one graph. Each activation has a value buffer and (if it needs one)
/// a gradient buffer; all are allocated when the graph is built and reused by every step.
public final class ActivationArena: @unchecked Sendable {
    private var buffers: [FloatBuffer] = []
    private var gradientsToZero: [FloatBuffer] = []
    public private(set) var bytes = 0

    public init() {}

    /// A new activation. `gradient: .accumulated` gets its own gradient buffer, zeroed before each backward;
    /// `.inPlace` makes the gradient share the value memory (for an op that is the sole consumer and
    /// overwrites it in backward, like softmax + cross-entropy on the logits).
    public enum Gradient { case none, accumulated, inPlace }

    public func tensor(_ shape: [Int], gradient: Gradient = .accumulated) -> Tensor {
        let n = shape.reduce(1, *)
        let value = FloatBuffer(count: n)
        buffers.append(value)
        bytes += n * 4
        switch gradient {
        case .none:
            return Tensor(data: value.pointer, grad: nil, shape: shape)
        case .inPlace:
            return Tensor(data: value.pointer, grad: value.pointer, shape: shape)
        case .accumulated:
            let g = FloatBuffer(count: n)
            buffers.append(g)
            gradientsToZero.append(g)
            bytes += n * 4
            return Tensor(data: value.pointer, grad: g.pointer, shape: shape)
        }
    }

    /// Scratch memory that is not a tensor (per-row statistics, per-thread workspaces).
    public func scratch(_ count: Int) -> UnsafeMutablePointer<Float> {
        let b = FloatBuffer(count: count)
        buffers.append(b)
        bytes += count * 4
        return b.pointer
    }

    public func zeroGradients() {
        for g in gradientsToZero { g.zero() }
    }
}
