import Checkpoint
import Foundation
import Testing
import Training

/// `Launch/sim-cluster` as users run it: simulated nodes (network namespaces with their own hostnames, tc-shaped
/// links) running `Launch/mpirun-cluster` over TCP. Root only (namespaces, veth, tc); CI runs as root.
struct SimCluster {
    static let script = repoRoot + "/Launch/sim-cluster"
    let name: String, dir: String

    /// `name` becomes the node prefix: nodes NAME-0 (head, runs mpirun) ... NAME-(nodes-1).
    init(_ test: String, dir: String) {
        name = "t\(test.prefix(4))\(getpid() % 10000)"
        self.dir = dir
    }

    var logPath: String { dir + "/sim-cluster-\(name).txt" }
    var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// One rank and one thread per node; `rate` is the link rate ("none": unshaped).
    func start(nodes: Int = 2, rate: String, _ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.script)
        p.arguments = ["--name", name, "--nodes", String(nodes), "--rate", rate, "--",
                       "--ranks-per-node", "1", "--threads-per-rank", "1", "--"] + args
        var env = CLI.environment
        env["GPT2DIST_BIN"] = CLI.binary
        p.environment = env
        try CLI.startAsFromShell(p, logPath: logPath)
        return p
    }

    /// Process ids in node `i`'s namespace, with their command names.
    func processes(node i: Int) -> [(pid: Int32, command: String)] {
        let pids = shell("ip netns pids \(name)-\(i)").split(separator: "\n").compactMap { Int32($0) }
        return pids.map { pid in
            let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            return (pid, comm.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Whether anything this cluster created is left behind (namespaces, /etc/netns entries).
    var leftovers: String {
        shell("ip netns list | grep -w '^\(name)-[0-9a-z]*' ; ls -d /etc/netns/\(name)-* 2>/dev/null")
    }
}

func shell(_ command: String) -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return "" }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Waits until the run's metrics hold at least `steps` steps (false on timeout or if `p` ended).
func waitForLoggedSteps(_ out: String, _ steps: Int, while p: Process, seconds: Double = 120) -> Bool {
    waitForLoggedSteps(out, steps, seconds: seconds, until: { !p.isRunning })
}

/// Waits until the run's metrics hold at least `steps` steps (false on timeout or once `ended` says the job ended).
func waitForLoggedSteps(_ out: String, _ steps: Int, seconds: Double, until ended: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if ((try? MetricsLog.read(path: out + "/metrics.h5"))?["step"]?.count ?? 0) >= steps { return true }
        if ended() { return false }
        usleep(100_000)
    }
    return false
}

@Suite(.serialized, .enabled(if: getuid() == 0, "needs root: network namespaces, veth links and tc"))
struct SimulatedClusterTests {
    /// The tiny model's losses across two simulated nodes (TCP between them) equal a single-node np 2 run.
    @Test func twoNodesMatchOneNodeWithTwoRanks() throws {
        let (dir, cfg) = try tinyRunWithNp2Reference("sim-equal", dropRate: 0.1, steps: 12)
        let sim = SimCluster("equal", dir: dir)
        let p = try sim.start(rate: "1gbit", trainArgs(config: cfg, out: dir + "/sim", steps: 12))
        #expect(CLI.wait(p, seconds: 180), "sim-cluster did not finish: \(sim.output.suffix(800))")
        #expect(p.terminationStatus == 0, "sim-cluster exit \(p.terminationStatus): \(sim.output.suffix(800))")
        #expect(sim.output.contains("2 node(s) \(sim.name)-0 \(sim.name)-1"), "\(sim.output.prefix(400))")
        // Across hosts the binary itself makes Open MPI's TCP transport use both directions, and says so once.
        #expect(sim.output.components(separatedBy: "btl_tcp_flags=send,inplace,need-ack,need-csum").count == 2, "\(sim.output.prefix(1200))")
        expectClose(try losses(dir + "/sim"), try losses(dir + "/np2"), rel: 1e-5, "2 simulated nodes vs np 2")
        #expect(sim.leftovers.isEmpty, "left behind: \(sim.leftovers)")
    }

