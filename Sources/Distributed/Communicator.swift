import CMPI
import Foundation

/// MPI behind a small interface over flat Float/Double buffers. Without a launcher (no mpirun/srun
/// environment) it is a single rank and never touches MPI, so every command also runs as a plain process.
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let usesMPI: Bool
    /// Whether MPI allows calls from several threads at once (MPI_THREAD_MULTIPLE), which the communication
    /// thread that overlaps backward needs. Always true for a single process.
    public let threadMultiple: Bool
    /// Sums go through non-blocking calls completed by a test-and-sleep loop instead of blocking ones (see
    /// `waitSleeping`); for a helper thread that shares its core with compute. Its reduce-scatter and all-gather
    /// are `ringReduceScatter` and `ringAllGather`.
    public let sleepsWhileWaiting: Bool
    let comm: MPI_Comm?

    private init(rank: Int, size: Int, usesMPI: Bool, threadMultiple: Bool, comm: MPI_Comm?, sleepsWhileWaiting: Bool = false) {
        self.rank = rank; self.size = size; self.usesMPI = usesMPI; self.threadMultiple = threadMultiple; self.comm = comm
        self.sleepsWhileWaiting = sleepsWhileWaiting
    }

    /// True when started by mpirun, srun or another PMI launcher.
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PMIX_MAPPING_SERV"].contains { env[$0] != nil }
    }

    nonisolated(unsafe) private static var world: Communicator?

    /// Open MPI's TCP transport settings gpt2-dist uses unless OMPI_MCA_btl_tcp_flags is set (see `initialize`).
    public static let tcpFlags = "send,inplace,need-ack,need-csum"
    /// Whether this process set them (the user had not), so that a run across hosts can say so.
    nonisolated(unsafe) public private(set) static var setsTCPFlags = false

    /// Initialises MPI once (with MPI_THREAD_MULTIPLE, so a communication thread can overlap backward)
    /// or returns a single-rank communicator when not launched by MPI.
    public static func initialize() -> Communicator {
        if let w = world { return w }
        guard launchedByMPI else {
            let c = Communicator(rank: 0, size: 1, usesMPI: false, threadMultiple: true, comm: gd_mpi_comm_null())
            world = c
            return c
        }
        // The communication thread's non-blocking all-reduce: libnbc's default for two ranks sends each bucket one
        // way and back (reduce, then broadcast); the ring sends both halves at once, both directions busy (measured
        // over 2 Gbit/s links: exposed communication 1,060 -> 260 ms per step). A user's own setting wins.
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0)
        // Open MPI's TCP transport emulates RDMA "put" by default: each exchange of a ring moves one direction at a
        // time (measured over 2 Gbit/s links: 25 MB buckets at half the link rate, ZeRO-1's step 1.13x the plain
        // one). Plain sends use both directions at wire speed (1.03x). A user's own setting wins.
        if getenv("OMPI_MCA_btl_tcp_flags") == nil {
            setenv("OMPI_MCA_btl_tcp_flags", tcpFlags, 1)
            setsTCPFlags = true
        }
        var provided: Int32 = 0
        guard MPI_Init_thread(nil, nil, gd_mpi_thread_multiple(), &provided) == gd_mpi_success() else {
            FileHandle.standardError.write(Data("gpt2-dist: error: MPI_Init_thread failed (is the launcher's MPI the one gpt2-dist was built with?)\n".utf8))
            exit(1)
        }
        let w = gd_mpi_comm_world()
        MPI_Comm_set_errhandler(w, gd_mpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(w, &r)
        MPI_Comm_size(w, &s)
        let c = Communicator(rank: Int(r), size: Int(s), usesMPI: true,
                             threadMultiple: provided >= gd_mpi_thread_multiple(), comm: w)
        world = c
        return c
    }

    /// A communicator with the same ranks whose traffic cannot mix with this one's (for a helper thread);
    /// nil when MPI cannot make one. Collective: every rank must call it.
    public func duplicate(sleepsWhileWaiting: Bool = false) -> Communicator? {
        guard usesMPI else { return self }
        var d = gd_mpi_comm_null()
        guard MPI_Comm_dup(comm, &d) == gd_mpi_success() else { return nil }
        MPI_Comm_set_errhandler(d, gd_mpi_errors_return())
        return Communicator(rank: rank, size: size, usesMPI: true, threadMultiple: threadMultiple, comm: d,
                            sleepsWhileWaiting: sleepsWhileWaiting)
    }

    /// Completes a non-blocking call without spinning: MPI_Test, then a sleep that grows from 20 µs to 1 ms while
    /// it is not done. A blocking call busy-polls Open MPI's progress engine for as long as the transfer takes; on
    /// the communication thread, which shares its core with backward, that spin slowed 2 Gbit/s steps by ~25%. Each
    /// test also moves the transfer on, so the pause is a trade: every wake-up preempts backward's kernels, and too
    /// few tests leave the link idle. 1 ms is 250 KB at 2 Gbit/s, well inside TCP's socket buffers. Measured (124M,
    /// 2 nodes x 1 core, 2 Gbit/s, ms/step): 7.4 s at 50 µs; 6.1-7.0 s at 200 µs (five runs); 6.1-6.3 s at 1 ms;
    /// 6.4 s at 2 ms; unshaped links the same at 200 µs and 1 ms.
    static let maxPause: UInt32 = 1000

    private func waitSleeping(_ requests: inout [MPI_Request?], _ what: String) {
        var done: Int32 = 0
        var pause: UInt32 = 20
        while true {
            check(MPI_Testall(Int32(requests.count), &requests, &done, gd_mpi_statuses_ignore()), what)
            if done != 0 { return }
            usleep(pause)
            pause = min(pause * 2, Self.maxPause)
        }
    }

    public var isRoot: Bool { rank == 0 }

    private func check(_ rc: Int32, _ what: String) {
        if rc != gd_mpi_success() { abort(message: "MPI \(what) failed (code \(rc)); a rank probably died") }
    }

    /// In-place sum over ranks.
    public func allReduceSum(_ p: UnsafeMutablePointer<Float>, count: Int) {
        guard usesMPI, size > 1, count > 0 else { return }
        var done = 0
        while done < count {  // MPI counts are Int32
            let n = min(count - done, Int(Int32.max))
            if sleepsWhileWaiting {
                var requests: [MPI_Request?] = [gd_mpi_request_null()]
                check(MPI_Iallreduce(gd_mpi_in_place(), p + done, Int32(n), gd_mpi_float(), gd_mpi_sum(), comm, &requests[0]), "allreduce")
                waitSleeping(&requests, "allreduce")
            } else {
                check(MPI_Allreduce(gd_mpi_in_place(), p + done, Int32(n), gd_mpi_float(), gd_mpi_sum(), comm), "allreduce")
            }
            done += n
        }
    }

    public func allReduceSum(_ values: inout [Double]) {
        guard usesMPI, size > 1 else { return }
        check(MPI_Allreduce(gd_mpi_in_place(), &values, Int32(values.count), gd_mpi_double(), gd_mpi_sum(), comm), "allreduce")
    }

    public func allReduceMax(_ values: inout [Double]) {
        guard usesMPI, size > 1 else { return }
        check(MPI_Allreduce(gd_mpi_in_place(), &values, Int32(values.count), gd_mpi_double(), gd_mpi_max(), comm), "allreduce")
    }

    public func allReduceMin(_ values: inout [Double]) {
        guard usesMPI, size > 1 else { return }
        check(MPI_Allreduce(gd_mpi_in_place(), &values, Int32(values.count), gd_mpi_double(), gd_mpi_min(), comm), "allreduce")
    }

    public func broadcast(_ p: UnsafeMutablePointer<Float>, count: Int, root: Int = 0) {
        guard usesMPI, size > 1 else { return }
        var done = 0
        while done < count {
            let n = min(count - done, Int(Int32.max))
            check(MPI_Bcast(p + done, Int32(n), gd_mpi_float(), Int32(root), comm), "broadcast")
            done += n
        }
    }

    public func broadcast(_ values: inout [Double], root: Int = 0) {
        guard usesMPI, size > 1 else { return }
        check(MPI_Bcast(&values, Int32(values.count), gd_mpi_double(), Int32(root), comm), "broadcast")
    }

    /// In-place sum over ranks of `buffer` (sum of counts floats, rank r's part following those of ranks < r);
    /// afterwards rank r's summed part sits at the *start* of `buffer` (MPI_IN_PLACE semantics).
    public func reduceScatterSumInPlace(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) {
        guard usesMPI, size > 1 else { return }
        let c = counts.map { Int32($0) }
        check(MPI_Reduce_scatter(gd_mpi_in_place(), buffer, c, gd_mpi_float(), gd_mpi_sum(), comm), "reduce-scatter")
    }

    /// Ring reduce-scatter in place, for the communication thread (non-blocking sends and receives, sleeping waits):
    /// rank r ends with the sum of block r (counts[r] floats at buffer + offsets[r]) at that place. N−1 steps, each
    /// sending one block to the next rank and adding the previous rank's into its own, so every link carries
    /// (N−1)/N of the buffer in each direction at once. (libnbc's non-blocking reduce-scatter reduces everything to
    /// rank 0 and scatters it back: one direction at a time, 1.5x the bytes.) `scratch` holds the largest block.
    public func ringReduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], offsets: [Int],
                                  scratch: UnsafeMutablePointer<Float>) {
        guard usesMPI, size > 1 else { return }
        let right = (rank + 1) % size, left = (rank + size - 1) % size
        for step in 0..<(size - 1) {
            let send = (rank - 1 - step + 2 * size) % size, receive = (rank - 2 - step + 2 * size) % size
            exchange(send: buffer + offsets[send], sendCount: counts[send], to: right,
                     receive: scratch, receiveCount: counts[receive], from: left, "reduce-scatter")
            let into = buffer + offsets[receive]
            for i in 0..<counts[receive] { into[i] += scratch[i] }
        }
    }

    /// Ring all-gather in place, the inverse: block q (counts[q] floats at buffer + offsets[q]) from rank q to all.
    public func ringAllGather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], offsets: [Int]) {
        guard usesMPI, size > 1 else { return }
        let right = (rank + 1) % size, left = (rank + size - 1) % size
        for step in 0..<(size - 1) {
            let send = (rank - step + size) % size, receive = (rank - step - 1 + 2 * size) % size
            exchange(send: buffer + offsets[send], sendCount: counts[send], to: right,
                     receive: buffer + offsets[receive], receiveCount: counts[receive], from: left, "all-gather")
        }
    }

    /// One send and one receive at once, completed with sleeping waits.
    private func exchange(send: UnsafeMutablePointer<Float>, sendCount: Int, to: Int, receive: UnsafeMutablePointer<Float>,
                          receiveCount: Int, from: Int, _ what: String) {
        var requests: [MPI_Request?] = [gd_mpi_request_null(), gd_mpi_request_null()]
        check(MPI_Irecv(receive, Int32(receiveCount), gd_mpi_float(), Int32(from), 7, comm, &requests[0]), what)
        check(MPI_Isend(send, Int32(sendCount), gd_mpi_float(), Int32(to), 7, comm, &requests[1]), what)
        waitSleeping(&requests, what)
    }

    /// In-place all-gather of variable blocks: rank r's counts[r] floats sit at buffer + displacements[r].
    public func allGatherInPlace(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], displacements: [Int]) {
        guard usesMPI, size > 1 else { return }
        let c = counts.map { Int32($0) }, d = displacements.map { Int32($0) }
        check(MPI_Allgatherv(gd_mpi_in_place(), 0, gd_mpi_float(), buffer, c, d, gd_mpi_float(), comm), "allgather")
    }

    /// Root receives counts[r] floats from each rank r at out + displacements[r].
    public func gather(_ send: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>?,
                       counts: [Int], displacements: [Int], root: Int = 0) {
        guard usesMPI, size > 1 else {
            if let out, count > 0 { memcpy(out + displacements[0], send, count * 4) }
            return
        }
        let c = counts.map { Int32($0) }, d = displacements.map { Int32($0) }
        check(MPI_Gatherv(send, Int32(count), gd_mpi_float(), out, c, d, gd_mpi_float(), Int32(root), comm), "gather")
    }

    /// Every rank's bytes, in rank order, on `root` (nil elsewhere): for records that vary in length (traces).
    public func gatherBytes(_ bytes: [UInt8], root: Int = 0) -> [[UInt8]]? {
        guard usesMPI, size > 1 else { return [bytes] }
        var counts = [Int32](repeating: 0, count: size)
        var mine = Int32(bytes.count)
        check(MPI_Gather(&mine, 1, gd_mpi_int(), &counts, 1, gd_mpi_int(), Int32(root), comm), "gather counts")
        var displacements = [Int32](repeating: 0, count: size)
        for r in 1..<size { displacements[r] = displacements[r - 1] + counts[r - 1] }
        var all = [UInt8](repeating: 0, count: rank == root ? Int(counts.reduce(0, +)) : 0)
        bytes.withUnsafeBufferPointer { b in
            check(MPI_Gatherv(b.baseAddress, mine, gd_mpi_byte(), &all, counts, displacements, gd_mpi_byte(), Int32(root), comm), "gather bytes")
        }
        guard rank == root else { return nil }
        return (0..<size).map { r in Array(all[Int(displacements[r])..<Int(displacements[r] + counts[r])]) }
    }

    /// Root sends counts[r] floats from buffer + displacements[r] to each rank r.
    public func scatter(_ buffer: UnsafePointer<Float>?, counts: [Int], displacements: [Int],
                        into out: UnsafeMutablePointer<Float>, count: Int, root: Int = 0) {
        guard usesMPI, size > 1 else {
            if let buffer, count > 0 { memcpy(out, buffer + displacements[0], count * 4) }
            return
        }
        let c = counts.map { Int32($0) }, d = displacements.map { Int32($0) }
        check(MPI_Scatterv(buffer, c, d, gd_mpi_float(), out, Int32(count), gd_mpi_float(), Int32(root), comm), "scatter")
    }

    public func barrier() {
        guard usesMPI, size > 1 else { return }
        check(MPI_Barrier(comm), "barrier")
    }

    public func finalize() {
        guard usesMPI else { return }
        MPI_Finalize()
    }

    /// Ends every rank of the job: the way out when ranks can no longer agree (never leave the others hanging).
    public func abort(message: String, code: Int32 = 1) -> Never {
        FileHandle.standardError.write(Data("gpt2-dist: error (rank \(rank)): \(message)\n".utf8))
        if usesMPI && size > 1 { MPI_Abort(gd_mpi_comm_world(), code) }
        exit(code)
    }

    /// Collective agreement on an error: every rank passes its own (or nil); if any rank failed,
    /// the lowest failing rank's message is printed once and every rank gets a non-nil message back.
    public func agreeOnFailure(_ message: String?) -> String? {
        var lowest = [message == nil ? Double(size) : Double(rank)]
        allReduceMin(&lowest)
        let failing = Int(lowest[0])
        guard failing < size else { return nil }
        return failing == rank ? message! : "rank \(failing) failed"
    }
}
