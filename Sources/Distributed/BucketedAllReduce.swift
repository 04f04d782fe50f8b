import Dispatch
import Foundation

/// Which parts of a flat gradient buffer are summed together, and when. Backward finishes the gradient in
/// `regions` (each a range of the buffer, listed in the order they become final: for GPT-2 the tied embedding's
/// dense part first, then each block's tensors from its last op to its first, then the position embedding).
/// Buckets are filled greedily in that order, as PyTorch DDP fills its buckets: consecutive regions that lie
/// back to back in the buffer share a bucket of up to `bucketFloats`; a region larger than that is cut from its
/// high end down. A bucket can go once every region up to and including its `region` is final. The trainer's
/// reducer and `gpt2-dist plan` use this same schedule.
public struct BucketSchedule: Sendable {
    public struct Bucket: Sendable, Equatable {
        public let range: Range<Int>
        /// Index of the last region (in completion order) the bucket needs.
        public let region: Int
    }
    public let regions: [Range<Int>]
    public let buckets: [Bucket]

    /// Bucket size in MB unless chosen (train's --bucket-mb, plan's): PyTorch DDP's 25 MB.
    public static let defaultBucketMb = 25.0

    public init(regions: [Range<Int>], bucketFloats: Int) {
        let limit = max(1, bucketFloats)
        var buckets: [Bucket] = []
        var open: Bucket?  // being filled downwards
        for (k, region) in regions.enumerated() where !region.isEmpty {
            var hi = region.upperBound
            while hi > region.lowerBound {
                var top = hi
                if let o = open {
                    if o.range.lowerBound == hi { top = o.range.upperBound } else { buckets.append(o) }
                }
                let lo = max(region.lowerBound, top - limit)
                open = Bucket(range: lo..<top, region: k)
                hi = lo
                if top - lo == limit { buckets.append(open!); open = nil }
            }
        }
        if let o = open { buckets.append(o) }
        self.regions = regions
        self.buckets = buckets
    }

    /// ZeRO-1's all-gather goes bucket by bucket in reverse order (the order forward reads the parameters): for
    /// each region, how many of those all-gathers must be done before the region is complete.
    public var gathersNeeded: [Int] {
        let reversed = Array(buckets.reversed())
        return regions.map { region in (reversed.lastIndex { $0.range.overlaps(region) } ?? -1) + 1 }
    }

    /// One region: the whole buffer, cut from its end (a buffer with no backward behind it, as in bench-comm).
    public init(count: Int, bucketFloats: Int) { self.init(regions: [0..<count], bucketFloats: bucketFloats) }
}

public final class BucketedAllReduce: @unchecked Sendable {
    public let schedule: BucketSchedule
    public var buckets: [Range<Int>] { schedule.buckets.map(\.range) }
    public let overlap: Bool
    let worker: Worker
    private var thread: Thread?
    private var nextBucket = 0
    private var submitted = 0

    /// Seconds the caller spent blocked in `finish` (communication not hidden behind backward).
    public private(set) var waitSeconds = 0.0
    /// Seconds spent inside MPI calls.
    public var commSeconds: Double { worker.locked { worker.commSeconds } }

    /// Overlap needs MPI_THREAD_MULTIPLE and a duplicated communicator; without either, buckets are reduced
    /// after backward (`overlap` then reads false, so callers can say so).
    /// `shardsBuckets` (ZeRO-1): each bucket is reduce-scattered into its parts (`parts`), rank q keeping the sum
    /// of part q, and `startAllGather` brings the parts back; otherwise each bucket is all-reduced.
    public init(comm: Communicator, base: UnsafeMutablePointer<Float>, schedule: BucketSchedule, overlap: Bool,
                shardsBuckets: Bool = false) {
        self.schedule = schedule
        // Every rank takes the same branch (the thread level is the job's), so the collective dup is safe.
        let own = overlap && comm.size > 1 && comm.threadMultiple ? comm.duplicate(sleepsWhileWaiting: true) : nil
        self.overlap = own != nil
        worker = Worker(comm: own ?? comm, base: base, shardsBuckets: shardsBuckets,
                        largestBucket: schedule.buckets.map(\.range.count).max() ?? 1)
        if self.overlap {
            // The thread owns the worker (not self), so it never touches a released reducer.
            let w = worker
            let t = Thread { w.serve() }
            t.name = "gpt2-dist-allreduce"
            t.start()
            thread = t
        }
    }

