import Foundation

/// Checks every way gpt2-dist sums gradients and shares parameters against a sum computed directly, on this
/// communicator's ranks: MPI_Allreduce, the bucketed all-reduce on the calling thread and on the communication
/// thread, ZeRO-1's reduce-scatter (both paths), and its all-gather. Values are small integers, so every sum is
/// exact whatever order the ranks add in: any difference is a wrong element, not rounding. `bench-comm --verify`.
public enum CollectiveCheck {
    /// Rank r's value at element i, and the sum over `ranks` ranks.
    static func value(_ i: Int, rank: Int) -> Float { Float(i % 97 + 3 * rank) }
    static func sum(_ i: Int, ranks: Int) -> Float { Float(ranks * (i % 97) + 3 * ranks * (ranks - 1) / 2) }

    /// Name of each check and whether every rank found every element right (agreed across ranks).
    public static func run(comm: Communicator, floats: Int, bucketFloats: Int) -> [(name: String, passed: Bool)] {
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: floats)
        defer { buffer.deallocate() }
        func fill() { for i in 0..<floats { buffer[i] = value(i, rank: comm.rank) } }
        func wrong(_ ranges: [Range<Int>]) -> Bool {
            ranges.contains { r in r.contains { buffer[$0] != sum($0, ranks: comm.size) } }
        }
        let schedule = BucketSchedule(count: floats, bucketFloats: bucketFloats)
        var results: [(String, Bool)] = []
        func record(_ name: String, failed: Bool) {
            var flag = [failed ? 1.0 : 0.0]
            comm.allReduceMax(&flag)
            results.append((name, flag[0] == 0))
        }

        fill()
        comm.allReduceSum(buffer, count: floats)
        record("MPI_Allreduce", failed: wrong([0..<floats]))
        for overlap in [false, true] {
            let reducer = BucketedAllReduce(comm: comm, base: buffer, schedule: schedule, overlap: overlap)
            fill()
            reducer.begin(); reducer.ready(throughRegion: 0); reducer.finish()
            record("buckets, \(overlap ? "communication" : "calling") thread", failed: wrong([0..<floats]))
        }
        for overlap in [false, true] {
            let reducer = BucketedAllReduce(comm: comm, base: buffer, schedule: schedule, overlap: overlap, shardsBuckets: true)
            fill()
            reducer.begin(); reducer.ready(throughRegion: 0); reducer.finish()
            // Each rank holds the sum of its own part of every bucket.
            let mine = schedule.buckets.map { b -> Range<Int> in
                let (counts, offsets) = BucketedAllReduce.parts(ofBucket: b.range.count, ranks: comm.size)
                return (b.range.lowerBound + offsets[comm.rank])..<(b.range.lowerBound + offsets[comm.rank] + counts[comm.rank])
            }
            let thread = overlap ? "communication" : "calling"
            record("ZeRO-1 reduce-scatter, \(thread) thread", failed: wrong(mine))
            // The all-gather brings every rank's part to every rank: poison the others' parts first.
            for i in 0..<floats { buffer[i] = .nan }
            for r in mine { for i in r { buffer[i] = sum(i, ranks: comm.size) } }
            reducer.startAllGather(buffer)
            reducer.awaitAllParameters()
            record("ZeRO-1 all-gather, \(thread) thread", failed: wrong([0..<floats]))
        }
        return results
    }
}
