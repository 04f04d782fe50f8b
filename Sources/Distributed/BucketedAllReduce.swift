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
    let comm: Communicator
    let base: UnsafeMutablePointer<Float>

    private var nextBucket = 0
    private var submitted = 0
    private let lock = NSLock()
    private var queue: [Range<Int>] = []
    private let workAvailable = DispatchSemaphore(value: 0)
    private let bucketDone = DispatchSemaphore(value: 0)
    private var thread: Thread?

    /// Seconds the caller spent blocked in `finish` (communication not hidden behind backward).
    public private(set) var waitSeconds = 0.0
    /// Seconds spent inside MPI all-reduce calls.
    public private(set) var commSeconds = 0.0

    /// `bucketFloats` ~ 25 MB / 4 by default; buckets are cut from the end of the buffer towards its start.
    let blockSize: Int?

    public init(comm: Communicator, base: UnsafeMutablePointer<Float>, count: Int, bucketFloats: Int, overlap: Bool,
                blockSize: Int? = nil) {
        self.blockSize = blockSize
        precondition(bucketFloats > 0)
        var ranges: [Range<Int>] = []
        var hi = count
        while hi > 0 {
            let lo = max(0, hi - bucketFloats)
            ranges.append(lo..<hi)
            hi = lo
        }
        buckets = ranges
        self.base = base
        self.overlap = overlap && comm.size > 1
        self.comm = self.overlap ? comm.duplicate() : comm
        if self.overlap {
            let t = Thread { [unowned self] in self.serve() }
            t.name = "gpt2-dist-allreduce"
            t.start()
            thread = t
        }
    }

    private func serve() {
        while true {
            workAvailable.wait()
            lock.lock()
            let r = queue.removeFirst()
            lock.unlock()
            if r.isEmpty { return }  // shutdown marker
            reduce(r)
            bucketDone.signal()
        }
    }

    private func reduce(_ r: Range<Int>) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        if let block = blockSize {
            let (counts, offsets) = Self.split(r, blockSize: block, ranks: comm.size)
            comm.reduceScatterSumInPlace(base + r.lowerBound, counts: counts)
            if counts[comm.rank] > 0 && offsets[comm.rank] > 0 {
                memmove(base + r.lowerBound + offsets[comm.rank], base + r.lowerBound, counts[comm.rank] * 4)
            }
        } else {
            comm.allReduceSum(base + r.lowerBound, count: r.count)
        }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        lock.lock(); commSeconds += dt; lock.unlock()
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
            submit(buckets[nextBucket])
            nextBucket += 1
        }
    }

    private func submit(_ r: Range<Int>) {
        lock.lock(); queue.append(r); lock.unlock()
        submitted += 1
        workAvailable.signal()
    }

    /// Reduces whatever is left and waits until every bucket is summed.
    public func finish() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        if overlap {
            while nextBucket < buckets.count { submit(buckets[nextBucket]); nextBucket += 1 }
            for _ in 0..<submitted { bucketDone.wait() }
        } else if comm.size > 1 {
            for r in buckets { reduce(r) }
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
        guard let block = blockSize, comm.size > 1 else { return }
        for r in buckets.reversed() {
            let (counts, offsets) = Self.split(r, blockSize: block, ranks: comm.size)
            comm.allGatherInPlace(params + r.lowerBound, counts: counts, displacements: offsets)
        }
    }

    public func resetTimers() { waitSeconds = 0; commSeconds = 0 }

    deinit {
        if thread != nil {
            lock.lock(); queue.append(0..<0); lock.unlock()
            workAvailable.signal()
        }
    }
}
