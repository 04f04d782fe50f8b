import Foundation
import GPT2

/// Every setting of a training run. Defaults follow GPT-2/nanoGPT; a run config file (JSON with these
/// keys, e.g. Configs/shakespeare-small.run.json) overrides them and command-line flags override both.
public struct TrainOptions: Codable, Equatable, Sendable {
    public var config: String? = nil          // model config JSON (optional with --init/--resume)
    public var data: String = ""              // token file, directory of shards, or glob
    public var val: String? = nil
    public var out: String = ""
    public var steps = 100
    public var batchSize = 8                  // global sequences per optimizer step
    public var microBatchSize: Int? = nil     // per rank per forward/backward (default batch / ranks)
    public var seqLen = 128
    public var lr = 6e-4
    public var minLR = 6e-5
    public var warmupSteps = 0
    /// Constant after warmup by default, so extending a run (--resume --steps N) never changes steps already taken;
    /// cosine decays to --min-lr over --lr-decay-steps (default --steps).
    public var lrSchedule = "constant"
    public var lrDecaySteps: Int? = nil
    public var weightDecay = 0.1
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    public var gradClip = 1.0
    public var seed = 1337
    public var shuffle = false
    public var initFrom: String? = nil
    public var resume: String? = nil          // "latest" or a checkpoint path
    public var ckptEvery = 0                  // 0: only at the end (and on preemption)
    public var keepCheckpoints = 3
    public var evalEvery = 0
    public var evalBatches = 10
    public var threads: Int? = nil
    public var bucketMB = 25.0
    public var overlap = true
    public var zero = 0
    public var recompute = false
    public var checksumEvery = 50
    public var maxBadSteps = 5

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case config, data, val, out, steps, lr, eps, seed, shuffle, threads, zero, recompute, overlap
        case batchSize = "batch-size", microBatchSize = "micro-batch-size", seqLen = "seq-len", minLR = "min-lr"
        case warmupSteps = "warmup-steps", lrSchedule = "lr-schedule", lrDecaySteps = "lr-decay-steps", weightDecay = "weight-decay"
        case beta1, beta2, gradClip = "grad-clip", initFrom = "init", resume, ckptEvery = "ckpt-every"
        case keepCheckpoints = "keep-checkpoints", evalEvery = "eval-every", evalBatches = "eval-batches"
        case bucketMB = "bucket-mb", checksumEvery = "checksum-every", maxBadSteps = "max-bad-steps"
    }

    /// Applies a run config file: a JSON object whose keys are option names (unknown keys are errors).
    public mutating func apply(runConfigFile path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigError("cannot read run config \(path)") }
        guard let obj = (try? JSONValue.parse(data))?.object else { throw ConfigError("\(path): malformed JSON (expected an object)") }
        let known = Set(TrainOptions.CodingKeys.allKeys)
        for k in obj.keys.sorted() where !known.contains(k) {
            throw ConfigError("\(path): unknown run option \"\(k)\"")
        }
        // Merge: encode current options, overlay the file's keys, decode back (type errors name the key).
        var current = try JSONSerialization.jsonObject(with: JSONEncoder().encode(self)) as! [String: Any]
        let raw = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        for (k, v) in raw { current[k] = v }
        do {
            self = try JSONDecoder().decode(TrainOptions.self, from: JSONSerialization.data(withJSONObject: current))
        } catch DecodingError.typeMismatch(_, let ctx), DecodingError.dataCorrupted(let ctx) {
            throw ConfigError("\(path): bad value for \"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\"")
        }
    }

    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: try! e.encode(self), as: UTF8.self)
    }
}

extension TrainOptions.CodingKeys {
    static var allKeys: [String] { allCases.map(\.rawValue) }
}

public struct TrainError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
