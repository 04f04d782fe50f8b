import Common
import Foundation

/// llm.c's token shard format: a header of 256 little-endian int32 (magic 20240520, version 1,
/// token count, rest 0) followed by the tokens as little-endian uint16.
public enum TokenShardFormat {
    public static let magic: Int32 = 20_240_520
    public static let version: Int32 = 1
    public static let headerBytes = 256 * 4

    /// The header of a shard holding `tokens` tokens.
    public static func header(tokens: Int) -> Data {
        var header = [Int32](repeating: 0, count: 256)
        header[0] = magic; header[1] = version; header[2] = Int32(tokens)
        return header.withUnsafeBytes { Data($0) }
    }

    /// The bytes of a shard holding `tokens`.
    public static func encode(_ tokens: [UInt16]) -> Data {
        var data = header(tokens: tokens.count)
        tokens.withUnsafeBytes { data.append(contentsOf: $0) }
        return data
    }

    public static func write(tokens: [UInt16], to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: encode(tokens)) else {
            throw GPT2DistError(.data, "cannot write \(path)")
        }
    }
}

/// One or more token shards seen as a single token stream (shards concatenated in the order given).
public final class TokenDataset: @unchecked Sendable {
    public let paths: [String]
    private let shards: [Data]
    private let starts: [Int]  // first global token index of each shard
    public let count: Int

    /// Opens shards and validates headers, sizes and (if `vocabSize` is given) every token id, unless the ids
    /// are already known to lie below `idsCheckedBelow` <= vocabSize (a manifest vouches for them).
    public init(paths: [String], vocabSize: Int?, idsCheckedBelow: Int? = nil) throws {
        guard !paths.isEmpty else { throw GPT2DistError(.data, "no token files given") }
        var shards: [Data] = [], starts: [Int] = [], total = 0
        for path in paths {
            guard let d = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
                throw GPT2DistError(.data, "cannot read token file \(path)")
            }
            guard d.count >= TokenShardFormat.headerBytes else {
                throw GPT2DistError(.data, "\(path): truncated token file (\(d.count) bytes, header needs 1024)")
            }
            let (magic, version, n) = d.withUnsafeBytes { raw in
                (Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: Int32.self)),
                 Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: Int32.self)),
                 Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: Int32.self))))
            }
            guard magic == TokenShardFormat.magic else {
                throw GPT2DistError(.data, "\(path): not an llm.c token file (magic \(magic), expected \(TokenShardFormat.magic))")
            }
            guard version == TokenShardFormat.version else {
                throw GPT2DistError(.data, "\(path): unsupported token file version \(version) (expected 1: uint16 tokens)")
            }
            let expected = TokenShardFormat.headerBytes + 2 * n
            guard n >= 0, d.count >= expected else {
                throw GPT2DistError(.data, "\(path): truncated token file (header says \(n) tokens, file holds \((d.count - TokenShardFormat.headerBytes) / 2))")
            }
            guard d.count == expected else {
                throw GPT2DistError(.data, "\(path): \(d.count - expected) unexpected bytes after \(n) tokens")
            }
            if let v = vocabSize, (idsCheckedBelow ?? Int.max) > v {
                let bad: (Int, Int)? = d.withUnsafeBytes { raw in
                    let t = (raw.baseAddress! + TokenShardFormat.headerBytes).assumingMemoryBound(to: UInt16.self)
                    for i in 0..<n where Int(UInt16(littleEndian: t[i])) >= v { return (i, Int(UInt16(littleEndian: t[i]))) }
                    return nil
                }
                if let (i, id) = bad {
                    throw GPT2DistError(.data, "\(path): token id \(id) at position \(i) is out of range for vocab_size \(v)")
                }
            }
            shards.append(d); starts.append(total); total += n
        }
        self.paths = paths; self.shards = shards; self.starts = starts; count = total
    }

    /// Tokens already in memory (e.g. text tokenized on the fly), seen as one shard.
    public init(tokens: [UInt16]) {
        paths = ["<memory>"]; shards = [TokenShardFormat.encode(tokens)]; starts = [0]; count = tokens.count
    }

    /// Expands a file, a directory or a glob pattern into shard paths. In a directory, the *.bin files whose
    /// names start with `preferring` (e.g. "train" or "val", as `prepare` writes them) when there are any,
    /// else all *.bin files; sorted.
    public static func resolve(_ spec: String, preferring prefix: String? = nil) throws -> [String] {
        let matches = try PathSpec.expand(spec, recursive: false, accepts: { $0.hasSuffix(".bin") },
                                          notFound: { "no token files match \($0)" })
        // In a directory, the shards of the split asked for (train_*.bin, val_*.bin) when it has any.
        let found = matches.filter { !$0.named }
        let preferred = prefix.map { p in found.filter { URL(fileURLWithPath: $0.path).lastPathComponent.hasPrefix(p) } } ?? []
        let chosen = matches.filter(\.named) + (preferred.isEmpty ? found : preferred)
        guard !chosen.isEmpty else { throw GPT2DistError(.data, "no *.bin token files in \(spec)") }
        return chosen.map(\.path)
    }

    public convenience init(spec: String, vocabSize: Int?, preferring prefix: String? = nil) throws {
        try self.init(paths: Self.resolve(spec, preferring: prefix), vocabSize: vocabSize)
    }

    /// Copies tokens [start, start + n) into `out` as Int32.
    public func copy(from start: Int, count n: Int, into out: UnsafeMutablePointer<Int32>) {
        precondition(start >= 0 && start + n <= count, "token range out of bounds")
        var done = 0
        var s = starts.lastIndex(where: { $0 <= start })!
        while done < n {
            let local = start + done - starts[s]
            let shardCount = (s + 1 < starts.count ? starts[s + 1] : count) - starts[s]
            let take = min(n - done, shardCount - local)
            shards[s].withUnsafeBytes { raw in
                let t = (raw.baseAddress! + TokenShardFormat.headerBytes).assumingMemoryBound(to: UInt16.self)
                for i in 0..<take { out[done + i] = Int32(UInt16(littleEndian: t[local + i])) }
            }
            done += take
            s += 1
        }
    }

    public func tokens() -> [Int32] {
        var a = [Int32](repeating: 0, count: count)
        a.withUnsafeMutableBufferPointer { copy(from: 0, count: count, into: $0.baseAddress!) }
        return a
    }
}

