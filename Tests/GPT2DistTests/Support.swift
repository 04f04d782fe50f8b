import Common
import Autograd
import Foundation
import Testing

/// Repository root, found from this file's location.
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let fixtures = repoRoot + "/Tests/Fixtures"

/// Deterministic test data.
struct TestRandom {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 { state &+= 1; return CounterRandom.mix(state) }
    mutating func uniform(_ lo: Float = -1, _ hi: Float = 1) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / 16_777_216
    }
    mutating func fill(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ lo: Float = -1, _ hi: Float = 1) {
        for i in 0..<n { p[i] = uniform(lo, hi) }
    }
}

/// max |a - b| / max |b| (scaled by the reference tensor's largest magnitude).
func maxRelativeError(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var diff: Float = 0, scale: Float = 0
    for i in 0..<n {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / max(scale, 1e-12)
}

func tmpDir(_ name: String) -> String {
    let d = NSTemporaryDirectory() + "gpt2-dist-tests-\(getpid())/\(name)"
    try? FileManager.default.removeItem(atPath: d)
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// Exactly one "gpt2-dist: error:" line, exit 1, and nothing that looks like a crash; mentioning `needle` when given.
func expectOneLineError(_ r: CLI.Result, _ name: String, mentioning needle: String? = nil,
                        sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == 1, "\(name): exit \(r.status)\n\(r.stderr)", sourceLocation: sourceLocation)
    let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
    #expect(lines.count == 1 && lines[0].hasPrefix("gpt2-dist: error: "), "\(name):\n\(r.stderr)", sourceLocation: sourceLocation)
    if let needle { #expect(r.stderr.contains(needle), "\(name): no \"\(needle)\" in \(r.stderr)", sourceLocation: sourceLocation) }
}
