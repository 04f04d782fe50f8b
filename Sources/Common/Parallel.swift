import Dispatch

/// Splits elementwise and row-wise kernels over the cores given to this rank.
/// BLAS has its own threads; this pool is for the kernels around the matrix products.
public enum Parallel {
    /// Worker count for non-BLAS kernels; set once at startup from `--threads`.
    nonisolated(unsafe) public static var threads = 1

    /// Calls `body(chunkIndex, range)` over `count` items split into contiguous chunks, one per thread.
    /// Small jobs (count * costPerItem under ~32k) run inline: waking threads costs more than it saves.
    @inline(__always)
    public static func chunks(_ count: Int, costPerItem: Int = 1, _ body: (Int, Range<Int>) -> Void) {
        let t = min(threads, count)
        if t <= 1 || count * costPerItem < 32_768 {
            if count > 0 { body(0, 0..<count) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: t) { i in
            let lo = count * i / t, hi = count * (i + 1) / t
            if lo < hi { body(i, lo..<hi) }
        }
    }

    /// Calls `body(worker, item)` for every item on `workers` threads (default: `threads`), items dealt out
    /// dynamically (for uneven work: causal attention's rows, the tokenizer's chunks, prepare's segments).
    public static func forEach(_ count: Int, workers: Int = threads, _ body: (Int, Int) -> Void) {
        let t = min(workers, count)
        if t <= 1 {
            for i in 0..<count { body(0, i) }
            return
        }
        let next = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        next.initialize(to: 0)
        defer { next.deallocate() }
        let lock = NSLockLike()
        DispatchQueue.concurrentPerform(iterations: t) { w in
            while true {
                lock.lock()
                let i = next.pointee
                next.pointee += 1
                lock.unlock()
                if i >= count { break }
                body(w, i)
            }
        }
    }
}

/// A pthread mutex without Foundation, for the few places that hand out work items.
final class NSLockLike {
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(m, nil) }
    deinit { pthread_mutex_destroy(m); m.deallocate() }
    func lock() { pthread_mutex_lock(m) }
    func unlock() { pthread_mutex_unlock(m) }
}

#if canImport(Glibc)
import Glibc
#endif
