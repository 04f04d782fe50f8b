import Foundation

/// A command-line argument that names files: a file, a directory, or a glob pattern. `prepare`'s inputs and
/// `train`/`eval`'s token data are both read through this one resolver.
public enum PathSpec {
    /// A file a spec stands for; `named` when the spec (or a glob match) names it, not a directory holding it.
    public struct Match: Equatable, Sendable {
        public let path: String
        public let named: Bool
    }

    /// The files of `spec`, in order: a file is itself; a directory gives its files that `accepts` (hidden entries
    /// skipped; subdirectories too when `recursive`), sorted by path; a pattern gives its matches sorted by path,
    /// each expanded the same way. Throws `notFound(spec)` when nothing exists there or matches.
    public static func expand(_ spec: String, recursive: Bool, accepts: (String) -> Bool,
                              notFound: (String) -> String) throws -> [Match] {
        let fm = FileManager.default
        func directory(_ dir: String) throws -> [Match] {
            var found: [String] = []
            if recursive {
                guard let walker = fm.enumerator(atPath: dir) else {
                    throw GPT2DistError(.data, "cannot read directory \(dir)")
                }
                while let relative = walker.nextObject() as? String {
                    let name = (relative as NSString).lastPathComponent
                    if name.hasPrefix(".") { walker.skipDescendants(); continue }
                    let full = dir + "/" + relative
                    if !isDirectory(full) && accepts(name) { found.append(full) }
                }
            } else {
                guard let names = try? fm.contentsOfDirectory(atPath: dir) else {
                    throw GPT2DistError(.data, "cannot read directory \(dir)")
                }
                found = names.filter { !$0.hasPrefix(".") && accepts($0) && !isDirectory(dir + "/" + $0) }.map { dir + "/" + $0 }
            }
            return found.sorted().map { Match(path: $0, named: false) }
        }
        if fm.fileExists(atPath: spec) {
            return isDirectory(spec) ? try directory(spec) : [Match(path: spec, named: true)]
        }
        var g = glob_t()
        defer { globfree(&g) }
        guard glob(spec, 0, nil, &g) == 0, g.gl_pathc > 0 else { throw GPT2DistError(.data, notFound(spec)) }
        let matches = (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }.sorted()
        return try matches.flatMap { isDirectory($0) ? try directory($0) : [Match(path: $0, named: true)] }
    }

    static func isDirectory(_ path: String) -> Bool {
        var flag: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &flag) && flag.boolValue
    }
}
