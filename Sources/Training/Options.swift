import ArgumentParser
import Foundation
import GPT2

/// Every setting of a training run, each declared once here: its flag, type, default and help. The same
/// declarations serve the command line, run-config files (JSON objects whose keys are these flag names) and the
/// `run_config` attribute stored in checkpoints: a file or a stored config is turned into `--name=value`
/// arguments placed before the command line, and everything is parsed by this one type (later values win).
public struct TrainOptions: ParsableArguments {
    public init() {}

    @Option(help: "Run config: a JSON object with these options' names as keys (flags given here override it).")
    public var runConfig: String?
    @Option(help: "Model config JSON (keys vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias); optional with --init or --resume.")
    public var config: String?
    @Option(help: "Training tokens: an llm.c .bin file, a directory of train_*.bin shards, or a glob.")
    public var data: String?
    @Option(help: "Validation tokens: a file, a directory of val_*.bin shards, or a glob.")
    public var val: String?
    @Option(help: "Run directory for checkpoints, metrics.h5 and loss.svg.")
    public var out: String?
    @Option(help: "Optimizer steps in total.")
    public var steps = 100
    @Option(help: "Global batch size in sequences per optimizer step.")
    public var batchSize = 8
    @Option(help: "Sequences per rank per forward/backward (default: batch-size / ranks; the rest is gradient accumulation).")
    public var microBatchSize: Int?
    @Option(help: "Sequence length in tokens.")
    public var seqLen = 128
    @Option(help: "Peak learning rate.")
    public var lr = 6e-4
    @Option(help: "Final learning rate of the cosine schedule.")
    public var minLr = 6e-5
    @Option(help: "Linear warmup steps.")
    public var warmupSteps = 0
    @Option(help: "constant (after warmup; extending a run never changes steps already taken) or cosine (to --min-lr at --lr-decay-steps).")
    public var lrSchedule = "constant"
    @Option(help: "Steps over which cosine decays (default: --steps).")
    public var lrDecaySteps: Int?
    @Option(help: "AdamW weight decay on matrices and embeddings.")
    public var weightDecay = 0.1
    @Option(help: "Learning-rate multiplier for the token embedding (wte, tied with the output head); 1 is GPT-2's single rate.")
    public var embeddingLrScale = 1.0
    @Option(help: "AdamW beta1.")
    public var beta1 = 0.9
    @Option(help: "AdamW beta2.")
    public var beta2 = 0.95
    @Option(help: "AdamW epsilon.")
    public var eps = 1e-8
    @Option(help: "Global gradient-norm clip (0: off).")
    public var gradClip = 1.0
    @Option(help: "Seed for initialisation, dropout and shuffling.")
    public var seed = 1337
    @Flag(inversion: .prefixedNo, exclusivity: .chooseLast, help: "Visit the data's spans in a seeded order (independent of the rank count).")
    public var shuffle = false
    @Option(name: [.customLong("init"), .long], help: "Start from the weights of this checkpoint (e.g. an imported GPT-2).")
    public var initFrom: String?
    @Option(help: "Resume: alone, the newest complete checkpoint in --out; or a checkpoint file. The run's stored settings apply, then --run-config, then flags.")
    public var resume: String?
    @Flag(inversion: .prefixedNo, exclusivity: .chooseLast, help: "With --resume: continue even though --data now holds a different dataset than the checkpoint was trained on (by its manifest id).")
    public var allowDataChange = false
    @Option(help: "Checkpoint every N steps (0: only at the end and on preemption).")
    public var ckptEvery = 0
    @Option(help: "Keep only the newest N checkpoints (0: keep all).")
    public var keepCheckpoints = 3
    @Option(help: "Validation every N steps (0: never).")
    public var evalEvery = 0
    @Option(help: "Validation batches per evaluation.")
    public var evalBatches = 10
    @Option(help: "Gradient bucket size in MB (buckets are filled in the order backward finishes the gradients).")
    public var bucketMb = TrainOptions.defaultBucketMb
    /// Also `gpt2-dist plan`'s default, so the plan models the trainer's buckets.
    public static let defaultBucketMb = 25.0
    @Flag(inversion: .prefixedNo, exclusivity: .chooseLast, help: "Overlap the gradient all-reduce with backward.")
    public var overlap = true
    @Option(help: "1: shard AdamW state across ranks (ZeRO-1); 0: replicate it.")
    public var zero = 0
    @Flag(inversion: .prefixedNo, exclusivity: .chooseLast, help: "Recompute block activations in backward to save memory.")
    public var recompute = false
    @Option(help: "Compare a parameter checksum across ranks every N steps (0: never).")
    public var checksumEvery = 50
    @Option(help: "Abort after N non-finite steps in a row.")
    public var maxBadSteps = 5
    @OptionGroup public var compute: ComputeOptions

    /// Options that say where a run starts, not how it trains: never taken from a checkpoint's stored settings.
    /// (`threads` describes the machine, not the run.)
    static let notRestored: Set<String> = ["run-config", "config", "init-from", "resume", "threads", "allow-data-change"]

    // MARK: layering

