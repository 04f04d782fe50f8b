import Checkpoint
import Foundation
import GPT2
import Testing
import Training

/// Commands and records through the release binary: the collectives against a direct sum at np 2 and 3, a drifted
/// replica caught by the checksum, status.json and metrics as scripts read them, `plot` and `import-hf`.
@Suite(.serialized) struct CommandTests {
    /// Every reduction and all-gather the trainer uses, on uneven bucket parts (100,003 floats, 4 buckets).
    @Test(arguments: [2, 3]) func collectivesEqualADirectSum(ranks: Int) throws {
        let r = try CLI.run(ranks: ranks, ["bench-comm", "--verify", "--floats", "100003", "--bucket-mb", "0.1", "--repeats", "1"])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let verdicts = r.stdout.split(separator: "\n").filter { $0.hasPrefix("verify: ") }
        #expect(verdicts.count == 7 && verdicts.allSatisfy { $0.hasSuffix(": ok") }, "\(r.stdout)")
    }

    /// One rank's parameters changed after step 3: the checksum at step 4 stops the run on every rank with one
    /// line, and status.json records the failure; with the check off the same run goes on.
    @Test func aDriftedReplicaIsCaught() throws {
        let dir = tmpDir("drift")
        let cfg = try writeConfig(dir, dropRate: 0)
        let drift = ["GPT2DIST_INJECT_DRIFT": "3"]
        let caught = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/checked", steps: 6, extra: ["--checksum-every", "2"]),
                                 environment: drift)
        #expect(caught.status != 0)
        #expect(caught.stderr.contains("ranks hold different parameters"), "\(caught.stderr)")
        let status = try RunStatus.read(runDirectory: dir + "/checked")
        #expect(status?.state == .failed && status?.step == 4 && status?.reason.contains("different parameters") == true, "\(String(describing: status))")
        let unchecked = try CLI.run(ranks: 2, trainArgs(config: cfg, out: dir + "/unchecked", steps: 6, extra: ["--checksum-every", "0"]),
                                    environment: drift)
        #expect(unchecked.status == 0, "\(unchecked.stderr)")
    }

    /// What launch scripts read: the status through `gpt2-dist status`, the per-step records through `metrics`.
    @Test func statusAndMetricsAreRecordsNotLogLines() throws {
        let dir = tmpDir("records")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let r = try CLI.run(ranks: 2, trainArgs(config: cfg, out: out, steps: 4, extra: ["--ckpt-every", "3", "--zero", "1"]))
        #expect(r.status == 0, "\(r.stderr)")
        func field(_ name: String) throws -> String {
            try CLI.run(["status", out, "--field", name]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try field("state") == "finished")
        #expect(try field("checkpoint_step") == "4" && field("checkpoint") == TrainCheckpoint.fileName(step: 4))
        #expect(try field("ranks") == "2" && field("steps") == "4")
        let status = try #require(try RunStatus.read(runDirectory: out))
        #expect(status.peakRSSBytes?.count == 2 && status.peakRSSBytes!.allSatisfy { $0 > 10_000_000 })
        let csv = try CLI.run(["metrics", out]).stdout.split(separator: "\n")
        #expect(csv.first.map(String.init) == MetricsLog.trainSeries.joined(separator: ","))
        #expect(csv.count == 5, "\(csv)")
        let comm = MetricsLog.trainSeries.firstIndex(of: "comm_ms")!, exposed = MetricsLog.trainSeries.firstIndex(of: "exposed_ms")!
        for row in csv.dropFirst() {
            let cells = row.split(separator: ",", omittingEmptySubsequences: false).map { Double($0) }
            #expect(cells.count == MetricsLog.trainSeries.count && cells.allSatisfy { $0 != nil }, "\(row)")
            #expect((cells[comm] ?? 0) > 0, "two ranks communicate every step: \(row)")  // ZeRO-1's collectives
            #expect((cells[exposed] ?? -1) >= 0)
        }
        // A directory without a run: one line, exit 1.
        let none = try CLI.run(["status", dir])
        #expect(none.status == 1 && none.stderr.contains("no status.json"), "\(none.stderr)")
        // Resumed and stopped by a signal: "stopped", with the checkpoint it stopped at.
        let stop = CLI.process(ranks: 0, trainArgs(config: cfg, out: out, steps: 100_000, extra: ["--resume", "--ckpt-every", "100000"]))
        let log = dir + "/stop.log"
        try CLI.startAsFromShell(stop, logPath: log)
        #expect(waitUntil(seconds: 60) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("step 8/") })
        kill(stop.processIdentifier, SIGTERM)
        stop.waitUntilExit()
        #expect(stop.terminationStatus == 0)
        let stopped = try #require(try RunStatus.read(runDirectory: out))
        #expect(stopped.state == .stopped && stopped.reason == "SIGTERM" && stopped.checkpointStep == stopped.step && stopped.step >= 8,
                "\(stopped)")
    }

    /// `plot` redraws loss.svg from metrics.h5; `import-hf` writes a checkpoint equal to the Hugging Face model and
    /// never overwrites a file.
    @Test func plotAndImportHF() throws {
        let dir = tmpDir("plot-import")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        #expect(try CLI.run(trainArgs(config: cfg, out: out, steps: 3)).status == 0)
        try FileManager.default.removeItem(atPath: out + "/loss.svg")
        let plot = try CLI.run(["plot", out])
        #expect(plot.status == 0, "\(plot.stderr)")
        let svg = try String(contentsOfFile: out + "/loss.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("<path") && svg.contains("run"), "\(svg.prefix(300))")
        let noRun = try CLI.run(["plot", dir + "/nothing"])
        #expect(noRun.status == 1 && noRun.stderr.split(separator: "\n").count == 1, "\(noRun.stderr)")

        let h5 = dir + "/imported.h5"
        let imported = try CLI.run(["import-hf", "--from", fixtures + "/tiny-gpt2/hf", "--out", h5])
        #expect(imported.status == 0, "\(imported.stderr)")
        let reference = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
        let (model, step) = try ModelFile.load(path: h5)
        #expect(step == 0 && model.config == reference.config)
        let count = model.parameters.count
        #expect(Array(UnsafeBufferPointer(start: model.parameters.values.pointer, count: count))
                == Array(UnsafeBufferPointer(start: reference.parameters.values.pointer, count: count)))
        let again = try CLI.run(["import-hf", "--from", fixtures + "/tiny-gpt2/hf", "--out", h5])
        #expect(again.status == 1 && again.stderr.contains("not overwriting"), "\(again.stderr)")
    }
}