    deinit {
        if thread != nil { worker.submit(.stop) }
    }

    /// The communication thread's state: a queue of tasks, the reduction and the all-gather.
    final class Worker: @unchecked Sendable {
        enum Task { case reduce(Range<Int>, handedOff: UInt64), gather(UnsafeMutablePointer<Float>, Range<Int>, handedOff: UInt64), stop }
        let comm: Communicator, base: UnsafeMutablePointer<Float>, shardsBuckets: Bool
        private let lock = NSCondition()
        private var queue: [Task] = []
        private let workAvailable = DispatchSemaphore(value: 0)
        let bucketDone = DispatchSemaphore(value: 0)
        var commSeconds = 0.0
        private var gathered = 0  // all-gather tasks done since the last `resetGathered`

        /// The ring reduce-scatter's receive buffer (ZeRO-1 on the communication thread): the largest bucket.
        private let scratch: UnsafeMutablePointer<Float>?

        init(comm: Communicator, base: UnsafeMutablePointer<Float>, shardsBuckets: Bool, largestBucket: Int) {
            self.comm = comm; self.base = base; self.shardsBuckets = shardsBuckets
            scratch = shardsBuckets && comm.sleepsWhileWaiting ? .allocate(capacity: max(1, largestBucket)) : nil
        }

        deinit { scratch?.deallocate() }

        func locked<R>(_ body: () -> R) -> R { lock.lock(); defer { lock.unlock() }; return body() }

        func submit(_ task: Task) {
            locked { queue.append(task) }
            workAvailable.signal()
        }

        func serve() {
            while true {
                workAvailable.wait()
                switch locked({ queue.removeFirst() }) {
                case .stop: return
                case .reduce(let r, let handedOff):
                    reduce(r, handedOff: handedOff)
                    bucketDone.signal()
                case .gather(let params, let r, let handedOff):
                    gather(params, r, handedOff: handedOff)
                    lock.lock(); gathered += 1; lock.broadcast(); lock.unlock()
                }
            }
        }

        func resetGathered() { locked { gathered = 0 } }

        /// Blocks until `count` all-gather tasks are done.
        func waitGathered(_ count: Int) {
            lock.lock()
            while gathered < count { lock.wait() }
            lock.unlock()
        }

        /// When set (a traced step), told of each bucket: what was done, its floats, and when it was handed off,
        /// started and finished (DispatchTime uptime nanoseconds), on the thread that did it.
        var observer: (@Sendable (_ kind: Collective, _ range: Range<Int>, _ handedOff: UInt64, _ start: UInt64, _ end: UInt64) -> Void)?

        func reduce(_ r: Range<Int>, handedOff: UInt64? = nil) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            if shardsBuckets {
                let (counts, offsets) = BucketedAllReduce.parts(ofBucket: r.count, ranks: comm.size)
                if let scratch {
                    comm.ringReduceScatter(base + r.lowerBound, counts: counts, offsets: offsets, scratch: scratch)
                } else {
                    comm.reduceScatterSumInPlace(base + r.lowerBound, counts: counts)
                    if counts[comm.rank] > 0 && offsets[comm.rank] > 0 {
                        memmove(base + r.lowerBound + offsets[comm.rank], base + r.lowerBound, counts[comm.rank] * 4)
                    }
                }
            } else {
                comm.allReduceSum(base + r.lowerBound, count: r.count)
            }
            addTime(since: t0)
            locked { observer }?(shardsBuckets ? .reduceScatter : .allReduce, r, handedOff ?? t0, t0, DispatchTime.now().uptimeNanoseconds)
        }