/// The batch order shared by training and evaluation. With M = floor((tokens-1)/(B·T)) spans,
/// optimizer step s covers the span starting at token (s mod M)·B·T (or a seeded permutation of spans
/// with shuffling); global row b has inputs [start + b·T, start + (b+1)·T) and targets shifted by one.
public struct BatchOrder: Sendable {
    public let batchSize: Int, seqLen: Int, tokenCount: Int
    public let spans: Int
    public let shuffleSeed: UInt64?

    public init(tokenCount: Int, batchSize: Int, seqLen: Int, shuffleSeed: UInt64? = nil) throws {
        guard batchSize > 0, seqLen > 0 else { throw GPT2DistError(.data, "batch size and sequence length must be positive") }
        let m = (tokenCount - 1) / (batchSize * seqLen)
        guard m >= 1 else {
            throw GPT2DistError(.data, "data has \(tokenCount) tokens; one batch of \(batchSize) x \(seqLen) needs at least \(batchSize * seqLen + 1)")
        }
        self.batchSize = batchSize; self.seqLen = seqLen; self.tokenCount = tokenCount
        spans = m; self.shuffleSeed = shuffleSeed
    }

    /// Which span step s reads: s mod M, or with shuffling a permutation of the spans that is fresh
    /// each epoch and depends only on (seed, epoch).
    public func span(step: Int) -> Int {
        let epoch = step / spans, i = step % spans
        guard let seed = shuffleSeed, spans > 1 else { return i }
        return Self.permute(i, n: spans, key: seed &* 0x9E37_79B9 &+ UInt64(epoch))
    }

    public func startToken(step: Int) -> Int { span(step: step) * batchSize * seqLen }

    /// Fills inputs and targets for global rows [firstRow, firstRow + rows) of step s.
    public func fill(_ data: TokenDataset, step: Int, firstRow: Int, rows: Int,
                     inputs: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>) {
        precondition(firstRow >= 0 && firstRow + rows <= batchSize)
        let start = startToken(step: step) + firstRow * seqLen
        data.copy(from: start, count: rows * seqLen, into: inputs)
        data.copy(from: start + 1, count: rows * seqLen, into: targets)
    }

    /// A bijection on 0..<n from a keyed Feistel network with cycle walking (no table, any n).
    static func permute(_ x: Int, n: Int, key: UInt64) -> Int {
        var bits = 1
        while (1 << bits) < n { bits += 1 }
        let half = (bits + 1) / 2, mask = UInt64((1 << half) - 1)
        var v = UInt64(x)
        repeat {
            var l = v >> UInt64(half), r = v & mask
            for round in 0..<4 {
                let f = CounterRandom.mix(r ^ (key &+ UInt64(round) &* 0xA24B_AED4_963E_E407)) & mask
                (l, r) = (r, l ^ f)
            }
            v = (l << UInt64(half)) | r
        } while v >= UInt64(n)
        return Int(v)
    }
}
