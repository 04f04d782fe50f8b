import Autograd
import Common
import Foundation

/// Process-level setup shared by every command: the OpenBLAS kernel, thread counts, resource figures.
public enum Runtime {
    /// Debian's OpenBLAS 0.3.21 does not recognise recent Intel CPUs and falls back to its SSE3 "Prescott"
    /// kernel (~5x slower). The kernel is chosen when the library loads, before main, so when
    /// OPENBLAS_CORETYPE is unset we pick one from the CPU's features and re-exec this program once.
    public static func ensureOpenBLASKernel() {
        let env = ProcessInfo.processInfo.environment
        guard env["OPENBLAS_CORETYPE"] == nil, env["GPT2DIST_REEXECED"] == nil else { return }
        guard let core = preferredCoreType() else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv("GPT2DIST_REEXECED", "1", 1)
        let args = CommandLine.arguments
        var cargs = args.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &cargs)
        // exec failed: carry on with whatever kernel OpenBLAS picked.
    }

    /// SkylakeX for AVX-512 (F, BW, DQ, VL), Haswell for AVX2 + FMA, nil otherwise (let OpenBLAS decide).
    public static func preferredCoreType() -> String? {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
        let flags = Set(line.split(separator: " ").map(String.init))
        if ["avx512f", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains) { return "SkylakeX" }
        if ["avx2", "fma"].allSatisfy(flags.contains) { return "Haswell" }
        return nil
    }

    /// Cores of this node (online), whatever this process is bound to.
    public static var nodeCores: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Threads per rank: explicit, else cores shared evenly among the ranks on this node.
    public static func defaultThreads(localRanks: Int) -> Int {
        max(1, nodeCores / max(localRanks, 1))
    }

    /// Ranks on this node, from the launcher's environment.
    public static var localRanks: Int {
        let env = ProcessInfo.processInfo.environment
        for k in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"] {
            if let v = env[k], let n = Int(v.split(separator: "(").first ?? ""), n > 0 { return n }
        }
        return 1
    }

    /// Sets BLAS and kernel threads (always explicitly: mpirun's core binding changes OpenBLAS's default).
    public static func setThreads(_ n: Int) {
        BLAS.threads = n
        Parallel.threads = n
    }

    /// A requested thread count (nil: the default) must lie within this node's cores.
    public static func checkThreads(_ requested: Int?) throws {
        guard let t = requested else { return }
        guard t >= 1 && t <= nodeCores else {
            throw GPT2DistError(.usage, "--threads must be between 1 and the \(nodeCores) cores of this machine, got \(t)")
        }
    }

    /// Sets the requested thread count (checked), or cores / ranks on this node; returns it.
    @discardableResult
    public static func applyThreads(_ requested: Int?) throws -> Int {
        try checkThreads(requested)
        let n = max(1, requested ?? defaultThreads(localRanks: localRanks))
        setThreads(n)
        return n
    }

    /// One line naming the BLAS kernel and thread count, for startup banners.
    public static var blasDescription: String {
        var s = "OpenBLAS \(BLAS.coreName) kernel, \(BLAS.threads) thread(s)"
        // Respect a kernel set in the environment, but say when the CPU could run a faster one.
        if let best = preferredCoreType(), best == "SkylakeX", BLAS.coreName != "SkylakeX" {
            s += " (this CPU supports SkylakeX: unset OPENBLAS_CORETYPE to use it)"
        }
        return s
    }

    /// Peak resident set size of this process in bytes.
    public static var peakRSS: Int {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Int(u.ru_maxrss) * 1024
    }

    public static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Measured sgemm rate (FLOP/s) at the current thread count on GPT-2-like shapes (M=1024, K=768, N=3072),
    /// best of several runs of ~`seconds` in total.
    public static func measureSgemmPeak(seconds: Double = 0.4) -> Double {
        measureGemmPeak(Matmul.fp32, seconds: seconds)
    }

    /// The same measurement through `matmul` (bf16: its engine on operands converted beforehand, as the weights' bf16
    /// copy and prepared activations are).
    public static func measureGemmPeak(_ matmul: Matmul, seconds: Double = 0.4) -> Double {
        let m = 1024, k = 768, n = 3072
        let a = FloatBuffer(count: m * k), b = FloatBuffer(count: k * n), c = FloatBuffer(count: m * n)
        for i in 0..<a.count { a.pointer[i] = Float(i % 7) * 0.01 }
        for i in 0..<b.count { b.pointer[i] = Float(i % 5) * 0.01 }
        matmul.reserve(floats: max(m * k, k * n), slots: 2)
        let pa = matmul.prepare(a.pointer, rows: m, cols: k, ld: k, slot: 0)
        let pb = matmul.prepare(b.pointer, rows: k, cols: n, ld: n, slot: 1)
        matmul.gemm(.none, .none, m: m, n: n, k: k, a: pa, b: pb, beta: 0, c: c.pointer, ldc: n)
        var best = 0.0
        let start = now()
        repeat {
            let t0 = now()
            matmul.gemm(.none, .none, m: m, n: n, k: k, a: pa, b: pb, beta: 0, c: c.pointer, ldc: n)
            best = max(best, 2.0 * Double(m * n * k) / (now() - t0))
        } while now() - start < seconds
        return best
    }

}
