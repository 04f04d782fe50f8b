import Common
import Foundation

/// `manifest.json`, which `prepare` writes beside the shards it made: what went in, how it was split, and the
/// sha256 and token count of every shard. Training trusts the token ids of a shard the manifest lists (prepare
/// checked them when it wrote it) once its hash matches, instead of scanning every token at every start, and
/// stores the manifest's `id` in its checkpoints so that a resume notices a different dataset under the same path.
public struct DatasetManifest: Codable, Equatable, Sendable {
    public static let fileName = "manifest.json"
    public static let currentFormat = 1

    public struct Input: Codable, Equatable, Sendable {
        public var path: String
        public var bytes: Int
        public var documents: Int
        public init(path: String, bytes: Int, documents: Int) { self.path = path; self.bytes = bytes; self.documents = documents }
    }

    public struct Shard: Codable, Equatable, Sendable {
        public var name: String
        public var split: String      // "train" or "val"
        public var tokens: Int
        public var sha256: String
        public init(name: String, split: String, tokens: Int, sha256: String) {
            self.name = name; self.split = split; self.tokens = tokens; self.sha256 = sha256
        }
    }

    public struct Split: Codable, Equatable, Sendable {
        public var documents = 0
        public var tokens = 0
        public init() {}
    }

    public struct Vocabulary: Codable, Equatable, Sendable {
        public var file: String
        public var sha256: String
        public init(file: String, sha256: String) { self.file = file; self.sha256 = sha256 }
    }

    public var format = DatasetManifest.currentFormat
    /// sha256 of the shard digests in order (name:sha256 per line): the dataset's identity.
    public var id = ""
    public var createdBy = "gpt2-dist prepare"
    public var vocabulary: [Vocabulary] = []
    /// Every token id is below this (prepare checked them all).
    public var tokenIdLimit = 0
    public var jsonlField = "text"
    /// How documents were assigned to the validation split.
    public var validation = ""
    public var valFraction = 0.0
    public var train = Split()
    public var val = Split()
    public var emptyDocumentsSkipped = 0
    public var badLinesSkipped = 0
    public var invalidUtf8Replaced = 0
    public var inputs: [Input] = []
    public var shards: [Shard] = []

    public init() {}

    /// The identity of a list of shards (what `id` holds).
    public static func identity(of shards: [Shard]) -> String {
        var h = SHA256()
        for s in shards { h.update(Data("\(s.name):\(s.sha256)\n".utf8)) }
        return h.finalizeHex()
    }

    public func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.keyEncodingStrategy = .convertToSnakeCase
        return try e.encode(self)
    }

    /// The manifest in `directory`, nil when there is none; a damaged one is an error.
    public static func load(directory: String) throws -> DatasetManifest? {
        let path = directory + "/" + fileName
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else { throw GPT2DistError(.data, "cannot read \(path)") }
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        let m: DatasetManifest
        do { m = try d.decode(DatasetManifest.self, from: data) } catch {
            throw GPT2DistError(.data, "\(path) is not a dataset manifest written by gpt2-dist prepare (\(error))")
        }
        guard m.format == currentFormat else { throw GPT2DistError(.data, "\(path): unsupported manifest format \(m.format)") }
        guard m.id == identity(of: m.shards) else { throw GPT2DistError(.data, "\(path): its id does not match its shard list (edited by hand?)") }
        return m
    }

    public func shard(named name: String) -> Shard? { shards.first { $0.name == name } }
}

/// The manifest that vouches for a list of shard files: every path lies in the manifest's directory and is listed
/// in it. Checks size and header count of each (cheap) and the sha256 of the shards with index % `hashShare.of`
/// == `hashShare.index` (ranks split the hashing), on up to `threads` threads.
public struct ManifestCheck: Sendable {
    public let manifest: DatasetManifest
    public let directory: String

    /// nil when the paths are not all listed by one manifest (hand-made shards: the token ids are scanned instead).
    public static func find(paths: [String]) throws -> ManifestCheck? {
        let dirs = Set(paths.map { ($0 as NSString).deletingLastPathComponent })
        guard dirs.count == 1, let dir = dirs.first else { return nil }
        let directory = dir.isEmpty ? "." : dir
        guard let m = try DatasetManifest.load(directory: directory) else { return nil }
        for p in paths where m.shard(named: (p as NSString).lastPathComponent) == nil {
            throw GPT2DistError(.data, "\(p) is not listed in \(directory)/\(DatasetManifest.fileName); re-run prepare into a new directory")
        }
        return ManifestCheck(manifest: m, directory: directory)
    }

    public func verify(paths: [String], hashShare: (index: Int, of: Int), threads: Int) throws {
        let entries = paths.map { manifest.shard(named: ($0 as NSString).lastPathComponent)! }
        for (p, s) in zip(paths, entries) {
            let size = (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? -1
            guard size == TokenShardFormat.headerBytes + 2 * s.tokens else {
                throw GPT2DistError(.data, "\(p): \(size) bytes, but the manifest lists \(s.tokens) tokens; the shards changed after prepare")
            }
        }
        let mine = paths.indices.filter { $0 % hashShare.of == hashShare.index }
        let failures = UnsafeMutableBufferPointer<Int>.allocate(capacity: max(mine.count, 1))
        defer { failures.deallocate() }
        let workers = min(max(threads, 1), max(mine.count, 1))
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for j in stride(from: worker, to: mine.count, by: workers) {
                let i = mine[j]
                failures[j] = ((try? SHA256.hex(ofFile: paths[i])) == entries[i].sha256) ? -1 : i
            }
        }
        if let bad = failures.prefix(mine.count).first(where: { $0 >= 0 }) {
            throw GPT2DistError(.data, "\(paths[bad]): sha256 differs from \(directory)/\(DatasetManifest.fileName); the shard changed after prepare")
        }
    }
}
