import Dispatch
import Foundation

/// Sums a flat gradient buffer over ranks in contiguous buckets, last bucket first (the order in which
/// backward finishes them). With `blockSize` (ZeRO-1) each bucket is reduce-scattered in place instead: rank r
/// ends with the sums for its block [r·blockSize, (r+1)·blockSize) at their usual place in the buffer (the rest
/// of the buffer is then stale). No call needs a temporary larger than one bucket (one MPI_Reduce_scatter_block
/// over the whole buffer makes Open MPI allocate a full-size temporary) and no separate shard buffer is kept. With `overlap`, buckets go to a dedicated communication thread (its own
/// duplicated communicator) as soon as backward reports them final, so communication runs while
/// earlier layers are still being differentiated. MPI is never called from Swift's cooperative pool.
public final class BucketedAllReduce: @unchecked Sendable {
    public let buckets: [Range<Int>]
    public let overlap: Bool
    let worker: Worker
    private var thread: Thread?
    private var nextBucket = 0
    private var submitted = 0

    /// Seconds the caller spent blocked in `finish` (communication not hidden behind backward).
    public private(set) var waitSeconds = 0.0
    /// Seconds spent inside MPI calls.
    public var commSeconds: Double { worker.locked { worker.commSeconds } }

    /// `bucketFloats` ~ 25 MB / 4 by default; buckets are cut from the end of the buffer towards its start.
    /// Overlap needs MPI_THREAD_MULTIPLE and a duplicated communicator; without either, buckets are reduced
    /// after backward (`overlap` then reads false, so callers can say so).
    public init(comm: Communicator, base: UnsafeMutablePointer<Float>, count: Int, bucketFloats: Int, overlap: Bool,
                blockSize: Int? = nil) {
        let bucketFloats = max(1, bucketFloats)
        var ranges: [Range<Int>] = []
        var hi = count
        while hi > 0 {
            let lo = max(0, hi - bucketFloats)
            ranges.append(lo..<hi)
            hi = lo
        }
        buckets = ranges
        // Every rank takes the same branch (the thread level is the job's), so the collective dup is safe.
        let own = overlap && comm.size > 1 && comm.threadMultiple ? comm.duplicate() : nil
        self.overlap = own != nil
        worker = Worker(comm: own ?? comm, base: base, blockSize: blockSize)
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
        if thread != nil { worker.submit(0..<0) }  // shutdown marker
    }

    /// The communication thread's state: a queue of buckets and the reduction itself.
    final class Worker: @unchecked Sendable {
        let comm: Communicator, base: UnsafeMutablePointer<Float>, blockSize: Int?
        private let lock = NSLock()
        private var queue: [Range<Int>] = []
        private let workAvailable = DispatchSemaphore(value: 0)
        let bucketDone = DispatchSemaphore(value: 0)
        var commSeconds = 0.0

        init(comm: Communicator, base: UnsafeMutablePointer<Float>, blockSize: Int?) {
            self.comm = comm; self.base = base; self.blockSize = blockSize
        }

        func locked<R>(_ body: () -> R) -> R { lock.lock(); defer { lock.unlock() }; return body() }

        func submit(_ r: Range<Int>) {
            locked { queue.append(r) }
            workAvailable.signal()
        }

        func serve() {
            while true {
                workAvailable.wait()
                let r = locked { queue.removeFirst() }
                if r.isEmpty { return }
                reduce(r)
                bucketDone.signal()
            }
        }

        func reduce(_ r: Range<Int>) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            if let block = blockSize {
                let (counts, offsets) = BucketedAllReduce.split(r, blockSize: block, ranks: comm.size)
                comm.reduceScatterSumInPlace(base + r.lowerBound, counts: counts)
                if counts[comm.rank] > 0 && offsets[comm.rank] > 0 {
                    memmove(base + r.lowerBound + offsets[comm.rank], base + r.lowerBound, counts[comm.rank] * 4)
                }
            } else {
                comm.allReduceSum(base + r.lowerBound, count: r.count)
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            locked { commSeconds += dt }
        }
    }

    /// Starts a reducing backward pass.
    public func begin() {
        nextBucket = 0
        submitted = 0
    }

    /// Every gradient at flat offset >= `offset` is final: hand over the buckets that lie wholly above it.
    public func ready(from offset: Int) {
        guard overlap else { return }
        while nextBucket < buckets.count && buckets[nextBucket].lowerBound >= offset {
            worker.submit(buckets[nextBucket])
            submitted += 1
            nextBucket += 1
        }
    }

    /// Reduces whatever is left and waits until every bucket is summed.
    public func finish() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        if overlap {
            ready(from: 0)
            for _ in 0..<submitted { worker.bucketDone.wait() }
        } else if worker.comm.size > 1 {
            for r in buckets { worker.reduce(r) }
        }
        waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// How range r of the flat buffer divides among rank blocks of `blockSize`: per-rank counts and the
    /// offsets (within r) where each rank's part starts.
    public static func split(_ r: Range<Int>, blockSize: Int, ranks: Int) -> (counts: [Int], offsets: [Int]) {
        var counts: [Int] = [], offsets: [Int] = []
        for q in 0..<ranks {
            let lo = max(r.lowerBound, q * blockSize), hi = min(r.upperBound, (q + 1) * blockSize)
            counts.append(max(0, hi - lo))
            offsets.append(max(0, min(lo, r.upperBound) - r.lowerBound))
        }
        return (counts, offsets)
    }

    /// ZeRO-1's parameter all-gather, bucket by bucket (no full-size temporaries).
    public func allGather(_ params: UnsafeMutablePointer<Float>) {
        guard let block = worker.blockSize, worker.comm.size > 1 else { return }
        for r in buckets.reversed() {
            let (counts, offsets) = Self.split(r, blockSize: block, ranks: worker.comm.size)
            worker.comm.allGatherInPlace(params + r.lowerBound, counts: counts, displacements: offsets)
        }
    }

    public func resetTimers() {
        waitSeconds = 0
        worker.locked { worker.commSeconds = 0 }
    }
}
