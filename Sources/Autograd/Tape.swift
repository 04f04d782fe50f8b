import Dispatch
import Foundation

/// One coarse operation on the tape: a hand-written forward kernel and its backward kernel,
/// both working on preallocated buffers. Backward *accumulates* into input gradients
/// (the tape zeroes activation gradients first), so a tensor may feed several ops.
public protocol Op: AnyObject {
    func forward()
    func backward()
}

/// Where dropout masks come from: a pure function of (seed, step, global row, position, feature),
/// never of the rank or thread that computes them.
public final class StepContext: @unchecked Sendable {
    public var seed: UInt64 = 0
    public var step: Int = 0
    /// Global index of this micro-batch's first row within the optimizer step's batch.
    public var rowOffset: Int = 0
    public var training = false
    /// Rows that pack a shared prefix with several continuations (multiple-choice scoring); nil: plain causal rows.
    public var packedRows: PackedRows?
    public init() {}
}

/// Several sequences that share a prefix, packed in one row as [prefix | continuation 1 | continuation 2 | ...], so
/// the prefix is computed once for all of them: a continuation's positions see the prefix and their own
/// continuation's earlier positions, not the other continuations, and their position ids go on from the prefix's.
/// Per position of a batch x seqLen graph: its position id (the row of wpe it adds), and the keys it attends to,
/// [0, prefixEnd) and [segmentStart, itself]. A plain causal position has id t and prefixEnd = segmentStart = 0.
/// Forward only (evaluation): the ops' backward refuses packed rows.
public final class PackedRows: @unchecked Sendable {
    public let batch: Int, seqLen: Int
    public let positionIDs: UnsafeMutablePointer<Int32>, prefixEnd: UnsafeMutablePointer<Int32>, segmentStart: UnsafeMutablePointer<Int32>

    public init(batch: Int, seqLen: Int) {
        self.batch = batch; self.seqLen = seqLen
        positionIDs = .allocate(capacity: batch * seqLen)
        prefixEnd = .allocate(capacity: batch * seqLen)
        segmentStart = .allocate(capacity: batch * seqLen)
        for r in 0..<batch { setPlain(row: r) }
    }
    deinit { positionIDs.deallocate(); prefixEnd.deallocate(); segmentStart.deallocate() }

    /// Row `r` as a plain causal sequence.
    public func setPlain(row r: Int) {
        for t in 0..<seqLen { positionIDs[r * seqLen + t] = Int32(t); prefixEnd[r * seqLen + t] = 0; segmentStart[r * seqLen + t] = 0 }
    }

    /// Row `r` as a prefix of `prefixLength` positions followed by segments of `segmentLengths` positions (the rest
    /// of the row plain, for padding).
    public func set(row r: Int, prefixLength: Int, segmentLengths: [Int]) {
        precondition(prefixLength + segmentLengths.reduce(0, +) <= seqLen)
        setPlain(row: r)
        var start = prefixLength
        for n in segmentLengths {
            for k in 0..<n {
                let i = r * seqLen + start + k
                positionIDs[i] = Int32(prefixLength + k); prefixEnd[i] = Int32(prefixLength); segmentStart[i] = Int32(start)
            }
            start += n
        }
    }
}

/// The recorded program: ops in execution order over an arena of activations.
/// Built once for a (batch, sequence) shape and replayed every step, forward then in reverse.
public final class Tape {
    public let arena = ActivationArena()
    public let context = StepContext()
    /// The products of this tape, at its precision (with their scratch for rounded operands).
    public let matmul: Matmul
    public private(set) var ops: [any Op] = []
    /// For each op, the gradient region (a caller's index) that is final once that op's backward has run (nil when
    /// the op completes none). Drives gradient buckets that overlap backward.
    public private(set) var completes: [Int?] = []

