import Autograd
import Common
import Foundation
import GPT2

/// The gpt2-dist HDF5 checkpoint (README, "Checkpoint layout"): root attributes format, format_version, step;
/// /config with the model config keys as attributes; /params with one float32 dataset per tensor, named and
/// shaped as Hugging Face GPT-2's state dict without "transformer." (wte and wpe without ".weight").
public enum ModelFile {
    public static let format = "gpt2-dist"
    /// Version 2 dropped the training checkpoint's redundant data_cursor, seed and adam_t; version 1 files read as before.
    public static let formatVersion = 2
    public static let readableVersions = 1...2

    public static func writeHeader(_ f: HDF5File, config: GPT2Config, step: Int) throws {
        try f.setAttribute("/", "format", string: format)
        try f.setAttribute("/", "format_version", int: formatVersion)
        try f.setAttribute("/", "step", int: step)
        try f.createGroup("/config")
        for (k, v) in [("vocab_size", config.vocabSize), ("context_length", config.contextLength),
                       ("emb_dim", config.embDim), ("n_heads", config.nHeads), ("n_layers", config.nLayers)] {
            try f.setAttribute("/config", k, int: v)
        }
        try f.setAttribute("/config", "drop_rate", double: config.dropRate)
        try f.setAttribute("/config", "qkv_bias", int: config.qkvBias ? 1 : 0)
    }

    /// Writes every tensor of a flat buffer laid out as `layout` under `group` (e.g. /params, /optimizer/m).
    public static func writeTensors(_ f: HDF5File, group: String, layout: ParameterLayout, from base: UnsafePointer<Float>) throws {
        try createGroups(f, group)
        for e in layout.entries {
            try f.writeFloats("\(group)/\(e.name)", shape: e.shape, base + e.offset)
        }
    }

    /// Reads every tensor of `layout` from `group`; a non-finite value means a damaged file (gpt2-dist never
    /// writes one), so it is an error naming the dataset.
    public static func readTensors(_ f: HDF5File, group: String, layout: ParameterLayout, into base: UnsafeMutablePointer<Float>) throws {
        for e in layout.entries {
            let p = base + e.offset
            try f.readFloats("\(group)/\(e.name)", shape: e.shape, into: p)
            for i in 0..<e.count where !p[i].isFinite {
                throw GPT2DistError(.fileFormat, "\(f.path): \(group)/\(e.name) holds a non-finite value (damaged file?)")
            }
        }
    }

    public static func createGroups(_ f: HDF5File, _ path: String) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            try f.createGroup(prefix)
        }
    }

    public static func readConfig(_ f: HDF5File) throws -> GPT2Config {
        guard f.hasAttribute("/", "format"), (try? f.stringAttribute("/", "format")) == format else {
            throw GPT2DistError(.fileFormat, "\(f.path): not a gpt2-dist checkpoint (root attribute format != \"gpt2-dist\")")
        }
        let version = try f.intAttribute("/", "format_version")
        guard readableVersions.contains(version) else {
            throw GPT2DistError(.fileFormat, "\(f.path): checkpoint format_version \(version) is not supported (this gpt2-dist reads "
                + "\(readableVersions.lowerBound) to \(readableVersions.upperBound); a newer version wrote it?)")
        }
        var dict: [String: JSONValue] = [:]
        for k in ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"] {
            dict[k] = .number(Double(try f.intAttribute("/config", k)))
        }
        dict["drop_rate"] = .number(try f.doubleAttribute("/config", "drop_rate"))
        dict["qkv_bias"] = .bool(try f.intAttribute("/config", "qkv_bias") != 0)
        return try GPT2Config.from(dictionary: dict, source: "\(f.path) /config")
    }

    /// Saves a model-only checkpoint atomically.
    public static func save(model: GPT2Model, step: Int, to path: String) throws {
        try AtomicFile.write(path) { tmp in
            let f = try HDF5File.create(tmp)
            try writeHeader(f, config: model.config, step: step)
            try writeTensors(f, group: "/params", layout: model.parameters.layout, from: model.parameters.values.pointer)
            try f.closeChecked()
        }
    }

    /// Loads config and parameters; every tensor's name, shape and dtype is checked.
    public static func load(path: String) throws -> (model: GPT2Model, step: Int) {
        let f = try HDF5File.open(path)
        defer { f.close() }
        let config = try readConfig(f)
        let model = GPT2Model(config: config)
        try readTensors(f, group: "/params", layout: model.parameters.layout, into: model.parameters.values.pointer)
        let step = try f.intAttribute("/", "step")
        return (model, step)
    }
}