/// `plot` through the release binary: several runs in one SVG, one legend entry each, against tokens (B·T per step
/// from the records), FLOPs (6·N·tokens, N from status.json) or time; bad input is one line.
@Suite(.serialized) struct PlotCommandTests {
    @Test func overlaysRunsOnEveryAxis() throws {
        let dir = tmpDir("plot")
        let cfg = try writeConfig(dir, dropRate: 0)
        for name in ["first", "second"] {
            #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/" + name, steps: 4, extra: ["--val", tinyTokens, "--eval-every", "2"])).status == 0)
        }
        let run = try LossPlot.RunCurves(runDirectory: dir + "/first")
        #expect(run.tokensPerStep == 4 * 32 && run.steps == [1, 2, 3, 4] && run.valSteps == [2, 4])
        let n = try #require(run.parameters)
        #expect(try run.x([2], .tokens) == [256] && run.x([2], .flops) == [6 * Double(n) * 256])
        let time = try run.x(run.steps, .time)
        #expect(zip(time, time.dropFirst()).allSatisfy { $0 < $1 } && time[1] == run.stepSeconds[0] + run.stepSeconds[1])
        for axis in LossPlot.XAxis.allCases {
            let out = dir + "/\(axis).svg"
            let r = try CLI.run(["plot", dir + "/first", dir + "/second", "--x", axis.rawValue, "--smooth", "0.5", "--out", out])
            #expect(r.status == 0, "\(axis): \(r.stderr)")
            let svg = try String(contentsOfFile: out, encoding: .utf8)
            #expect(svg.contains(">first<") && svg.contains(">second<") && svg.components(separatedBy: "<path").count - 1 == 6, "\(axis)")
        }
        #expect(try CLI.run(["plot", dir + "/first"]).status == 0 && FileManager.default.fileExists(atPath: dir + "/first/loss.svg"))
        // eval --baselines keeps the baselines in the checkpoint's run, whose plot draws them as dashed lines.
        let e = try CLI.run(["eval", "--checkpoint", dir + "/first", "--data", tinyTokens, "--batch-size", "2", "--seq-len", "16",
                             "--batches", "2", "--baselines", tinyTokens])
        #expect(e.status == 0, "\(e.stderr)")
        let b = try #require(RunBaselines.read(runDirectory: dir + "/first"))
        #expect(b.unigram.isFinite && b.bigram < b.unigram && b.step == 4 && b.trainTokens > 0)
        let svg = try String(contentsOfFile: dir + "/first/loss.svg", encoding: .utf8)
        #expect(svg.contains("unigram baseline") && svg.contains("bigram baseline") && svg.contains("stroke-dasharray"))
        expectOneLineError(try CLI.run(["plot", dir]), "plot of a directory without metrics.h5", mentioning: "no metrics.h5")
        expectOneLineError(try CLI.run(["plot", dir + "/first", "--x", "epochs"]), "plot --x epochs", mentioning: "--x")
        expectOneLineError(try CLI.run(["plot", dir + "/first", "--smooth", "1"]), "plot --smooth 1", mentioning: "--smooth")
    }
}