    /// Ops whose activations are recomputed in backward instead of kept (a transformer block sharing its
    /// internal buffers with every other block): before differentiating the segment, its forward runs again
    /// and the gradients of `shared` are zeroed.
    struct Segment { let ops: Range<Int>; let shared: [Tensor]; let recompute: Bool }
    private var segmentEndingAt: [Int: Segment] = [:]
    private var openSegment: Int?

    public init(precision: MatmulPrecision = .fp32, engine: BF16Engine? = nil) { matmul = Matmul(precision: precision, engine: engine) }

    /// Starts a recomputed segment at the next recorded op.
    public func beginSegment() { openSegment = ops.count }

    /// Ends the segment; `shared` are the activations it shares with other segments. The last segment before
    /// the loss needs no recomputation (its activations are still in place when backward starts).
    public func endSegment(shared: [Tensor], recompute: Bool = true) {
        guard let start = openSegment else { preconditionFailure("endSegment without beginSegment") }
        segmentEndingAt[ops.count - 1] = Segment(ops: start..<ops.count, shared: shared, recompute: recompute)
        openSegment = nil
    }

    public func record(_ op: any Op, name: String? = nil, completesRegion region: Int? = nil) {
        ops.append(op)
        names.append(name ?? String(describing: type(of: op)))
        completes.append(region)
    }

    /// Each op's name (the model's: `h.3.mlp.c_fc`, ...; else its kernel's type), indexed like `ops`.
    public private(set) var names: [String] = []

    public enum Phase: String, Sendable { case forward, backward, recompute }
    /// When set (a traced step), told of every op's span: its index (-1: zeroing the activations' gradients before
    /// backward), the phase, and its start and end (DispatchTime uptime nanoseconds).
    public var spanObserver: ((_ op: Int, _ phase: Phase, _ start: UInt64, _ end: UInt64) -> Void)?

    /// When set, seconds spent in each op (forward + backward) are added here, indexed like `ops`.
    public var opSeconds: [Double]?

    /// Runs every forward kernel in order. `awaiting(region)` is called before each op that uses (and in backward
    /// completes) a gradient region's parameters: the caller may still be receiving them (ZeRO-1's all-gather).
    public func forward(awaiting: ((Int) -> Void)? = nil) {
        if opSeconds != nil || awaiting != nil || spanObserver != nil {
            for (i, op) in ops.enumerated() {
                if let a = awaiting, let region = completes[i] { a(region) }
                if opSeconds != nil || spanObserver != nil { measure(i, .forward) { op.forward() } } else { op.forward() }
            }
            return
        }
        for op in ops { op.forward() }
    }

    @inline(__always)
    private func measure(_ i: Int, _ phase: Phase, _ body: () -> Void) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        let t1 = DispatchTime.now().uptimeNanoseconds
        opSeconds?[i] += Double(t1 - t0) / 1e9
        spanObserver?(i, phase, t0, t1)
    }

    /// Runs every backward kernel in reverse order. `progress(region)` is called after each op that completes a
    /// gradient region.
    public func backward(progress: ((Int) -> Void)? = nil) {
        if let observe = spanObserver {
            let t0 = DispatchTime.now().uptimeNanoseconds
            arena.zeroGradients()
            observe(-1, .backward, t0, DispatchTime.now().uptimeNanoseconds)  // -1: zeroing the activations' gradients
        } else {
            arena.zeroGradients()
        }
        var i = ops.count - 1
        while i >= 0 {
            if let seg = segmentEndingAt[i] {
                if seg.recompute {
                    for j in seg.ops {
                        if spanObserver != nil { measure(j, .recompute) { ops[j].forward() } } else { ops[j].forward() }
                    }
                }
                for t in seg.shared { if let g = t.grad { memset(g, 0, t.count * 4) } }
            }
            if opSeconds != nil || spanObserver != nil { measure(i, .backward) { ops[i].backward() } } else { ops[i].backward() }
            if let p = progress, let region = completes[i] { p(region) }
            i -= 1
        }
    }
}
