import Autograd
import Common
import Foundation
import GPT2

/// A training checkpoint: the model file layout plus /optimizer/m and /optimizer/v (same names and shapes
/// as /params) and root attributes step, tokens_seen, run_config (JSON of every option; the seed and the batch
/// order follow from it and the step) and, when the training data came with a manifest, data_id (the manifest's
/// id). Format version 1 also stored data_cursor, seed and adam_t, which equal step, run_config's seed and step:
/// they are ignored on reading.
/// Written atomically (temporary file, fsync, rename) and pointed to by `latest`.
public struct TrainState {
    public var step: Int          // optimizer steps completed
    public var tokensSeen: Int
    public var runConfig: String
    public var dataIdentity: String?

    public init(step: Int, tokensSeen: Int, runConfig: String, dataIdentity: String? = nil) {
        self.step = step; self.tokensSeen = tokensSeen; self.runConfig = runConfig
        self.dataIdentity = dataIdentity
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
        let layout: ParameterLayout
        let config: GPT2Config

        public init(path: String, model: GPT2Model, step: Int) throws {
            layout = model.parameters.layout
            config = model.config
            pending = try AtomicFile.Pending(path)
            // Fail before writing anything when the checkpoint cannot fit (a full disk half way through is still
            // handled, but leaves HDF5 less to clean up).
            let need = TrainCheckpoint.minimumBytes(parameterCount: model.parameters.count)
            if let free = AtomicFile.freeBytes(directory: pending.directory), free < need {
                throw GPT2DistError(.training, "not enough space for \(path): it needs \(Format.bytes(Double(need))), "
                    + "\(Format.bytes(Double(free))) free (free some space, then --resume)")
            }
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
                try file.setAttribute("/", "run_config", string: state.runConfig)
                if let id = state.dataIdentity { try file.setAttribute("/", "data_id", string: id) }
                try file.closeChecked()
                try TrainCheckpoint.verifyStructure(path: pending.temporaryPath, layout: layout, config: config)
                try pending.commit()
            } catch {
                abandon()
                throw GPT2DistError(.training, "checkpoint \(path) not written, earlier ones are intact: \(error)")
            }
        }

        public func abandon() {
            file.close()
            pending.abandon()
        }

        func checkFinite(_ p: UnsafePointer<Float>, _ n: Int, _ what: String) throws {
            for i in 0..<n where !p[i].isFinite {
                throw GPT2DistError(.training, "refusing to write a checkpoint: \(what) hold a non-finite value")
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
                throw GPT2DistError(.training, "\(path): checkpoint model config \(cfg.jsonString.replacingOccurrences(of: "\n", with: "")) does not match the run's config")
            }
            try ModelFile.readTensors(file, group: "/params", layout: model.parameters.layout, into: model.parameters.values.pointer)
            guard file.exists("/optimizer/m"), file.exists("/optimizer/v") else {
                throw GPT2DistError(.training, "\(path): no optimizer state (a model-only file); use --init to start from its weights")
            }
            state = TrainState(step: try file.intAttribute("/", "step"), tokensSeen: try file.intAttribute("/", "tokens_seen"),
                               runConfig: try file.stringAttribute("/", "run_config"),
                               dataIdentity: file.hasAttribute("/", "data_id") ? try file.stringAttribute("/", "data_id") : nil)
        }

        public func read(_ group: String, _ e: ParameterEntry, into out: UnsafeMutablePointer<Float>) throws {
            var single = ParameterLayout()
            single.append(e.name, e.shape)
            try ModelFile.readTensors(file, group: "/optimizer/\(group)", layout: single, into: out)
        }

        /// Reads every optimizer tensor once (the parameters were read, and so checked, by `init`): each dataset's
        /// checksum is verified before any of it is used, so a damaged file can still be passed over.
        public func verifyOptimizerState(layout: ParameterLayout) throws {
            let scratch = FloatBuffer(count: layout.entries.map(\.count).max() ?? 1)
            for group in ["m", "v"] {
                for e in layout.entries { try read(group, e, into: scratch.pointer) }
            }
        }