/// Writes a file so that readers only ever see the old complete file or the new complete one:
/// write to a temporary name in the same directory, fsync, rename over the target, fsync the directory.
public enum AtomicFile {
    /// A file being written under a temporary name beside its final path; `commit` makes it appear complete,
    /// `abandon` removes it. For writers that produce a file piece by piece (checkpoints gathered tensor by tensor).
    public final class Pending {
        public let path: String, temporaryPath: String, directory: String

        public init(_ path: String) throws {
            let url = URL(fileURLWithPath: path)
            self.path = path
            directory = url.deletingLastPathComponent().path
            temporaryPath = directory + "/." + url.lastPathComponent + AtomicFile.temporarySuffix + "\(getpid())"
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            guard access(directory, W_OK) == 0 else { throw GPT2DistError(.fileFormat, "cannot write to directory \(directory)") }
        }

        /// fsync the temporary file, rename it over `path`, fsync the directory; on failure the temporary goes.
        public func commit() throws {
            do {
                try AtomicFile.fsync(path: temporaryPath)
                guard rename(temporaryPath, path) == 0 else {
                    throw GPT2DistError(.fileFormat, "cannot rename \(temporaryPath) to \(path): \(String(cString: strerror(errno)))")
                }
                try? AtomicFile.fsync(path: directory)
            } catch {
                abandon()
                throw error
            }
        }

        public func abandon() { unlink(temporaryPath) }
    }

    public static func write(_ path: String, _ body: (String) throws -> Void) throws {
        let pending = try Pending(path)
        do { try body(pending.temporaryPath) } catch {
            pending.abandon()
            throw error
        }
        try pending.commit()
    }

    /// Temporary files are named `.NAME.tmp-PID` (PID: the writing process).
    static let temporarySuffix = ".tmp-"

    /// Removes the temporary files in `directory` whose final name satisfies `isOurs` and whose writing process is
    /// gone (killed while writing); returns their paths. Files of a live writer are left alone.
    public static func removeAbandoned(directory: String, isOurs: (String) -> Bool) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var removed: [String] = []
        for name in names where name.hasPrefix(".") {
            guard let cut = name.range(of: temporarySuffix, options: .backwards),
                  let pid = Int32(name[cut.upperBound...]), isOurs(String(name[name.index(after: name.startIndex)..<cut.lowerBound]))
            else { continue }
            if pid == getpid() || kill(pid, 0) == 0 || errno == EPERM { continue }  // still being written
            if unlink(directory + "/" + name) == 0 { removed.append(directory + "/" + name) }
        }
        return removed
    }

    /// Bytes free for this user in the filesystem holding `directory` (nil when unknown).
    public static func freeBytes(directory: String) -> Int? {
        var st = statvfs()
        guard statvfs(directory, &st) == 0 else { return nil }
        return Int(st.f_bavail) * Int(st.f_frsize)
    }

    public static func fsync(path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw GPT2DistError(.fileFormat, "cannot open \(path) to sync it") }
        defer { close(fd) }
        guard Glibc.fsync(fd) == 0 else { throw GPT2DistError(.fileFormat, "fsync \(path) failed (disk full?)") }
    }

    /// Writes small text (e.g. the "latest" pointer) atomically.
    public static func write(text: String, to path: String) throws {
        try write(path) { tmp in
            guard FileManager.default.createFile(atPath: tmp, contents: Data(text.utf8)) else {
                throw GPT2DistError(.fileFormat, "cannot write \(tmp)")
            }
        }
    }
}