    /// Every process of one node is killed: the job ends within 60 s, naming the lost node, and `--resume` on the
    /// remaining node continues to the losses of an uninterrupted run.
    @Test func lostNodeEndsTheJobAndTheRunResumesOnTheOtherNode() throws {
        let steps = 30
        let (dir, cfg) = try tinyRunWithNp2Reference("sim-lost", dropRate: 0, steps: steps)
        let out = dir + "/sim", sim = SimCluster("lost", dir: dir)
        // A slow link (about 0.3 s per step) so that the node dies mid-run, after a checkpoint.
        let p = try sim.start(rate: "20mbit", trainArgs(config: cfg, out: out, steps: steps, extra: ["--ckpt-every", "5"]))
        guard waitForLoggedSteps(out, 12, while: p) else {
            CLI.wait(p, seconds: 1)
            Issue.record("the job did not reach step 12: \(sim.output.suffix(800))")
            return
        }
        let victims = sim.processes(node: 1)
        #expect(!victims.isEmpty, "no processes in \(sim.name)-1")
        let killed = Date()
        for v in victims { kill(v.pid, SIGKILL) }
        let ended = CLI.wait(p, seconds: 60)
        #expect(ended, "the job still ran 60 s after node \(sim.name)-1 was lost: \(sim.output.suffix(800))")
        #expect(p.terminationStatus != 0)
        #expect(sim.output.contains("\(sim.name)-1"), "the message does not name the lost node: \(sim.output.suffix(800))")
        print("lost node: job ended \(String(format: "%.1f", Date().timeIntervalSince(killed))) s after the kill")
        #expect(sim.leftovers.isEmpty, "left behind: \(sim.leftovers)")

        let resumed = try CLI.run(ranks: 0, trainArgs(config: cfg, out: out, steps: steps, extra: ["--ckpt-every", "5", "--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("resumed from"), "\(resumed.stdout.prefix(600))")
        expectClose(try lossesPerStep(out), try losses(dir + "/np2"), rel: 1e-5, "killed at step >= 12, resumed on one node")
    }

    /// SIGTERM to the launcher (what a user's Ctrl-C or a batch system sends) and to mpirun itself: the ranks on
    /// both nodes stop after their step, rank 0 checkpoints every logged step, and the launcher exits 0.
    @Test(arguments: ["launcher", "mpirun"]) func sigtermLeavesACheckpointAndExitsZero(target: String) throws {
        let dir = tmpDir("sim-term-\(target)")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/sim", sim = SimCluster("term\(target.prefix(1))", dir: dir)
        let p = try sim.start(rate: "20mbit", trainArgs(config: cfg, out: out, steps: 100_000))
        guard waitForLoggedSteps(out, 5, while: p) else {
            CLI.wait(p, seconds: 1)
            Issue.record("the job did not reach step 5: \(sim.output.suffix(800))")
            return
        }
        if target == "mpirun" {
            let mpirun = sim.processes(node: 0).filter { $0.command == "mpirun" }
            #expect(mpirun.count == 1, "\(sim.processes(node: 0))")
            for m in mpirun { kill(m.pid, SIGTERM) }
        } else {
            kill(p.processIdentifier, SIGTERM)
        }
        // Through mpirun the ranks get SIGTERM after odls_base_sigkill_timeout (10 s), and mpirun returns 2 x that later.
        #expect(CLI.wait(p, seconds: 90), "still running 90 s after SIGTERM: \(sim.output.suffix(800))")
        #expect(p.terminationStatus == 0, "exit \(p.terminationStatus): \(sim.output.suffix(800))")
        let logged = try MetricsLog.read(path: out + "/metrics.h5")["step"]?.max() ?? 0
        guard let ckpt = TrainCheckpoint.newestComplete(directory: out) else {
            Issue.record("no checkpoint after SIGTERM to the \(target): \(sim.output.suffix(800))")
            return
        }
        let step = try ModelFile.load(path: ckpt).step
        #expect(Double(step) >= logged, "checkpoint at step \(step) but steps up to \(logged) were logged")
        #expect(sim.leftovers.isEmpty, "left behind: \(sim.leftovers)")
    }

    /// Setup faults and an unreachable host: one line, non-zero, nothing left behind.
    @Test func badSetupsAreOneLineErrorsAndLeaveNothing() throws {
        let dir = tmpDir("sim-bad")
        let name = SimCluster("bad", dir: dir).name
        // A hostfile naming a host that does not exist: mpirun-cluster asks every host through mpirun's launch agent first.
        let hostfile = dir + "/hosts"
        try "\(name)-0 slots=1\nnosuchhost slots=1\n".write(toFile: hostfile, atomically: true, encoding: .utf8)
        let unreachable = ["--shell", "--", repoRoot + "/Launch/mpirun-cluster", "--hostfile", hostfile, "--ranks-per-node", "1",
                           "--threads-per-rank", "1", "--", "bench-comm"]
        let cases: [(args: [String], needle: String)] = [
            (["--rate", "fast", "--shell", "--", "true"], "--rate"), (["--delay", "1ms", "--shell", "--", "true"], "netem"),
            (["--nodes", "0", "--shell", "--", "true"], "--nodes"), (["--burst", "1xb", "--rate", "1gbit", "--shell", "--", "true"], "shaping"),
            (unreachable, "cannot reach nosuchhost"),
        ]
        for (args, needle) in cases {
            let sim = SimCluster("bad", dir: dir)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: SimCluster.script)
            p.arguments = ["--name", sim.name] + args
            p.environment = CLI.environment
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            // sim-cluster's own banner comes first once the nodes exist; the error is the one line after it.
            let lines = text.split(separator: "\n").filter { !$0.hasPrefix("sim-cluster: \(2) node(s)") }
            // --delay works where the kernel has sch_netem: then there is no error to check.
            if needle == "netem" && p.terminationStatus == 0 { continue }
            #expect(p.terminationStatus != 0, "\(args): exit 0")
            #expect(lines.count == 1 && text.contains("error") && text.contains(needle), "\(args): \(text)")
            #expect(sim.leftovers.isEmpty, "\(args): left behind: \(sim.leftovers)")
        }
    }
}
