import Autograd
import Checkpoint
import Foundation
import GPT2

/// A training checkpoint: the model file layout plus /optimizer/m and /optimizer/v (same names and shapes
/// as /params) and root attributes step, tokens_seen, data_cursor, seed, adam_t and run_config (JSON).
/// Written atomically (temporary file, fsync, rename) and pointed to by `latest`.
public struct TrainState {
    public var step: Int          // optimizer steps completed
    public var tokensSeen: Int
    public var dataCursor: Int    // next batch index in the shared batch order
    public var seed: Int
    public var runConfig: String

    public init(step: Int, tokensSeen: Int, dataCursor: Int, seed: Int, runConfig: String) {
        self.step = step; self.tokensSeen = tokensSeen; self.dataCursor = dataCursor; self.seed = seed; self.runConfig = runConfig
    }
}

public enum TrainCheckpoint {
    public static func fileName(step: Int) -> String { String(format: "ckpt-%08d.h5", step) }

    /// Writes params, full optimizer state and attributes; refuses non-finite values.
    public static func save(path: String, model: GPT2Model, m: UnsafePointer<Float>, v: UnsafePointer<Float>, state: TrainState) throws {
        let layout = model.parameters.layout
        for (what, p) in [("parameters", UnsafePointer(model.parameters.values.pointer)), ("optimizer m", m), ("optimizer v", v)] {
            for i in 0..<layout.totalCount where !p[i].isFinite {
                throw TrainError("refusing to write a checkpoint: \(what) hold a non-finite value")
            }
        }
        try AtomicFile.write(path) { tmp in
            let f = try HDF5File.create(tmp)
            try ModelFile.writeHeader(f, config: model.config, step: state.step)
            try ModelFile.writeTensors(f, group: "/params", layout: layout, from: model.parameters.values.pointer)
            try ModelFile.writeTensors(f, group: "/optimizer/m", layout: layout, from: m)
            try ModelFile.writeTensors(f, group: "/optimizer/v", layout: layout, from: v)
            try f.setAttribute("/", "tokens_seen", int: state.tokensSeen)
            try f.setAttribute("/", "data_cursor", int: state.dataCursor)
            try f.setAttribute("/", "seed", int: state.seed)
            try f.setAttribute("/", "adam_t", int: state.step)
            try f.setAttribute("/", "run_config", string: state.runConfig)
            f.close()
        }
    }

    /// Reads a training checkpoint into `model` (which must have the checkpoint's config) and m, v.
    public static func load(path: String, model: GPT2Model, m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) throws -> TrainState {
        let f = try HDF5File.open(path)
        defer { f.close() }
        let cfg = try ModelFile.readConfig(f)
        guard cfg == model.config else {
            throw TrainError("\(path): checkpoint model config \(cfg.jsonString.replacingOccurrences(of: "\n", with: "")) does not match the run's config")
        }
        let layout = model.parameters.layout
        try ModelFile.readTensors(f, group: "/params", layout: layout, into: model.parameters.values.pointer)
        guard f.exists("/optimizer/m"), f.exists("/optimizer/v") else {
            throw TrainError("\(path): no optimizer state (a model-only file); use --init to start from its weights")
        }
        try ModelFile.readTensors(f, group: "/optimizer/m", layout: layout, into: m)
        try ModelFile.readTensors(f, group: "/optimizer/v", layout: layout, into: v)
        return TrainState(step: try f.intAttribute("/", "step"), tokensSeen: try f.intAttribute("/", "tokens_seen"),
                          dataCursor: try f.intAttribute("/", "data_cursor"), seed: try f.intAttribute("/", "seed"),
                          runConfig: try f.stringAttribute("/", "run_config"))
    }

    public static func readConfig(path: String) throws -> GPT2Config {
        let f = try HDF5File.open(path)
        defer { f.close() }
        return try ModelFile.readConfig(f)
    }

    /// Checkpoints in a run directory, newest first (by the step in the name).
    public static func list(directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".h5") }.sorted(by: >).map { directory + "/" + $0 }
    }

    /// The newest checkpoint that opens and has a complete header: `latest` first, then the others by step.
    public static func newestComplete(directory: String) -> String? {
        var candidates: [String] = []
        if let name = try? String(contentsOfFile: directory + "/latest", encoding: .utf8) {
            candidates.append(directory + "/" + name.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        candidates += list(directory: directory)
        for c in candidates where isComplete(c) { return c }
        return nil
    }

    static func isComplete(_ path: String) -> Bool {
        guard let f = try? HDF5File.open(path) else { return false }
        defer { f.close() }
        return (try? ModelFile.readConfig(f)) != nil && f.exists("/optimizer/v") && f.hasAttribute("/", "run_config")
    }

    /// Points `latest` at the new checkpoint and deletes all but the newest `keep`.
    public static func commit(directory: String, path: String, keep: Int) throws {
        try AtomicFile.write(text: URL(fileURLWithPath: path).lastPathComponent + "\n", to: directory + "/latest")
        if keep > 0 {
            for old in list(directory: directory).dropFirst(keep) { try? FileManager.default.removeItem(atPath: old) }
        }
    }
}
