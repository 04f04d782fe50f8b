import Common
import Foundation
import GPT2

/// A scaling sweep (`gpt2-dist sweep`): a family of models, a list of compute budgets, one optimisation recipe.
/// Every (budget, depth) pair is one run. The file is JSON; every key is one of `Sweep.Key` (an unknown key, a
/// missing one or a value of the wrong kind is a one-line error naming it). See Configs/sweep-tiny.json.
///
/// - Family: `depths`; each depth d gets emb_dim = `width_per_depth`·d and n_heads = emb_dim / `head_size`;
///   vocab_size, context_length, drop_rate and qkv_bias come from `base_config`.
/// - Budgets (`budgets`, FLOPs per run): tokens = budget / F with F = 6N + 12·L·C·T (nanoGPT's count, the trainer's
///   MFU formula), steps = ⌊tokens / (batch_size·seq_len)⌋ (at least one: a smaller budget is an error).
/// - Learning rate (`lr`, `lr_rule`): `inverse-width` gives lr·`lr_base_width`/emb_dim (μP-like), `constant` lr for
///   every size; the schedule is WSD (warmup `warmup_steps`, decay over the last `decay_fraction` to
///   `min_lr_fraction`·lr).
public struct Sweep: Sendable {
    public enum Key: String, CaseIterable {
        case baseConfig = "base_config", depths, widthPerDepth = "width_per_depth", headSize = "head_size", budgets
        case batchSize = "batch_size", seqLen = "seq_len", lr, lrRule = "lr_rule", lrBaseWidth = "lr_base_width"
        case minLrFraction = "min_lr_fraction", warmupSteps = "warmup_steps", decayFraction = "decay_fraction"
        case data, val, task, taskLimit = "task_limit", seed, ranks, threads, maxEpochs = "max_epochs"
    }
    public enum LRRule: String, Sendable, CaseIterable { case inverseWidth = "inverse-width", constant }

    public var base: GPT2Config
    public var depths: [Int], widthPerDepth: Int, headSize: Int
    public var budgets: [Double]
    public var batchSize: Int, seqLen: Int
    public var lr: Double, lrRule: LRRule, lrBaseWidth: Int
    public var minLrFraction: Double, warmupSteps: Int, decayFraction: Double
    public var data: String, val: String?, task: String?, taskLimit: Int?
    public var seed: Int, ranks: Int, threads: Int
    /// How many passes over the training tokens a run may make before the plan flags it.
    public var maxEpochs: Double

    /// One run of the grid.
    public struct Point: Sendable {
        public let name: String
        public let budget: Double, depth: Int
        public let config: GPT2Config
        public let tokens: Int, steps: Int, lr: Double
        public var parameters: Int { config.parameterCount }
    }

    public static func load(path: String) throws -> Sweep {
        guard let data = FileManager.default.contents(atPath: path) else { throw GPT2DistError(.usage, "cannot read sweep file \(path)") }
        let json: JSONValue
        do { json = try JSONValue.parse(data) } catch { throw GPT2DistError(.config, "\(path): not JSON (\(error))") }
        guard let object = json.object else { throw GPT2DistError(.config, "\(path): a sweep file is a JSON object") }
        return try Sweep(object, source: path, directory: URL(fileURLWithPath: path).deletingLastPathComponent().path)
    }

