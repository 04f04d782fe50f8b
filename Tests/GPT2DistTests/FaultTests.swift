import Checkpoint
import Foundation
import GPT2
import Testing
@testable import Training
import Common

/// What users get wrong and what goes wrong around a run, through the release binary: every bad value is one
/// error line and exit 1; checkpoints survive a full disk and damage; a signal to mpirun itself still ends
/// with a checkpoint.
@Suite(.serialized) struct FaultTests {
    @Test func everyBadValueIsOneLineAndExitOne() throws {
        let dir = tmpDir("badvalues")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let base = trainArgs(config: cfg, out: out, steps: 2)
        var cases: [(String, [String], String)] = []
        for flag in ["--grad-clip", "--lr", "--min-lr", "--weight-decay", "--bucket-mb"] {
            for v in ["inf", "nan", "-1"] { cases.append(("\(flag) \(v)", base + [flag, v], flag)) }
        }
        cases += [("--lr 0", base + ["--lr", "0"], "--lr"), ("--bucket-mb 0", base + ["--bucket-mb", "0"], "--bucket-mb"),
                  ("--threads 0", base + ["--threads", "0"], "--threads"), ("--threads -1", base + ["--threads", "-1"], "--threads"),
                  ("--threads 100000", base + ["--threads", "100000"], "--threads"), ("--steps -1", base + ["--steps", "-1"], "--steps"),
                  ("--seq-len 0", base + ["--seq-len", "0"], "--seq-len"), ("--steps abc", base + ["--steps", "abc"], "abc"),
                  ("--beta2 1", base + ["--beta2", "1"], "--beta2"), ("--zero 2", base + ["--zero", "2"], "--zero")]
        let runConfigs: [(String, String, String)] = [
            ("null", #"{"steps": null}"#, "\"steps\""), ("wrong type", #"{"lr": "fast"}"#, "\"lr\""),
            ("fraction for an integer", #"{"batch-size": 2.5}"#, "\"batch-size\""), ("unknown key", #"{"learning_rate": 1}"#, "learning_rate"),
            ("not an object", "[1, 2]", "malformed"), ("bad value", #"{"grad-clip": -3}"#, "--grad-clip"),
        ]
        for (name, json, needle) in runConfigs {
            let path = dir + "/\(name.replacingOccurrences(of: " ", with: "_")).json"
            try json.write(toFile: path, atomically: true, encoding: .utf8)
            cases.append(("run config: \(name)", base + ["--run-config", path], needle))
        }
        let tiny = repoRoot + "/Configs/gpt2-tiny-test.json"
        cases += [
            ("info micro 0", ["info", "--config", tiny, "--micro-batch-size", "0"], "--micro-batch-size"),
            ("info batch -8", ["info", "--config", tiny, "--batch-size", "-8"], "--batch-size"),
            ("info ranks 0", ["info", "--config", tiny, "--ranks", "0"], "--ranks"),
            ("plan micro 0", ["plan", "--config", tiny, "--micro-batch", "0"], "--micro-batch"),
            ("plan nodes -2", ["plan", "--config", tiny, "--nodes", "-2"], "--nodes"),
            ("plan network 0", ["plan", "--config", tiny, "--network-gbps", "0"], "--network-gbps"),
        ]
        // Far more memory than any machine has: a clean message naming the bytes, not a crash.
        let huge = dir + "/huge.json"
        try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 65536, "n_heads": 1, "n_layers": 4096, "drop_rate": 0, "qkv_bias": true}"#
            .write(toFile: huge, atomically: true, encoding: .utf8)
        cases.append(("out of memory", trainArgs(config: huge, out: dir + "/huge", steps: 1), "gpt2-dist info"))
        for (name, args, needle) in cases {
            expectOneLineError(try CLI.run(args, timeout: 60), name, mentioning: needle)
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/latest"), "a rejected run wrote a checkpoint")
    }

    @Test func generateRefusesAnEmptyPromptAndCropsALongOne() throws {
        let dir = tmpDir("generate")
        let cfg = try writeConfig(dir, dropRate: 0)
        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/run", steps: 2)).status == 0)
        expectOneLineError(try CLI.run(["generate", "--checkpoint", dir + "/run", "--prompt-tokens", ""]), "empty prompt",
                           mentioning: "empty")
        // context_length is 64: a 100-token prompt plus 40 new tokens predicts from the last 64 tokens (nanoGPT's crop).
        let prompt = (0..<100).map { String($0 * 5 % 512) }.joined(separator: ",")
        let r = try CLI.run(["generate", "--checkpoint", dir + "/run", "--prompt-tokens", prompt, "--max-new-tokens", "40",
                             "--tokens", "--temperature", "0", "--threads", "1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").count == 40, "\(r.stdout)")
        // The crop is exact: the first new token depends only on the last 64 prompt tokens.
        let last64 = (36..<100).map { String($0 * 5 % 512) }.joined(separator: ",")
        let cropped = try CLI.run(["generate", "--checkpoint", dir + "/run", "--prompt-tokens", last64, "--max-new-tokens", "1",
                                   "--tokens", "--temperature", "0", "--threads", "1"])
        #expect(r.stdout.split(separator: ",").first == cropped.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").first)
    }

    @Test func damagedCheckpointIsRefusedOrSkippedOnResume() throws {
        let dir = tmpDir("damaged")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        #expect(try CLI.run(trainArgs(config: cfg, out: out, steps: 4, extra: ["--ckpt-every", "2"])).status == 0)
        let newest = out + "/" + TrainCheckpoint.fileName(step: 4), previous = out + "/" + TrainCheckpoint.fileName(step: 2)
        // Flip one bit inside the stored bytes of /params/wte.
        let (model, _) = try ModelFile.load(path: newest)
        let wte = Data(bytes: model.parameters.values.pointer, count: 256)
        var file = try Data(contentsOf: URL(fileURLWithPath: newest))
        guard let at = file.range(of: wte) else { Issue.record("wte bytes not found in \(newest)"); return }
        file[at.lowerBound + 100] ^= 0x04
        try file.write(to: URL(fileURLWithPath: newest))

        for (name, args) in [("eval", ["eval", "--checkpoint", newest, "--data", tinyTokens, "--batch-size", "2", "--seq-len", "16", "--batches", "1"]),
                             ("generate", ["generate", "--checkpoint", newest, "--prompt-tokens", "1,2,3", "--max-new-tokens", "2"]),
                             ("export-hf", ["export-hf", "--checkpoint", newest, "--out", dir + "/hf"]),
                             ("--init", trainArgs(config: cfg, out: dir + "/fresh", steps: 1, extra: ["--init", newest]))] {
            expectOneLineError(try CLI.run(args), name, mentioning: "damaged")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/hf/model.safetensors"))
        // An explicit damaged file is an error, not a silent fallback.
        expectOneLineError(try CLI.run(trainArgs(config: cfg, out: dir + "/other", steps: 6, extra: ["--resume", newest])),
                           "--resume FILE", mentioning: "damaged")
        // --resume takes the previous complete checkpoint, and says which and why.
        let r = try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume", "--ckpt-every", "2"]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\(newest) is unusable") && r.stdout.contains("resuming from \(previous) instead"), "\(r.stdout)")
        #expect(r.stdout.contains("resumed from \(previous) at step 2"))
    }

    @Test func resumingFromAnOlderCheckpointNeverPrunesTheNewOne() throws {
        let dir = tmpDir("prune")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        #expect(try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--ckpt-every", "2", "--keep-checkpoints", "2"])).status == 0)
        let older = out + "/" + TrainCheckpoint.fileName(step: 4)
        let r = try CLI.run(trainArgs(config: cfg, out: out, steps: 5, extra: ["--resume", older]))
        #expect(r.status == 0, "\(r.stderr)")
        let written = out + "/" + TrainCheckpoint.fileName(step: 5)
        #expect(FileManager.default.fileExists(atPath: written), "the checkpoint just written was pruned")
        #expect(TrainCheckpoint.newestComplete(directory: out) == written)
        #expect(TrainCheckpoint.list(directory: out).count == 2)
    }

    /// A real full filesystem (tmpfs, so root): the write fails, the run exits 1 with one line, the earlier
    /// checkpoint is intact, no temporary file is left, and --resume works once there is space.
    @Test(.enabled(if: getuid() == 0, "needs root: mounts a small tmpfs to fill"))
    func diskFullWhileCheckpointingLosesNothing() throws {
        let dir = tmpDir("diskfull")
        let cfg = try writeConfig(dir, dropRate: 0)
        // Measure the sizes first: one checkpoint, and what the writer checks for before it starts.
        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/probe", steps: 1)).status == 0)
        let ckptSize = try FileManager.default.attributesOfItem(atPath: dir + "/probe/" + TrainCheckpoint.fileName(step: 1))[.size] as! Int
        let params = GPT2Model(config: try GPT2Config.load(path: cfg)).parameters.count
        let precheck = TrainCheckpoint.minimumBytes(parameterCount: params)
        // Room for the first checkpoint and the metrics, then free space between the pre-check and the real size.
        let sizeKB = (ckptSize + 64 << 10 + (precheck + ckptSize) / 2) / 1024
        let mnt = dir + "/full"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        func sh(_ command: String) -> Int32 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", command]
            p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
            try? p.run()
            p.waitUntilExit()
            return p.terminationStatus
        }
        guard sh("mount -t tmpfs -o size=\(sizeKB)k gpt2dist-test \(mnt)") == 0 else {
            Issue.record("could not mount a tmpfs as root")
            return
        }
        defer { _ = sh("umount \(mnt)") }
        let out = mnt + "/run"
        let r = try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--ckpt-every", "2"]))
        expectOneLineError(r, "disk full", mentioning: "not written")
        let first = out + "/" + TrainCheckpoint.fileName(step: 2)
        #expect(TrainCheckpoint.list(directory: out) == [first])
        #expect(try ModelFile.load(path: first).step == 2)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.contains(".tmp") }
        #expect(leftovers.isEmpty, "temporary files left: \(leftovers)")
        // Resuming while still full fails the same clean way; after freeing space it completes.
        expectOneLineError(try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume", "--ckpt-every", "2"])),
                           "resume on a full disk", mentioning: "not written")
        #expect(sh("mount -o remount,size=\(sizeKB * 4)k \(mnt)") == 0)
        let resumed = try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume", "--ckpt-every", "2"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(TrainCheckpoint.newestComplete(directory: out) == out + "/" + TrainCheckpoint.fileName(step: 6))
    }

    @Test func aLockedMetricsFileIsWaitedForNeverSetAside() throws {
        let dir = tmpDir("metricslock")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        #expect(try CLI.run(trainArgs(config: cfg, out: out, steps: 2)).status == 0)
        // A reader holding HDF5's lock (as h5py does by default) for the whole next run.
        let reader = try HDF5File.open(out + "/metrics.h5")
        let r = try CLI.run(trainArgs(config: cfg, out: out, steps: 4, extra: ["--resume"]))
        reader.close()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("busy"), "\(r.stdout)")
        let names = try FileManager.default.contentsOfDirectory(atPath: out)
        #expect(!names.contains { $0.contains("unreadable") }, "metrics.h5 was set aside: \(names)")
        let again = try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume"]))
        #expect(again.status == 0, "\(again.stderr)")
        let m = try MetricsLog.read(path: out + "/metrics.h5")
        let lengths = Set(MetricsLog.trainSeries.map { m[$0]?.count ?? -1 })
        #expect(lengths.count == 1, "series not aligned: \(MetricsLog.trainSeries.map { m[$0]?.count ?? -1 })")
        #expect(m["step"]?.last == 6)
    }

