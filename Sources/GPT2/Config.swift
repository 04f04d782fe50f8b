import Common
import Foundation

/// GPT-2 hyper-parameters, with the keys of Raschka's "Build a LLM from scratch" configs.
public struct GPT2Config: Equatable, Sendable {
    public var vocabSize: Int
    public var contextLength: Int
    public var embDim: Int
    public var nHeads: Int
    public var nLayers: Int
    public var dropRate: Double
    public var qkvBias: Bool

    public static let keys = ["vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias"]

    public init(vocabSize: Int, contextLength: Int, embDim: Int, nHeads: Int, nLayers: Int,
                dropRate: Double = 0, qkvBias: Bool = true) throws {
        self.vocabSize = vocabSize; self.contextLength = contextLength; self.embDim = embDim
        self.nHeads = nHeads; self.nLayers = nLayers; self.dropRate = dropRate; self.qkvBias = qkvBias
        try validate()
    }

    public var headSize: Int { embDim / nHeads }

    public func validate() throws {
        // Limits far beyond any GPT-2, and small enough that no size computed from them overflows.
        for (key, value, limit) in [("vocab_size", vocabSize, 1 << 22), ("context_length", contextLength, 1 << 20),
                                    ("emb_dim", embDim, 1 << 16), ("n_heads", nHeads, 1 << 16), ("n_layers", nLayers, 1 << 12)] {
            if value <= 0 { throw GPT2DistError(.config, "\(key) must be a positive integer, got \(value)") }
            if value > limit { throw GPT2DistError(.config, "\(key) \(value) is larger than gpt2-dist supports (\(limit))") }
        }
        if embDim % nHeads != 0 {
            throw GPT2DistError(.config, "emb_dim (\(embDim)) must be divisible by n_heads (\(nHeads))")
        }
        if !(dropRate >= 0 && dropRate < 1) {
            throw GPT2DistError(.config, "drop_rate must be in [0, 1), got \(dropRate)")
        }
    }

    /// Parses a JSON object with exactly the seven keys; the error names the offending key.
    public static func parse(json data: Data, source: String = "config") throws -> GPT2Config {
        let value: JSONValue
        do { value = try JSONValue.parse(data) } catch {
            throw GPT2DistError(.config, "\(source): malformed JSON")
        }
        guard let dict = value.object else { throw GPT2DistError(.config, "\(source): expected a JSON object") }
        return try from(dictionary: dict, source: source)
    }

    public static func from(dictionary dict: [String: JSONValue], source: String = "config") throws -> GPT2Config {
        for key in dict.keys.sorted() where !keys.contains(key) {
            throw GPT2DistError(.config, "\(source): unknown key \"\(key)\" (expected \(keys.joined(separator: ", ")))")
        }
        func value(_ key: String) throws -> JSONValue {
            guard let v = dict[key] else { throw GPT2DistError(.config, "\(source): missing key \"\(key)\"") }
            return v
        }
        func int(_ key: String) throws -> Int {
            let v = try value(key)
            guard let i = v.int else { throw GPT2DistError(.config, "\(source): \"\(key)\" must be an integer, got \(v)") }
            return i
        }
        let d = try value("drop_rate")
        guard let drop = d.number else { throw GPT2DistError(.config, "\(source): \"drop_rate\" must be a number, got \(d)") }
        let q = try value("qkv_bias")
        guard let qkv = q.bool else { throw GPT2DistError(.config, "\(source): \"qkv_bias\" must be true or false, got \(q)") }
        do {
            return try GPT2Config(vocabSize: int("vocab_size"), contextLength: int("context_length"),
                                  embDim: int("emb_dim"), nHeads: int("n_heads"), nLayers: int("n_layers"),
                                  dropRate: drop, qkvBias: qkv)
        } catch let e as GPT2DistError where !e.message.hasPrefix(source) {
            throw GPT2DistError(.config, "\(source): \(e.message)")
        }
    }

    public static func load(path: String) throws -> GPT2Config {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GPT2DistError(.config, "cannot read config file \(path)")
        }
        return try parse(json: data, source: path)
    }

    public var dictionary: [String: Any] {
        ["vocab_size": vocabSize, "context_length": contextLength, "emb_dim": embDim, "n_heads": nHeads,
         "n_layers": nLayers, "drop_rate": dropRate, "qkv_bias": qkvBias]
    }

    public var jsonString: String {
        let d = try! JSONSerialization.data(withJSONObject: dictionary, options: [.sortedKeys, .prettyPrinted])
        return String(decoding: d, as: UTF8.self)
    }
}