    /// Resolves the settings of `train` from its command-line arguments: defaults, then (when resuming) the run's
    /// own settings stored in its checkpoint, then --run-config, then flags.
    /// `storedSettings` reads the stored JSON of the checkpoint `--resume` picks (nil when there is none).
    public static func resolve(commandLine: [String],
                               storedSettings: (_ resume: String, _ out: String?) throws -> String?) throws -> TrainOptions {
        let given = try parsing(commandLine, source: "command line")
        let fromFile = try given.runConfig.map { try arguments(fromRunConfigFile: $0) } ?? []
        var options = try parsing(fromFile + commandLine, source: "command line")
        if let resume = options.resume, let stored = try storedSettings(resume, options.out) {
            let restored = try arguments(fromJSON: Data(stored.utf8), source: "the checkpoint's run_config", strict: false)
            options = try parsing(restored + fromFile + commandLine, source: "command line")
        }
        return options
    }

    /// Defaults with `arguments` applied (tests and tools).
    public static func parsing(_ arguments: [String], source: String = "arguments") throws -> TrainOptions {
        do { return try parse(arguments) } catch {
            let message = TrainOptions.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            throw TrainError("\(source): \(message)")
        }
    }

    public static func arguments(fromRunConfigFile path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { throw TrainError("cannot read run config \(path)") }
        return try arguments(fromJSON: data, source: path, strict: true)
    }