    @Test func metricsRowsStayAlignedAfterAPartlyWrittenRow() throws {
        let dir = tmpDir("align")
        let path = dir + "/metrics.h5"
        let log = try MetricsLog.openOrCreate(path: path, log: { _ in })
        func row(_ step: Double, loss: Double) -> [String: Double] {
            var r = Dictionary(uniqueKeysWithValues: MetricsLog.trainSeries.map { ($0, 1.0) })
            r["step"] = step; r["train_loss"] = loss
            return r
        }
        #expect(log.append(row(1, loss: 5)) == nil)
        // A write that stopped after two of the series (a crash, a full disk) ...
        let f = try HDF5File.open(path, writable: true)
        try f.setLast("step", at: 1, 2)
        try f.setLast("train_loss", at: 1, 4)
        f.close()
        // ... is completed, not shifted, by the next row.
        #expect(log.append(row(2, loss: 4.5)) == nil)
        let m = try MetricsLog.read(path: path)
        for s in MetricsLog.trainSeries { #expect(m[s]?.count == 2, "\(s): \(m[s] ?? [])") }
        #expect(m["train_loss"] == [5, 4.5])
    }

    /// Plain `mpirun -np 2` with Open MPI's defaults: a signal to mpirun reaches the ranks about 1 s later and
    /// they are killed 1 s after that. A rank that never blocks on its console output checkpoints in time.
    @Test(arguments: [SIGTERM, SIGINT]) func signalToMpirunLeavesACheckpointCoveringEveryLoggedStep(sig: Int32) throws {
        let dir = tmpDir("mpirunsignal\(sig)")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let p = CLI.process(ranks: 2, trainArgs(config: cfg, out: out, steps: 1_000_000))
        try CLI.startAsFromShell(p, logPath: dir + "/stdout.txt")
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ((try? MetricsLog.read(path: out + "/metrics.h5"))?["step"]?.count ?? 0) < 20 { usleep(50_000) }
        sleep(2)  // mpirun acts on signals once the launch has settled (one sent in its first ~0.1 s was lost here)
        kill(p.processIdentifier, sig)
        CLI.wait(p, seconds: 60)
        let logged = try MetricsLog.read(path: out + "/metrics.h5")["step"]?.max() ?? 0
        guard let ckpt = TrainCheckpoint.newestComplete(directory: out) else {
            let output = (try? String(contentsOfFile: dir + "/stdout.txt", encoding: .utf8)) ?? ""
            Issue.record("no checkpoint after signal \(sig) to mpirun; output:\n\(output.suffix(800))")
            return
        }
        let step = try ModelFile.load(path: ckpt).step
        #expect(Double(step) >= logged, "checkpoint at step \(step) but steps up to \(logged) were logged")
    }

    @Test func optionsAreDeclaredOnceAndRoundTrip() throws {
        var o = try TrainOptions().applying(arguments: ["--data", "d", "--out", "o", "--steps", "7", "--min-lr", "1e-5", "--shuffle",
                                                        "--no-overlap", "--init", "x.h5", "--threads", "1", "--zero=1",
                                                        "--lr-schedule", "cosine", "--resume"])
        o.recompute = true
        #expect(o.resume == TrainOptions.newestCheckpoint && o.zero == .optimizer && o.lrSchedule == .cosine)
        // Flags, the stored JSON and run-config files are one mechanism: the JSON reads back to the same settings.
        let object = try TrainOptions.settingsObject(Data(o.json.utf8), source: "stored")
        let back = try TrainOptions().applying(json: object, source: "stored", strict: true)
        #expect(back == o)
        #expect(back.initFrom == "x.h5" && back.steps == 7 && back.shuffle && !back.overlap && back.recompute && back.minLr == 1e-5)
        // Every option of the struct is in the table: the JSON names each one set away from its default.
        var changed = TrainOptions()
        for option in TrainOptions.table where option.name != "run-config" {
            let before = changed
            // A value other than the default; a flag set to the opposite of its default.
            if option.takesValue {
                // A choice's listed values (its value name, "a|b"), else numbers that also read as strings.
                let candidates = option.valueName.contains("|") ? option.valueName.split(separator: "|").map(String.init) : ["3", "4"]
                for value in candidates where changed == before { try option.set(&changed, .argument(value), option.name) }
            } else {
                try option.set(&changed, .negated, option.name)
                if changed == before { try option.set(&changed, .argument(nil), option.name) }
            }
            #expect(changed != before, "--\(option.name) changes nothing")
        }
        #expect(try TrainOptions().applying(json: TrainOptions.settingsObject(Data(changed.json.utf8), source: "s"), source: "s", strict: true) == changed)
        // A checkpoint's stored settings skip what says where a run starts (and keys of other versions).
        let stored = #"{"steps": 9, "init-from": "a.h5", "config": "c.json", "threads": 2, "from-the-future": 1}"#
        var expected = TrainOptions(); expected.steps = 9
        #expect(try TrainOptions().applying(json: TrainOptions.settingsObject(Data(stored.utf8), source: "s"), source: "s", strict: false) == expected)
        // Layering: defaults < stored < file < flags.
        let dir = tmpDir("layering")
        try #"{"steps": 11, "seed": 5, "lr": 0.002}"#.write(toFile: dir + "/run.json", atomically: true, encoding: .utf8)
        let layered = try TrainOptions.resolve(commandLine: ["--run-config", dir + "/run.json", "--seed", "6", "--resume", "--out", dir],
                                               storedSettings: { _, _ in #"{"steps": 20, "seed": 4, "lr": 0.001, "batch-size": 16}"# })
        #expect(layered.batchSize == 16 && layered.lr == 0.002 && layered.steps == 11 && layered.seed == 6)
        // Mistakes are one line naming the option.
        for (args, needle) in [(["--stepz", "3"], "--stepz"), (["--steps"], "missing value for --steps"), (["--shuffle=1"], "--shuffle"),
                               (["--zero", "2"], "--zero"), (["--lr-schedule", "linear"], "cosine, constant"), (["stray"], "stray")] {
            #expect(throws: GPT2DistError.self) { try TrainOptions().applying(arguments: args) }
            do { _ = try TrainOptions().applying(arguments: args) } catch {
                #expect("\(error)".contains(needle) && !"\(error)".contains("\n"), "\(args): \(error)")
            }
        }
        // Help wraps at the terminal width: no hard breaks inside the options' paragraphs; every option is listed.
        let help = TrainOptions.helpMessage(columns: 60)
        for line in help.split(separator: "\n") { #expect(line.count <= 60, "\(line)") }
        for option in TrainOptions.table { #expect(help.contains("--" + option.name) || help.contains("--[no-]" + option.name)) }
    }
}