        func gather(_ params: UnsafeMutablePointer<Float>, _ r: Range<Int>, handedOff: UInt64? = nil) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let (counts, offsets) = BucketedAllReduce.parts(ofBucket: r.count, ranks: comm.size)
            if comm.sleepsWhileWaiting {
                comm.ringAllGather(params + r.lowerBound, counts: counts, offsets: offsets)
            } else {
                comm.allGatherInPlace(params + r.lowerBound, counts: counts, displacements: offsets)
            }
            addTime(since: t0)
            locked { observer }?(.allGather, r, handedOff ?? t0, t0, DispatchTime.now().uptimeNanoseconds)
        }

        private func addTime(since t0: UInt64) {
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            locked { commSeconds += dt }
        }
    }

    /// The collectives a bucket goes through.
    public enum Collective: String, Sendable { case allReduce = "all-reduce", reduceScatter = "reduce-scatter", allGather = "all-gather" }

    /// Told of each bucket's collective (see `Worker.observer`); nil: nothing is timed beyond the totals.
    public var bucketObserver: (@Sendable (_ kind: Collective, _ range: Range<Int>, _ handedOff: UInt64, _ start: UInt64, _ end: UInt64) -> Void)? {
        get { worker.locked { worker.observer } }
        set { worker.locked { worker.observer = newValue } }
    }

    /// Starts a reducing backward pass.
    public func begin() {
        nextBucket = 0
        submitted = 0
    }

    /// Regions 0...`region` of the schedule are final: hand over, in schedule order, the buckets they complete.
    public func ready(throughRegion region: Int) {
        guard overlap else { return }
        let all = schedule.buckets
        while nextBucket < all.count && all[nextBucket].region <= region {
            worker.submit(.reduce(all[nextBucket].range, handedOff: DispatchTime.now().uptimeNanoseconds))
            submitted += 1
            nextBucket += 1
        }
    }

    /// Reduces whatever is left and waits until every bucket is summed.
    public func finish() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        if overlap {
            ready(throughRegion: Int.max)
            for _ in 0..<submitted { worker.bucketDone.wait() }
        } else if worker.comm.size > 1 {
            for r in buckets { worker.reduce(r) }
        }
        waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// How a bucket of `count` floats is cut among the ranks under ZeRO-1: N consecutive parts, rank q's part
    /// q, sizes differing by at most one. Returns per-rank counts and the offsets within the bucket.
    public static func parts(ofBucket count: Int, ranks: Int) -> (counts: [Int], offsets: [Int]) {
        let base = count / ranks, extra = count % ranks
        let counts = (0..<ranks).map { base + ($0 < extra ? 1 : 0) }
        let offsets = (0..<ranks).map { q in q * base + min(q, extra) }
        return (counts, offsets)
    }

    /// ZeRO-1's parameter all-gather after the update, bucket by bucket (no full-size temporaries). With overlap it
    /// runs on the communication thread in the order the next forward reads the parameters (the reverse of the
    /// schedule), and forward waits only for the regions it is about to use (`awaitParameters`); otherwise it is
    /// done before returning.
    public func startAllGather(_ params: UnsafeMutablePointer<Float>) {
        guard worker.shardsBuckets, worker.comm.size > 1 else { return }
        if overlap {
            awaitAllParameters()
            worker.resetGathered()
            for b in schedule.buckets.reversed() { worker.submit(.gather(params, b.range, handedOff: DispatchTime.now().uptimeNanoseconds)) }
            gathering = true
            return
        }
        for b in schedule.buckets.reversed() { worker.gather(params, b.range) }
    }

    /// Whether an all-gather is still landing in the parameters.
    public private(set) var gathering = false

    private lazy var gathersNeeded = schedule.gathersNeeded

    /// Blocks until region `region` of the schedule holds every rank's updated parameters.
    public func awaitParameters(region: Int) {
        guard gathering else { return }
        awaitGathers(gathersNeeded[region])
    }

    /// Blocks until the whole all-gather is done (before anything reads all parameters: evaluation, checkpoints).
    public func awaitAllParameters() {
        guard gathering else { return }
        awaitGathers(schedule.buckets.count)
        gathering = false
    }

    private func awaitGathers(_ count: Int) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        worker.waitGathered(count)
        waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    public func resetTimers() {
        waitSeconds = 0
        worker.locked { worker.commSeconds = 0 }
    }
}
