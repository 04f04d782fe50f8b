/// One named parameter tensor's place in the flat buffers.
public struct ParameterEntry: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
    /// Matrices and embeddings (2 or more dimensions) get weight decay; biases and norms do not.
    public var decays: Bool { shape.count >= 2 }
}

/// The order and shapes of all parameters, packed back to back (llm.c's params_memory layout).
public struct ParameterLayout: Sendable, Equatable {
    public private(set) var entries: [ParameterEntry] = []
    public private(set) var totalCount = 0
    private var index: [String: Int] = [:]

    public init() {}

    public mutating func append(_ name: String, _ shape: [Int]) {
        precondition(index[name] == nil, "duplicate parameter \(name)")
        index[name] = entries.count
        entries.append(ParameterEntry(name: name, shape: shape, offset: totalCount))
        totalCount += shape.reduce(1, *)
    }

    public func entry(_ name: String) -> ParameterEntry? { index[name].map { entries[$0] } }
    public static func == (a: Self, b: Self) -> Bool { a.entries == b.entries }
}

/// All parameters in ONE contiguous Float32 buffer and all gradients in another of the same layout.
/// Tensors handed to ops are views into them, so gradient all-reduce buckets and optimizer-state
/// shards are plain slices.
public final class Parameters: @unchecked Sendable {
    public let layout: ParameterLayout
    public let values: FloatBuffer
    public let gradients: FloatBuffer

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = FloatBuffer(count: layout.totalCount)
        gradients = FloatBuffer(count: layout.totalCount)
    }

    public var count: Int { layout.totalCount }

    public func tensor(_ name: String) -> Tensor {
        guard let e = layout.entry(name) else { preconditionFailure("no parameter named \(name)") }
        return Tensor(data: values.pointer + e.offset, grad: gradients.pointer + e.offset, shape: e.shape)
    }

    public func zeroGradients() { gradients.zero() }
}
