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
/// shards are plain slices. For bf16 products a third buffer of the same layout holds the values rounded to bf16:
/// the master weights stay fp32, the products read the copy, which AdamW refreshes as it updates.
public final class Parameters: @unchecked Sendable {
    public let layout: ParameterLayout
    public let values: FloatBuffer
    public let gradients: FloatBuffer
    /// The bf16 copy of `values` (bf16 bits), once `enableBF16Copy` made it; two bf16 values per float of storage.
    public private(set) var bf16: FloatBuffer?
    public var bf16Pointer: UnsafeMutablePointer<UInt16>? {
        bf16.map { UnsafeMutableRawPointer($0.pointer).assumingMemoryBound(to: UInt16.self) }
    }

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = FloatBuffer(count: layout.totalCount)
        gradients = FloatBuffer(count: layout.totalCount)
    }

    public var count: Int { layout.totalCount }

    public func tensor(_ name: String) -> Tensor {
        guard let e = layout.entry(name) else { preconditionFailure("no parameter named \(name)") }
        return Tensor(data: values.pointer + e.offset, grad: gradients.pointer + e.offset, half: bf16Pointer.map { $0 + e.offset },
                      shape: e.shape)
    }

    /// Makes the bf16 copy (tensors made afterwards carry it); its owner fills it (`refreshBF16Copy`) before use.
    /// Untouched until then, so a graph built only to count bytes commits none of it.
    public func enableBF16Copy() {
        guard bf16 == nil else { return }
        bf16 = FloatBuffer(count: (count + 1) / 2)
    }

    /// Bytes of values (fp32) and, with `bf16Copy`, of their bf16 copy, for `count` parameters.
    public static func valueBytes(count: Int, bf16Copy: Bool) -> Int { 4 * count + (bf16Copy ? 4 * ((count + 1) / 2) : 0) }

    /// Rounds `range` of the values (default: all) into the bf16 copy, on all threads.
    public func refreshBF16Copy(_ range: Range<Int>? = nil) {
        guard let half = bf16Pointer else { return }
        let r = range ?? 0..<count
        BF16.convert(values.pointer + r.lowerBound, count: r.count, into: half + r.lowerBound, parallel: true)
    }

    public func zeroGradients() { gradients.zero() }
}
