import Checkpoint
import Foundation
import Testing

/// The TensorBoard event file of a run: every metrics.h5 series under its tag with the same steps and values (as
/// float32, TensorBoard's scalar type), appended on resume, absent with --tensorboard false; read back here by a
/// decoder of the format, and by TensorBoard's own reader where a Python with it is given (GPT2DIST_TEST_PYTHON:
/// Launch/test makes one; CI requires it).
@Suite(.serialized) struct TensorBoardTests {
    @Test func eventFileHoldsEveryMetricsSeries() throws {
        let dir = tmpDir("tensorboard")
        let cfg = try writeConfig(dir, dropRate: 0)
        let out = dir + "/run"
        let val = ["--val", tinyTokens, "--eval-every", "2", "--eval-batches", "1"]
        #expect(try CLI.run(trainArgs(config: cfg, out: out, steps: 4, extra: val)).status == 0)
        let resumed = try CLI.run(trainArgs(config: cfg, out: out, steps: 6, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix("events.out.tfevents.") }
        #expect(files.count == 1, "\(files)")
        let scalars = try readEvents(out + "/" + files[0])
        let metrics = try MetricsLog.read(path: out + "/metrics.h5")
        expectSameSeries(scalars, metrics)
        #expect(scalars["train/loss"]?.count == 6 && scalars["val/loss"]?.count == 3, "\(scalars.keys.sorted())")

        if let python = ProcessInfo.processInfo.environment["GPT2DIST_TEST_PYTHON"] {
            let reader = """
            import json, sys
            from tensorboard.backend.event_processing import event_accumulator
            acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})
            acc.Reload()
            print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
            """
            let r = try CLI.run(executable: python, ["-c", reader, out])
            #expect(r.status == 0, "\(r.stderr)")
            let parsed = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: [[Double]]] ?? [:]
            expectSameSeries(parsed.mapValues { $0.map { (Int($0[0]), Float($0[1])) } }, metrics)
        } else {
            #expect(ProcessInfo.processInfo.environment["CI"] != "true", "CI must read the events with TensorBoard (GPT2DIST_TEST_PYTHON)")
        }

        #expect(try CLI.run(trainArgs(config: cfg, out: dir + "/off", steps: 2, extra: ["--tensorboard", "false"])).status == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/off").allSatisfy { !$0.hasPrefix("events.out") })
    }

    /// A record cut short (a crash mid-write) is dropped when the file is opened again, so the next records follow
    /// whole ones.
    @Test func tornTailIsTrimmedBeforeAppending() throws {
        let dir = tmpDir("tensorboard-torn")
        do {
            let w = try TensorBoardWriter(directory: dir)
            try w.append(["train_loss": 2.5, "step": 1], step: 1)
        }
        let path = try dir + "/" + FileManager.default.contentsOfDirectory(atPath: dir).first { $0.hasPrefix("events.out") }!
        let h = FileHandle(forWritingAtPath: path)!
        h.seekToEndOfFile(); h.write(Data([1, 2, 3, 4, 5])); h.closeFile()
        do { try TensorBoardWriter(directory: dir).append(["train_loss": 2.25, "step": 2], step: 2) }
        #expect(try readEvents(path)["train/loss"]?.map(\.value) == [2.5, 2.25])
    }
}

/// Every series of metrics.h5 (but the step counters) under its tag: same steps, same values as float32.
func expectSameSeries(_ scalars: [String: [(step: Int, value: Float)]], _ metrics: [String: [Double]],
                      sourceLocation: SourceLocation = #_sourceLocation) {
    for (name, values) in metrics where name != "step" && !name.hasSuffix("_step") {
        let steps = metrics[name.hasPrefix("val_") ? "val_step" : name.hasPrefix("eval_") ? "eval_step" : "step"] ?? []
        let got = scalars[TensorBoardWriter.tag(forSeries: name)] ?? []
        #expect(got.map(\.step) == steps.map { Int($0) }, "\(name): steps", sourceLocation: sourceLocation)
        #expect(got.map(\.value) == values.map { Float($0) }, "\(name): values", sourceLocation: sourceLocation)
    }
}

/// The scalars of an event file by tag, decoding the records and the Event/Summary fields gpt2-dist writes.
func readEvents(_ path: String) throws -> [String: [(step: Int, value: Float)]] {
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    var at = 0, scalars: [String: [(step: Int, value: Float)]] = [:], records = 0
    while let (record, next) = TensorBoardWriter.record(in: bytes, at: at) {
        records += 1
        let event = ProtobufFields(Array(record))
        if let summary = event.bytes[5] {
            let step = event.varints[2] ?? 0
            for value in ProtobufFields(summary).repeated[1] ?? [] {
                let v = ProtobufFields(value)
                scalars[String(decoding: v.bytes[1] ?? [], as: UTF8.self), default: []].append((Int(step), Float(bitPattern: v.fixed32[2] ?? 0)))
            }
        } else {
            #expect(String(decoding: event.bytes[3] ?? [], as: UTF8.self) == "brain.Event:2" && records == 1)
        }
        at = next
    }
    #expect(at == bytes.count, "trailing bytes after \(records) records")
    return scalars
}

/// A protobuf message's fields by number (varint, fixed32, length-delimited; repeated ones kept in order).
struct ProtobufFields {
    var varints: [Int: UInt64] = [:], fixed32: [Int: UInt32] = [:], bytes: [Int: [UInt8]] = [:], repeated: [Int: [[UInt8]]] = [:]

    init(_ b: [UInt8]) {
        var i = 0
        func varint() -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while i < b.count { let byte = b[i]; i += 1; v |= UInt64(byte & 0x7F) << shift; shift += 7; if byte < 0x80 { break } }
            return v
        }
        while i < b.count {
            let key = varint(), field = Int(key >> 3)
            switch key & 7 {
            case 0: varints[field] = varint()
            case 1: i += 8
            case 5: fixed32[field] = (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) }; i += 4
            case 2:
                let n = Int(varint()), value = Array(b[i..<(i + n)])
                bytes[field] = value; repeated[field, default: []].append(value); i += n
            default: Issue.record("wire type \(key & 7)"); return
            }
        }
    }
}
