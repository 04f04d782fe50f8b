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

    /// Writes one checkpoint: header and parameters first, then optimizer tensors one at a time (so a sharded
    /// optimizer state can be gathered tensor by tensor), then the attributes; `finish` syncs and renames it
    /// into place. Nothing non-finite is ever written. If anything fails the temporary file is removed.
    public final class Writer {
        public var path: String { pending.path }
        let pending: AtomicFile.Pending
        let file: HDF5File

        public init(path: String, model: GPT2Model, step: Int) throws {
            pending = try AtomicFile.Pending(path)
            file = try HDF5File.create(pending.temporaryPath)
            do {
                let p = model.parameters
                try checkFinite(p.values.pointer, p.count, "parameters")
                try ModelFile.writeHeader(file, config: model.config, step: step)
                try ModelFile.writeTensors(file, group: "/params", layout: p.layout, from: p.values.pointer)
                try ModelFile.createGroups(file, "/optimizer/m")
                try ModelFile.createGroups(file, "/optimizer/v")
            } catch {
                abandon()
                throw error
            }
        }

        /// `group` is "m" or "v".
        public func write(_ group: String, _ e: ParameterEntry, _ data: UnsafePointer<Float>) throws {
            do {
                try checkFinite(data, e.count, "optimizer \(group) of \(e.name)")
                try file.writeFloats("/optimizer/\(group)/\(e.name)", shape: e.shape, data)
            } catch {
                abandon()
                throw error
            }
        }

        public func finish(_ state: TrainState) throws {
            do {
                try file.setAttribute("/", "tokens_seen", int: state.tokensSeen)
                try file.setAttribute("/", "data_cursor", int: state.dataCursor)
                try file.setAttribute("/", "seed", int: state.seed)
                try file.setAttribute("/", "adam_t", int: state.step)
                try file.setAttribute("/", "run_config", string: state.runConfig)
                file.close()
                try pending.commit()
            } catch {
                abandon()
                throw error
            }
        }

        public func abandon() {
            file.close()
            pending.abandon()
        }

        func checkFinite(_ p: UnsafePointer<Float>, _ n: Int, _ what: String) throws {
            for i in 0..<n where !p[i].isFinite {
                throw TrainError("refusing to write a checkpoint: \(what) hold a non-finite value")
            }
        }
    }

    /// Reads a training checkpoint: parameters into the model (whose config must match), optimizer tensors on demand.
    public final class Reader {
        public let path: String
        let file: HDF5File
        public let state: TrainState

        public init(path: String, model: GPT2Model) throws {
            self.path = path
            file = try HDF5File.open(path)
            let cfg = try ModelFile.readConfig(file)
            guard cfg == model.config else {
                throw TrainError("\(path): checkpoint model config \(cfg.jsonString.replacingOccurrences(of: "\n", with: "")) does not match the run's config")
            }
            try ModelFile.readTensors(file, group: "/params", layout: model.parameters.layout, into: model.parameters.values.pointer)
            guard file.exists("/optimizer/m"), file.exists("/optimizer/v") else {
                throw TrainError("\(path): no optimizer state (a model-only file); use --init to start from its weights")
            }
            state = TrainState(step: try file.intAttribute("/", "step"), tokensSeen: try file.intAttribute("/", "tokens_seen"),
                               dataCursor: try file.intAttribute("/", "data_cursor"), seed: try file.intAttribute("/", "seed"),
                               runConfig: try file.stringAttribute("/", "run_config"))
        }

        public func read(_ group: String, _ e: ParameterEntry, into out: UnsafeMutablePointer<Float>) throws {
            var single = ParameterLayout()
            single.append(e.name, e.shape)
            try ModelFile.readTensors(file, group: "/optimizer/\(group)", layout: single, into: out)
        }

        public func close() { file.close() }
    }

    /// The settings a run was started with, read from the checkpoint `--resume` would pick (nil when there is
    /// none yet: then the trainer reports the missing checkpoint itself).
    public static func storedRunConfig(resume: String, out: String) throws -> TrainOptions? {
        guard let path = resumePath(resume, out: out), let f = try? HDF5File.open(path) else { return nil }
        defer { f.close() }
        guard f.hasAttribute("/", "run_config"), let json = try? f.stringAttribute("/", "run_config") else { return nil }
        do {
            return try JSONDecoder().decode(TrainOptions.self, from: Data(json.utf8))
        } catch {
            throw TrainError("\(path): unreadable run_config attribute (\(error))")
        }
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

    /// The checkpoint `--resume VALUE` names: VALUE itself, or for "latest" the newest complete one in `out`.
    public static func resumePath(_ value: String, out: String) -> String? {
        value == "latest" ? newestComplete(directory: out) : value
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