    /// `directory`: where the file's relative paths start (the sweep file's own directory).
    public init(_ o: [String: JSONValue], source: String, directory: String = ".") throws {
        if let unknown = o.keys.sorted().first(where: { Key(rawValue: $0) == nil }) {
            throw GPT2DistError(.config, "\(source): unknown key \"\(unknown)\" (known: \(Key.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        func value(_ k: Key) throws -> JSONValue {
            guard let v = o[k.rawValue] else { throw GPT2DistError(.config, "\(source): missing \"\(k.rawValue)\"") }
            return v
        }
        func bad(_ k: Key, _ what: String) -> GPT2DistError { GPT2DistError(.config, "\(source): \"\(k.rawValue)\" must be \(what)") }
        func int(_ k: Key, _ fallback: Int? = nil, min: Int = 1) throws -> Int {
            if o[k.rawValue] == nil, let fallback { return fallback }
            guard let i = try value(k).int, i >= min else { throw bad(k, "an integer >= \(min)") }
            return i
        }
        func number(_ k: Key, _ fallback: Double? = nil, _ ok: (Double) -> Bool, _ what: String) throws -> Double {
            if o[k.rawValue] == nil, let fallback { return fallback }
            guard let d = try value(k).number, d.isFinite, ok(d) else { throw bad(k, what) }
            return d
        }
        func string(_ k: Key) throws -> String? {
            guard let v = o[k.rawValue] else { return nil }
            guard let s = v.string, !s.isEmpty else { throw bad(k, "a non-empty string") }
            return s
        }
        func path(_ p: String) -> String {
            URL(fileURLWithPath: p, relativeTo: URL(fileURLWithPath: directory, isDirectory: true)).absoluteURL.standardized.path
        }
        guard let basePath = try string(.baseConfig) else { throw GPT2DistError(.config, "\(source): missing \"base_config\"") }
        base = try GPT2Config.load(path: path(basePath))
        guard let ds = try value(.depths).array?.compactMap(\.int), !ds.isEmpty, ds.allSatisfy({ $0 >= 1 }),
              ds.count == o["depths"]!.array!.count else { throw bad(.depths, "a non-empty list of integers >= 1") }
        depths = ds
        widthPerDepth = try int(.widthPerDepth)
        headSize = try int(.headSize)
        guard let bs = try value(.budgets).array?.compactMap(\.number), !bs.isEmpty, bs.allSatisfy({ $0.isFinite && $0 > 0 }),
              bs.count == o["budgets"]!.array!.count else { throw bad(.budgets, "a non-empty list of FLOP counts > 0") }
        budgets = bs.sorted()
        batchSize = try int(.batchSize)
        seqLen = try int(.seqLen)
        guard seqLen <= base.contextLength else { throw bad(.seqLen, "at most the base config's context_length \(base.contextLength)") }
        lr = try number(.lr, nil, { $0 > 0 }, "a number > 0")
        let rule = try string(.lrRule) ?? LRRule.inverseWidth.rawValue
        guard let r = LRRule(rawValue: rule) else { throw bad(.lrRule, "one of \(LRRule.allCases.map(\.rawValue).joined(separator: ", "))") }
        lrRule = r
        lrBaseWidth = try int(.lrBaseWidth, widthPerDepth)
        minLrFraction = try number(.minLrFraction, 0.1, { $0 >= 0 && $0 <= 1 }, "a number in [0, 1]")
        warmupSteps = try int(.warmupSteps, 0, min: 0)
        decayFraction = try number(.decayFraction, 0.2, { $0 > 0 && $0 <= 1 }, "a number in (0, 1]")
        guard let d = try string(.data) else { throw GPT2DistError(.config, "\(source): missing \"data\"") }
        data = path(d)
        val = try string(.val).map(path)
        task = try string(.task)
        taskLimit = o[Key.taskLimit.rawValue] == nil ? nil : try int(.taskLimit)
        seed = try int(.seed, 1337, min: 0)
        ranks = try int(.ranks, 1)
        threads = try int(.threads, 1)
        maxEpochs = try number(.maxEpochs, 4, { $0 > 0 }, "a number > 0")
        for depth in depths where (widthPerDepth * depth) % headSize != 0 {
            throw bad(.headSize, "a divisor of every width: depth \(depth) has width \(widthPerDepth * depth)")
        }
        var resolved = o
        resolved[Key.baseConfig.rawValue] = .string(path(basePath))
        resolved[Key.data.rawValue] = .string(data)
        if let val { resolved[Key.val.rawValue] = .string(val) }
        definition = resolved
        _ = try points()  // every budget buys at least one step of every size
    }

    /// The sweep as its file gave it, with its paths made absolute: `sweep run` keeps it as DIR/sweep.json, so
    /// `sweep report DIR` and a later `sweep run` read the same sweep wherever they are started.
    public let definition: [String: JSONValue]
    public static let recordName = "sweep.json"

    /// The keys whose values differ between two sweeps, other than the grid's `budgets` and `depths` (a sweep may
    /// grow by budgets or depths; any other change would make its finished points a different experiment).
    public func recipeDifferences(from other: Sweep) -> [String] {
        Key.allCases.map(\.rawValue).filter { $0 != Key.budgets.rawValue && $0 != Key.depths.rawValue }
            .filter { definition[$0] != other.definition[$0] }
    }

    /// The grid, budgets outer, depths inner.
    public func points() throws -> [Point] {
        try budgets.flatMap { budget in
            try depths.map { depth in
                let width = widthPerDepth * depth
                let config = try GPT2Config(vocabSize: base.vocabSize, contextLength: base.contextLength, embDim: width,
                                            nHeads: width / headSize, nLayers: depth, dropRate: base.dropRate, qkvBias: base.qkvBias)
                let tokens = Int(budget / config.flopsPerToken(seqLen: seqLen))
                let steps = tokens / (batchSize * seqLen)
                guard steps >= 1 else {
                    throw GPT2DistError(.config, "\"budgets\": \(String(format: "%.3g", budget)) FLOPs buys depth \(depth) less than one step of "
                        + "\(batchSize) x \(seqLen) tokens (\(String(format: "%.3g", config.flopsPerToken(seqLen: seqLen) * Double(batchSize * seqLen))) FLOPs)")
                }
                let lr = lrRule == .constant ? self.lr : self.lr * Double(lrBaseWidth) / Double(width)
                return Point(name: String(format: "c%.2g-d%d", budget, depth).replacingOccurrences(of: "+", with: ""), budget: budget,
                             depth: depth, config: config, tokens: steps * batchSize * seqLen, steps: steps, lr: lr)
            }
        }
    }
}
