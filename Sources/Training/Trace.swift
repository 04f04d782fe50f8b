import Checkpoint
import Common
import Distributed
import Foundation

/// `train --trace-steps A-B`: a timeline of those steps on every rank, as a Chrome Trace Event file (`trace.json`
/// in the run directory; open it in Perfetto or chrome://tracing). One process per rank, three tracks each:
/// - compute: every op's forward, backward and recomputation, reading the batch, zeroing gradients, and the waits
///   (for the gradient buckets after backward, for ZeRO-1's parameter all-gather before an op), the loss
///   all-reduce, the gradient norm and the optimizer; a "step N" span covers each step;
/// - communication: each bucket's collective (all-reduce, reduce-scatter, all-gather) as it ran, with its bytes, and
///   from hand-off to completion as an async span;
/// - writer: metrics rows and checkpoints.
/// Clocks are aligned at a barrier when tracing starts (every rank's zero is its exit from it); rank 0 gathers every
/// rank's events into the one file.
final class TraceRecorder: @unchecked Sendable {
    enum Track: Int { case compute = 1, communication = 2, writer = 3 }
    struct Event {
        let name: String, category: String, track: Track, start: UInt64, end: UInt64
        var args: [String: Double] = [:]
        var asyncID: Int?
    }

    let steps: ClosedRange<Int>
    private let lock = NSLock()
    private var events: [Event] = []
    private var origin: UInt64 = 0
    private var nextAsyncID = 0

    init(steps: ClosedRange<Int>) { self.steps = steps }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// The zero of this rank's clock: taken right after a barrier every rank passes together.
    func start(comm: Communicator) {
        comm.barrier()
        origin = Self.now()
    }

    func add(_ event: Event) { lock.lock(); events.append(event); lock.unlock() }

    func span(_ name: String, _ category: String, _ track: Track = .compute, start: UInt64, end: UInt64, args: [String: Double] = [:]) {
        add(Event(name: name, category: category, track: track, start: start, end: end, args: args))
    }

    /// Times `body` as one span.
    @discardableResult
    func measure<R>(_ name: String, _ category: String, _ track: Track = .compute, _ body: () throws -> R) rethrows -> R {
        let t0 = Self.now()
        defer { span(name, category, track, start: t0, end: Self.now()) }
        return try body()
    }

    /// An async span (its own row under the process): a bucket from hand-off to completion.
    func asyncSpan(_ name: String, _ category: String, start: UInt64, end: UInt64, args: [String: Double]) {
        lock.lock()
        nextAsyncID += 1
        events.append(Event(name: name, category: category, track: .communication, start: start, end: end, args: args, asyncID: nextAsyncID))
        lock.unlock()
    }

    /// This rank's events as Chrome trace JSON objects (times in microseconds since the barrier), with the names of its
    /// process and tracks.
    func eventsJSON(rank: Int) -> [String] {
        lock.lock(); defer { lock.unlock() }
        func us(_ t: UInt64) -> String { String(format: "%.3f", Double(Int64(bitPattern: t &- origin)) / 1000) }
        func quoted(_ s: String) -> String { JSONValue.string(s).json }
        func args(_ a: [String: Double]) -> String {
            "{" + a.sorted { $0.key < $1.key }.map { "\(quoted($0.key)): \($0.value.isFinite ? String($0.value) : "null")" }.joined(separator: ", ") + "}"
        }
        var out = ["{\"ph\": \"M\", \"pid\": \(rank), \"name\": \"process_name\", \"args\": {\"name\": \"rank \(rank)\"}}",
                   "{\"ph\": \"M\", \"pid\": \(rank), \"name\": \"process_sort_index\", \"args\": {\"sort_index\": \(rank)}}"]
        for (track, name) in [(Track.compute, "compute"), (.communication, "communication"), (.writer, "writer")] {
            out.append("{\"ph\": \"M\", \"pid\": \(rank), \"tid\": \(track.rawValue), \"name\": \"thread_name\", \"args\": {\"name\": \"\(name)\"}}")
        }
        for e in events {
            let common = "\"name\": \(quoted(e.name)), \"cat\": \(quoted(e.category)), \"pid\": \(rank), \"tid\": \(e.track.rawValue)"
            if let id = e.asyncID {
                out.append("{\"ph\": \"b\", \(common), \"id\": \(id), \"ts\": \(us(e.start)), \"args\": \(args(e.args))}")
                out.append("{\"ph\": \"e\", \(common), \"id\": \(id), \"ts\": \(us(e.end))}")
            } else {
                out.append("{\"ph\": \"X\", \(common), \"ts\": \(us(e.start)), \"dur\": \(String(format: "%.3f", Double(e.end - e.start) / 1000)), \"args\": \(args(e.args))}")
            }
        }
        return out
    }

    /// Gathers every rank's events on rank 0, which writes `path` (atomically). Collective: every rank calls it.
    func write(path: String, comm: Communicator) throws {
        let mine = eventsJSON(rank: comm.rank).joined(separator: ",\n")
        guard let all = comm.gatherBytes(Array(mine.utf8)) else { return }
        let body = all.map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }.joined(separator: ",\n")
        let text = "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"steps\": \"\(steps.lowerBound)-\(steps.upperBound)\", \"ranks\": \(comm.size)},\n"
            + "\"traceEvents\": [\n" + body + "\n]}\n"
        try AtomicFile.write(text: text, to: path)
    }

    /// "A-B" or "A" (1-based step numbers).
    static func parseSteps(_ text: String) throws -> ClosedRange<Int> {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard (parts.count == 1 || parts.count == 2), let a = parts.first ?? nil, let b = parts.last ?? nil, a >= 1, a <= b else {
            throw GPT2DistError(.usage, "--trace-steps must be A-B (first and last step, 1 <= A <= B) or A, got '\(text)'")
        }
        return a...b
    }
}