        public func close() { file.close() }
    }

    /// A checkpoint a person names: a file, a `latest` pointer (the file it names), or a run directory (its newest
    /// complete checkpoint).
    public static func resolve(_ spec: String) throws -> String {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory), isDirectory.boolValue {
            guard let path = newestComplete(directory: spec) else { throw GPT2DistError(.usage, "no complete checkpoint in \(spec)") }
            return path
        }
        let url = URL(fileURLWithPath: spec), directory = url.deletingLastPathComponent().path
        if url.lastPathComponent == "latest", let name = latestName(directory: directory) { return directory + "/" + name }
        return spec
    }

    /// The value of a bare `--resume`: the newest complete checkpoint in --out, falling back to older ones.
    public static let newestInOut = "latest"

    /// The checkpoints `--resume VALUE` may start from, in the order to try them: every complete one in `out` for
    /// a bare --resume, else the named file alone.
    public static func resumeCandidates(_ value: String, out: String?) -> [String] {
        value == newestInOut ? out.map { completeCheckpoints(directory: $0) } ?? [] : [value]
    }

    /// The stored settings (run_config JSON) of the checkpoint `--resume VALUE` would start from: nil when there
    /// is none yet (the trainer then reports the missing checkpoint itself) or it has no stored settings.
    public static func storedRunConfig(resume: String, out: String?) throws -> String? {
        guard let path = resumeCandidates(resume, out: out).first, let f = try? HDF5File.open(path) else { return nil }
        defer { f.close() }
        guard f.hasAttribute("/", "run_config") else { return nil }
        return try f.stringAttribute("/", "run_config")
    }

    /// The manifest id of the data the checkpoint was trained on; nil when that data had no manifest.
    public static func readDataIdentity(path: String) throws -> String? {
        let f = try HDF5File.open(path)
        defer { f.close() }
        return f.hasAttribute("/", "data_id") ? try f.stringAttribute("/", "data_id") : nil
    }

    public static func readConfig(path: String) throws -> GPT2Config {
        let f = try HDF5File.open(path)
        defer { f.close() }
        return try ModelFile.readConfig(f)
    }

    /// Checkpoints in a run directory (by name), newest step first.
    public static func list(directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".h5") }.sorted(by: >).map { directory + "/" + $0 }
    }

    /// Checkpoints most recently written first (modification time, then step): after a resume from an older
    /// checkpoint, the files of the new run come before those of the abandoned later steps.
    static func newestFirst(directory: String) -> [String] {
        func mtime(_ p: String) -> Double {
            var st = stat()
            return stat(p, &st) == 0 ? Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9 : 0
        }
        return list(directory: directory).map { ($0, mtime($0)) }.sorted { a, b in
            a.1 != b.1 ? a.1 > b.1 : a.0 > b.0
        }.map(\.0)
    }

    /// Every checkpoint with a complete header, in the order `--resume` tries them: the one `latest` names,
    /// then the others most recently written first.
    public static func completeCheckpoints(directory: String) -> [String] {
        var candidates: [String] = []
        if let named = latestName(directory: directory) { candidates.append(directory + "/" + named) }
        for c in newestFirst(directory: directory) where !candidates.contains(c) { candidates.append(c) }
        return candidates.filter(isComplete)
    }

    public static func newestComplete(directory: String) -> String? { completeCheckpoints(directory: directory).first }

    /// The file name `directory/latest` points to, if it names one.
    public static func latestName(directory: String) -> String? {
        guard let name = try? String(contentsOfFile: directory + "/latest", encoding: .utf8) else { return nil }
        let trimmed = name.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty || trimmed.contains("/") ? nil : trimmed
    }

    static func isComplete(_ path: String) -> Bool {
        guard let f = try? HDF5File.open(path) else { return false }
        defer { f.close() }
        return (try? ModelFile.readConfig(f)) != nil && f.exists("/optimizer/v") && f.hasAttribute("/", "run_config")
    }

    /// Every tensor of the checkpoint is present with its shape, and the training attributes are there
    /// (run on the temporary file before it may replace anything).
    static func verifyStructure(path: String, layout: ParameterLayout, config: GPT2Config) throws {
        let f = try HDF5File.open(path)
        defer { f.close() }
        guard try ModelFile.readConfig(f) == config else { throw GPT2DistError(.training, "\(path): the model config read back differs") }
        for group in ["/params", "/optimizer/m", "/optimizer/v"] {
            for e in layout.entries {
                let (shape, isFloat) = try f.datasetShape("\(group)/\(e.name)")
                guard shape == e.shape, isFloat else {
                    throw GPT2DistError(.training, "\(path): \(group)/\(e.name) read back as \(shape), expected \(e.shape)")
                }
            }
        }
        for a in ["step", "tokens_seen", "run_config"] where !f.hasAttribute("/", a) {
            throw GPT2DistError(.training, "\(path): attribute \(a) missing after writing")
        }
    }

    /// Removes the temporary checkpoint files of runs killed while writing one; returns their paths.
    public static func removeStaleTemporaries(directory: String) -> [String] {
        AtomicFile.removeAbandoned(directory: directory) { $0.hasPrefix("ckpt-") && $0.hasSuffix(".h5") }
    }

    /// Free space a checkpoint of `parameterCount` parameters needs at least: parameters, AdamW m and v as float32,
    /// plus room for HDF5's metadata (the writer checks this before it starts).
    public static func minimumBytes(parameterCount: Int) -> Int { 3 * 4 * parameterCount + (64 << 10) }

    /// Points `latest` at the new checkpoint, then deletes all but the `keep` most recently written. The new
    /// checkpoint (which `latest` now names) is never deleted, whatever its step.
    public static func commit(directory: String, path: String, keep: Int) throws {
        try AtomicFile.write(text: URL(fileURLWithPath: path).lastPathComponent + "\n", to: directory + "/latest")
        guard keep > 0 else { return }
        let newPath = URL(fileURLWithPath: path).standardizedFileURL.path
        let others = newestFirst(directory: directory).filter { URL(fileURLWithPath: $0).standardizedFileURL.path != newPath }
        for old in others.dropFirst(keep - 1) { try? FileManager.default.removeItem(atPath: old) }
    }
}