/// WSD through the release binary: a stable-phase checkpoint continued to a later end keeps every step it had and
/// decays over the new run's last fraction; a bad fraction is one line.
@Suite(.serialized) struct WSDCommandTests {
    @Test func stablePhaseCheckpointBranchesIntoALaterDecay() throws {
        let dir = tmpDir("wsd")
        let cfg = try writeConfig(dir, dropRate: 0)
        let wsd = ["--lr-schedule", "wsd", "--decay-fraction", "0.5", "--min-lr", "3e-4", "--decay-shape", "linear", "--ckpt-every", "4"]
        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/short", steps: 10, extra: wsd)).status == 0)
        let short = try MetricsLog.read(path: dir + "/short/metrics.h5")["lr"] ?? []
        // 10 steps, decay from step 5 (0-based): lr 3e-3 (after 2 warmup steps) then linear towards 3e-4.
        #expect(short.count == 10 && short[2...4].allSatisfy { $0 == 3e-3 } && short[5] == 3e-3 && short[9] < short[6])
        #expect(abs(short[9] - (3e-4 + (1 - 4.0 / 5) * 2.7e-3)) < 1e-9, "\(short)")
        // Branch the step-4 checkpoint (stable phase) into a 20-step run: steps 5...9 stay at 3e-3, the decay moves to 10.
        try FileManager.default.copyItem(atPath: dir + "/short", toPath: dir + "/long")
        let resumed = try CLI.run(trainArgs(config: cfg, out: dir + "/long", steps: 20,
                                            extra: ["--resume", dir + "/long/" + TrainCheckpoint.fileName(step: 4)]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let m = try MetricsLog.read(path: dir + "/long/metrics.h5")
        let long = MetricsLog.lastPerStep(m["step"] ?? [], m["lr"] ?? []).values
        #expect(long.count == 20 && Array(long[0..<4]) == Array(short[0..<4]), "\(long)")
        #expect(long[4...10].allSatisfy { $0 == 3e-3 } && abs(long[19] - (3e-4 + (1 - 9.0 / 10) * 2.7e-3)) < 1e-9, "\(long)")
        let bad = try CLI.run(trainArgs(config: cfg, out: dir + "/bad", steps: 2, extra: ["--lr-schedule", "wsd", "--decay-fraction", "0"]))
        #expect(bad.status == 1 && bad.stderr.contains("--decay-fraction") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
    }
}

/// bf16 mixed precision through the release binary: np 1 and np 2 agree as fp32 runs do, a resume is bit-identical,
/// ZeRO-1 and recompute train to nearly the same losses, and a bf16 run may go on in fp32 (said in one line).
@Suite(.serialized) struct PrecisionCommandTests {
    @Test func bf16AcrossRanksResumeZeroAndRecompute() throws {
        let dir = tmpDir("bf16")
        let cfg = try writeConfig(dir, dropRate: 0.1)
        let bf16 = ["--precision", "bf16"]
        for (name, ranks, extra) in [("np1", 0, [String]()), ("np2", 2, []), ("zero", 2, ["--zero", "1"]), ("recompute", 0, ["--recompute"]),
                                     ("threads", 0, ["--threads", "2"])] {
            let r = try CLI.run(ranks: ranks, trainArgs(config: cfg, out: dir + "/" + name, steps: 8, extra: bf16 + extra))
            #expect(r.status == 0, "\(name): \(r.stderr)")
        }
        let np1 = try losses(dir + "/np1")
        #expect(np1.count == 8 && np1.last! < np1.first!, "\(np1)")
        expectClose(try losses(dir + "/np2"), np1, rel: 1e-4, "bf16 np 2 vs np 1")
        expectClose(try losses(dir + "/zero"), np1, rel: 1e-4, "bf16 ZeRO-1 vs np 1")
        expectClose(try losses(dir + "/recompute"), np1, rel: 1e-3, "bf16 recompute vs np 1")
        expectClose(try losses(dir + "/threads"), np1, rel: 1e-4, "bf16 on 2 threads (attention's workers) vs 1")
        // The same run in fp32 is another run: bf16 really changes the numbers, a little.
        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/fp32", steps: 8)).status == 0)
        let fp32 = try losses(dir + "/fp32")
        #expect(fp32 != np1)
        expectClose(np1, fp32, rel: 2e-2, "bf16 vs fp32")
        // Stopped at step 4 and resumed (the stored settings carry --precision bf16): bit-identical to straight.
        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/split", steps: 4, extra: bf16)).status == 0)
        let resumed = try CLI.run(trainArgs(config: cfg, out: dir + "/split", steps: 8, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try losses(dir + "/split") == np1)
        // A bf16 run continued in fp32: allowed, and said.
        let switched = try CLI.run(trainArgs(config: cfg, out: dir + "/split", steps: 10, extra: ["--resume", "--precision", "fp32"]))
        #expect(switched.status == 0 && switched.stdout.contains("trained with --precision bf16; continuing in fp32"), "\(switched.stdout)")
        // Any other value is one line.
        let bad = try CLI.run(trainArgs(config: cfg, out: dir + "/bad", steps: 2, extra: ["--precision", "fp16"]))
        #expect(bad.status == 1 && bad.stderr.contains("--precision") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
    }
}