    /// `--name=value` arguments for a JSON object of settings. Strict (a user's file): unknown keys, null and values
    /// of the wrong type are errors naming the key. Not strict (a checkpoint's own settings, possibly written by
    /// another version): keys this version does not know are skipped, and so are the `notRestored` ones.
    static func arguments(fromJSON data: Data, source: String, strict: Bool) throws -> [String] {
        guard let object = (try? JSONValue.parse(data))?.object else {
            throw TrainError("\(source): malformed JSON (expected an object of option names and values)")
        }
        let kinds = Dictionary(uniqueKeysWithValues: Self.declared.map { ($0.name, $0.kind) })
        var out: [String] = []
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            let name = Self.canonicalName[key]
            if !strict && (name == nil || Self.notRestored.contains(name!)) { continue }
            guard let name, name != "run-config", let kind = kinds[name] else {
                throw TrainError("\(source): unknown run option \"\(key)\" (see gpt2-dist train --help)")
            }
            func bad(_ expected: String) -> TrainError {
                TrainError("\(source): \"\(key)\" must be \(expected), got \(value)")
            }
            switch (kind, value) {
            case (_, .null): throw bad(kind.expected + " (leave the key out for the default)")
            case (.flag, .bool(let b)): out.append(b ? "--\(name)" : "--no-\(name)")
            case (.int, _): guard let i = value.int else { throw bad(kind.expected) }; out.append("--\(name)=\(i)")
            case (.double, .number(let d)): out.append("--\(name)=\(d)")
            case (.string, .string(let s)): out.append("--\(name)=\(s)")
            default: throw bad(kind.expected)
            }
            // Each value alone, so an error names the file and the key rather than the merged argument list.
            _ = try parsing([out.last!], source: "\(source): \"\(key)\"")
        }
        return out
    }

    // MARK: the declarations, read back

    enum Kind {
        case int, double, string, flag
        var expected: String {
            switch self {
            case .int: return "an integer"
            case .double: return "a number"
            case .string: return "a string"
            case .flag: return "true or false"
            }
        }
    }

    struct Declared { let name: String; let kind: Kind; let value: Any }

    /// Every option of this type with its flag name, kind and value, read from the property wrappers themselves
    /// (in declaration order; option groups flattened). The name is the property's, in kebab case, which is also
    /// ArgumentParser's long name for it.
    var declared: [Declared] {
        func walk(_ subject: Any) -> [Declared] {
            Mirror(reflecting: subject).children.flatMap { child -> [Declared] in
                guard let label = child.label, let wrapper = child.value as? ParsedValue else { return [] }
                if wrapper.isGroup { return walk(wrapper.anyValue) }
                let name = Self.kebab(String(label.drop { $0 == "_" }))
                return [Declared(name: name, kind: Self.kind(of: wrapper.anyValue), value: wrapper.anyValue)]
            }
        }
        return walk(self)
    }

    static var declared: [Declared] { defaults.declared }
    static let defaults = try! TrainOptions.parse([])  // parsing no arguments cannot fail

    /// Each long name the parser accepts, mapped to the declared name of its option (`init` -> `init-from`).
    static let canonicalName: [String: String] = {
        let names = Set(declared.map(\.name))
        var map = Dictionary(uniqueKeysWithValues: names.map { ($0, $0) })
        let tool = try? JSONValue.parse(Data(TrainOptions._dumpHelp().utf8))
        for arg in tool?.object?["command"]?.object?["arguments"]?.array ?? [] {
            let longs = (arg.object?["names"]?.array ?? []).compactMap { n in
                n.object?["kind"]?.string == "long" ? n.object?["name"]?.string : nil
            }
            if let canonical = longs.first(where: names.contains) { for n in longs { map[n] = canonical } }
        }
        return map
    }()

    static func kebab(_ camel: String) -> String {
        camel.reduce(into: "") { s, c in
            if c.isUppercase { s += "-" + c.lowercased() } else { s.append(c) }
        }
    }

    static func kind(of value: Any) -> Kind {
        let t = String(describing: type(of: value))
        if t.contains("Bool") { return .flag }
        if t.contains("Int") { return .int }
        if t.contains("Double") { return .double }
        return .string
    }

    /// The settings as a JSON object (unset optional values left out), as stored in checkpoints' run_config.
    public var json: String {
        var object: [String: JSONValue] = [:]
        for d in declared where d.name != "run-config" {
            switch d.value {
            case let b as Bool: object[d.name] = .bool(b)
            case let i as Int: object[d.name] = .number(Double(i))
            case let x as Double: object[d.name] = x.isFinite ? .number(x) : .string(String(x))
            case let s as String: object[d.name] = .string(s)
            default: continue  // nil
            }
        }
        return JSONValue.object(object).json
    }

    // MARK: validation

    /// Checks every value that does not depend on the model or the data; throws a one-line error.
    /// (Not ArgumentParser's `validate`: a missing --data is fine while layering, and errors must be one line.)
    public func checkValues() throws {
        func require(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw TrainError(message()) }
        }
        func positive(_ v: Int, _ flag: String) throws { try require(v > 0, "--\(flag) must be a positive integer, got \(v)") }
        func nonNegative(_ v: Int, _ flag: String) throws { try require(v >= 0, "--\(flag) must be 0 or more, got \(v)") }
        func finite(_ v: Double, _ flag: String, _ range: String, _ ok: (Double) -> Bool) throws {
            try require(v.isFinite && ok(v), "--\(flag) must be a finite number \(range), got \(v)")
        }
        try require(data != nil && !data!.isEmpty, "--data is required")
        try require(out != nil && !out!.isEmpty, "--out is required")
        try positive(steps, "steps")
        try positive(batchSize, "batch-size")
        if let m = microBatchSize { try positive(m, "micro-batch-size") }
        try positive(seqLen, "seq-len")
        try finite(lr, "lr", "> 0", { $0 > 0 })
        try finite(minLr, "min-lr", ">= 0", { $0 >= 0 })
        try nonNegative(warmupSteps, "warmup-steps")
        try require(LRSchedule.Kind(rawValue: lrSchedule) != nil, "--lr-schedule must be constant or cosine, got \(lrSchedule)")
        if let d = lrDecaySteps { try positive(d, "lr-decay-steps") }
        try finite(weightDecay, "weight-decay", ">= 0", { $0 >= 0 })
        try finite(embeddingLrScale, "embedding-lr-scale", "> 0", { $0 > 0 })
        try finite(beta1, "beta1", "in [0, 1)", { $0 >= 0 && $0 < 1 })
        try finite(beta2, "beta2", "in [0, 1)", { $0 >= 0 && $0 < 1 })
        try finite(eps, "eps", "> 0", { $0 > 0 })
        try finite(gradClip, "grad-clip", ">= 0 (0: off)", { $0 >= 0 })
        try nonNegative(seed, "seed")
        try nonNegative(ckptEvery, "ckpt-every")
        try nonNegative(keepCheckpoints, "keep-checkpoints")
        try nonNegative(evalEvery, "eval-every")
        try nonNegative(evalBatches, "eval-batches")
        // A bucket of at least one float and at most 64 GiB (its float count must fit an MPI count).
        try finite(bucketMb, "bucket-mb", "in (0, 65536]", { $0 * 1_048_576 / 4 >= 1 && $0 <= 65536 })
        try require(zero == 0 || zero == 1, "--zero must be 0 or 1, got \(zero)")
        try nonNegative(checksumEvery, "checksum-every")
        try positive(maxBadSteps, "max-bad-steps")
        try compute.validateThreads()
    }
}

/// Options shared by every command that computes.
public struct ComputeOptions: ParsableArguments {
    public init() {}

    @Option(help: "Threads for BLAS and kernels per rank (default: cores / ranks on this node).")
    public var threads: Int?

    public func validateThreads() throws {
        guard let t = threads else { return }
        let cores = Runtime.nodeCores
        guard t >= 1 && t <= cores else {
            throw TrainError("--threads must be between 1 and the \(cores) cores of this machine, got \(t)")
        }
    }

    /// Sets the thread count (validated) and returns it.
    @discardableResult
    public func apply() throws -> Int {
        try validateThreads()
        let n = threads ?? Runtime.defaultThreads(localRanks: Runtime.localRanks)
        Runtime.setThreads(max(1, n))
        return n
    }
}

/// Reads the value out of ArgumentParser's property wrappers (valid once parsed).
protocol ParsedValue {
    var anyValue: Any { get }
    var isGroup: Bool { get }
}
extension ParsedValue { var isGroup: Bool { false } }
extension Option: ParsedValue { var anyValue: Any { wrappedValue } }
extension Flag: ParsedValue { var anyValue: Any { wrappedValue } }
extension OptionGroup: ParsedValue {
    var anyValue: Any { wrappedValue }
    var isGroup: Bool { true }
}

public struct TrainError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
