import ArgumentParser
import Autograd
import Common
import Distributed
import Foundation
import GPT2
import Machine
import Training

struct BenchComm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-comm",
        abstract: "Measure gradient all-reduce: one MPI_Allreduce vs ~25 MB buckets (run under mpirun).",
        discussion: """
        Sums --floats floats (default: GPT-2 124M's parameter count) over all ranks, best of --repeats: \
        one plain MPI_Allreduce call, the same buffer in --bucket-mb buckets on the calling thread, and the \
        buckets handed to the communication thread that training uses to overlap backward.
          mpirun -np 2 gpt2-dist bench-comm
        """
    )
    @Option(help: "Floats to reduce.") var floats = 124_439_808
    @Option(help: "Bucket size in MB.") var bucketMb = 25.0
    @Option(help: "Repetitions (best is reported).") var repeats = 3
    @Flag(help: "Print one JSON object (seconds per method) instead of the table, for scripts.") var json = false
    @Flag(help: "Also check every reduction and all-gather against a direct sum (exact: integer values); exit 1 on a wrong element.")
    var verify = false

    func run() throws {
        let comm = Communicator.initialize()
        defer { comm.finalize() }
        guard floats > 0, bucketMb.isFinite, bucketMb > 0, repeats > 0 else {
            if comm.isRoot { Console.error("gpt2-dist: error: --floats, --bucket-mb and --repeats must be positive") }
            throw ExitCode(1)
        }
        if verify {
            let results = CollectiveCheck.run(comm: comm, floats: floats, bucketFloats: max(1, Int(bucketMb * 1_048_576 / 4)))
            if comm.isRoot {
                for r in results { print("verify: \(r.name): \(r.passed ? "ok" : "WRONG")") }
            }
            if results.contains(where: { !$0.passed }) { throw ExitCode(1) }
        }
        let buffer = FloatBuffer(count: floats)
        for i in 0..<floats { buffer.pointer[i] = Float(i % 100) * 1e-3 }
        let bucket = max(1, Int(bucketMb * 1_048_576 / 4))
        let schedule = BucketSchedule(count: floats, bucketFloats: bucket)
        let sequential = BucketedAllReduce(comm: comm, base: buffer.pointer, schedule: schedule, overlap: false)
        let threaded = BucketedAllReduce(comm: comm, base: buffer.pointer, schedule: schedule, overlap: true)
        func best(_ body: () -> Void) -> Double {
            var b = Double.infinity
            for _ in 0..<repeats {
                comm.barrier()
                let t0 = Runtime.now()
                body()
                comm.barrier()
                b = min(b, Runtime.now() - t0)
            }
            return b
        }
        let plain = best { comm.allReduceSum(buffer.pointer, count: floats) }
        let seq = best { sequential.begin(); sequential.finish() }
        let thr = best { threaded.begin(); threaded.ready(throughRegion: 0); threaded.finish() }
        guard comm.isRoot else { return }
        let bytes = Double(floats) * 4
        if json {
            print(JSONValue.object(["ranks": .number(Double(comm.size)), "floats": .number(Double(floats)),
                                    "buckets": .number(Double(sequential.buckets.count)), "one_allreduce_s": .number(plain),
                                    "calling_thread_s": .number(seq), "communication_thread_s": .number(thr)]).json)
            return
        }
        print("\(comm.size) rank(s), \(Format.bytes(bytes)) of float32, buckets of \(bucketMb) MB (\(sequential.buckets.count) buckets)")
        for (name, t) in [("one MPI_Allreduce", plain), ("buckets, calling thread", seq), ("buckets, communication thread", thr)] {
            print(String(format: "  %-30@ %8.1f ms  %6.2f GB/s (bytes / time)", name as NSString, t * 1000, bytes / t / 1e9))
        }
    }
}
