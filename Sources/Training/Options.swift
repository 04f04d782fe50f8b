import Autograd
import Common
import Distributed
import Foundation
import GPT2
import Machine

/// Every setting of a training run. Each is declared once, in `TrainOptions.table`: its flag, value type, help,
/// and whether a resumed run takes it from its checkpoint. The defaults are this struct's initial values. The
/// command-line parser, run-config files (JSON objects keyed by the flag names), the `run_config` stored in
/// checkpoints and `train --help` are all derived from that table.
public struct TrainOptions: Equatable, Sendable {
    public var runConfig: String?
    public var config: String?
    public var data: String?
    public var val: String?
    public var out: String?
    public var steps = 100
    public var batchSize = 8
    public var microBatchSize: Int?
    public var seqLen = 128
    public var lr = 6e-4
    public var minLr = 6e-5
    public var warmupSteps = 0
    public var lrSchedule = LRSchedule.Kind.constant
    public var lrDecaySteps: Int?
    public var decayFraction = 0.2
    public var decayShape = LRSchedule.DecayShape.sqrt
    public var weightDecay = 0.1
    public var embeddingLrScale = 1.0
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    public var gradClip = 1.0
    public var seed = 1337
    public var shuffle = false
    public var initFrom: String?
    public var resume: String?
    public var allowDataChange = false
    public var ckptEvery = 0
    public var keepCheckpoints = 3
    public var evalEvery = 0
    public var tensorboard = true
    public var task: String?
    public var taskEvery = 0
    public var taskLimit: Int?
    public var taskFile: String?
    public var vocab = "data/gpt2"
    public var traceSteps: String?
    public var evalBatches = 10
    public var bucketMb = BucketSchedule.defaultBucketMb
    public var overlap = true
    public var zero = ZeroStage.off
    public var recompute = false
    public var precision = MatmulPrecision.fp32
    public var checksumEvery = 50
    public var maxBadSteps = 5
    public var threads: Int?

    public init() {}

    /// `--resume` alone: the newest complete checkpoint in --out.
    public static let newestCheckpoint = "latest"

    /// The table. Options marked `.startsRun` say where a run starts, not how it trains (`threads` describes the
    /// machine): a resumed run never takes them from its checkpoint.
    public static let table: [TrainOption] = [
        .value("run-config", \.runConfig, "Run config: a JSON object with these options' names as keys (flags given here override it).", .startsRun),
        .value("config", \.config, "Model config JSON (keys vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias); optional with --init or --resume.", .startsRun),
        .value("data", \.data, "Training tokens: an llm.c .bin file, a directory of train_*.bin shards, or a glob."),
        .value("val", \.val, "Validation tokens: a file, a directory of val_*.bin shards, or a glob."),
        .value("out", \.out, "Run directory for checkpoints, metrics.h5, status.json and loss.svg."),
        .value("steps", \.steps, "Optimizer steps in total."),
        .value("batch-size", \.batchSize, "Global batch size in sequences per optimizer step."),
        .value("micro-batch-size", \.microBatchSize, "Sequences per rank per forward/backward (default: batch-size / ranks; the rest is gradient accumulation)."),
        .value("seq-len", \.seqLen, "Sequence length in tokens."),
        .value("lr", \.lr, "Peak learning rate."),
        .value("min-lr", \.minLr, "Final learning rate of the cosine and wsd schedules."),
        .value("warmup-steps", \.warmupSteps, "Linear warmup steps."),
        .value("lr-schedule", \.lrSchedule, "constant (after warmup; extending a run never changes steps already taken), cosine (to --min-lr at --lr-decay-steps) or wsd (constant, then a decay to --min-lr over the last --decay-fraction of --lr-decay-steps; a stable-phase checkpoint resumed with more --steps decays over the new end)."),
        .value("lr-decay-steps", \.lrDecaySteps, "Steps the cosine and wsd schedules end at (default: --steps)."),
        .value("decay-fraction", \.decayFraction, "wsd: the fraction of the steps that decays."),
        .value("decay-shape", \.decayShape, "wsd: the decay's shape: linear, sqrt (1 - sqrt, llm.c's) or cosine."),
        .value("weight-decay", \.weightDecay, "AdamW weight decay on matrices and embeddings."),
        .value("embedding-lr-scale", \.embeddingLrScale, "Learning-rate multiplier for the token embedding (wte, tied with the output head); 1 is GPT-2's single rate."),
        .value("beta1", \.beta1, "AdamW beta1."),
        .value("beta2", \.beta2, "AdamW beta2."),
        .value("eps", \.eps, "AdamW epsilon."),
        .value("grad-clip", \.gradClip, "Global gradient-norm clip (0: off)."),
        .value("seed", \.seed, "Seed for initialisation, dropout and shuffling."),
        .flag("shuffle", \.shuffle, "Visit the data's spans in a seeded order (independent of the rank count)."),
        .value("init-from", aliases: ["init"], \.initFrom, "Start from the weights of this checkpoint (e.g. an imported GPT-2).", .startsRun),
        .value("resume", \.resume, "Resume: alone, the newest complete checkpoint in --out; or a checkpoint file. The run's stored settings apply, then --run-config, then flags.", .startsRun, bare: newestCheckpoint),
        .flag("allow-data-change", \.allowDataChange, "With --resume: continue even though --data now holds a different dataset than the checkpoint was trained on (by its manifest id).", .startsRun),
        .value("ckpt-every", \.ckptEvery, "Checkpoint every N steps (0: only at the end and on preemption)."),
        .value("keep-checkpoints", \.keepCheckpoints, "Keep only the newest N checkpoints (0: keep all)."),
        .value("eval-every", \.evalEvery, "Validation every N steps (0: never)."),
        .value("eval-batches", \.evalBatches, "Validation batches per evaluation."),
        .value("task", \.task, "A benchmark scored during training (hellaswag): acc and acc_norm into metrics.h5, TensorBoard and the plot."),
        .value("task-every", \.taskEvery, "With --task: score every N steps (0: at the end only)."),
        .value("task-limit", \.taskLimit, "With --task: only its first N items."),
        .value("task-file", \.taskFile, "With --task: its file (default: data/eval/TASK/requests.jsonl.gz, from Launch/fetch-data)."),
        .value("vocab", \.vocab, "GPT-2 vocabulary for --task: gpt2.tiktoken or a directory with it."),
        .value("trace-steps", \.traceSteps, "Write trace.json (Chrome/Perfetto) of steps A-B (or A): every op, wait and gradient bucket on every rank."),
        .value("tensorboard", \.tensorboard, "Also write the metrics as a TensorBoard event file in --out (true or false; alone: true).", bare: "true"),
        .value("bucket-mb", \.bucketMb, "Gradient bucket size in MB (buckets are filled in the order backward finishes the gradients)."),
        .flag("overlap", \.overlap, "Overlap the gradient all-reduce with backward."),
        .value("zero", \.zero, "1: shard AdamW state across ranks (ZeRO-1); 0: replicate it."),
        .flag("recompute", \.recompute, "Recompute block activations in backward to save memory."),
        .value("precision", \.precision, "Matrix products: fp32, or bf16 (operands rounded to bf16, accumulated in fp32; weights, optimizer, norms, softmax and loss stay fp32)."),
        .value("checksum-every", \.checksumEvery, "Compare a parameter checksum across ranks every N steps (0: never)."),
        .value("max-bad-steps", \.maxBadSteps, "Abort after N non-finite steps in a row."),
        .value("threads", \.threads, "Threads for BLAS and kernels per rank (default: cores / ranks on this node).", .startsRun),
    ]

    static let byName: [String: TrainOption] = {
        var map: [String: TrainOption] = [:]
        for option in table { for name in [option.name] + option.aliases { map[name] = option } }
        return map
    }()

    // MARK: layering

    /// Resolves the settings of `train` from its command-line arguments: defaults, then (when resuming) the run's
    /// own settings stored in its checkpoint, then --run-config, then flags.
    /// `storedSettings` reads the stored JSON of the checkpoint `--resume` picks (nil when there is none).
    public static func resolve(commandLine: [String],
                               storedSettings: (_ resume: String, _ out: String?) throws -> String?) throws -> TrainOptions {
        let flags = try TrainOptions().applying(arguments: commandLine)
        let file = try flags.runConfig.map { path -> [String: JSONValue] in
            guard let data = FileManager.default.contents(atPath: path) else { throw GPT2DistError(.usage, "cannot read run config \(path)") }
            return try settingsObject(data, source: path)
        }
        func layered(over base: TrainOptions) throws -> TrainOptions {
            var o = base
            if let file { o = try o.applying(json: file, source: flags.runConfig!, strict: true) }
            return try o.applying(arguments: commandLine)
        }
        let options = try layered(over: TrainOptions())
        guard let resume = options.resume, let stored = try storedSettings(resume, options.out) else { return options }
        let restored = try TrainOptions().applying(json: try settingsObject(Data(stored.utf8), source: "the checkpoint's run_config"),
                                                   source: "the checkpoint's run_config", strict: false)
        return try layered(over: restored)
    }

    /// These settings with command-line arguments applied: `--name value`, `--name=value`, `--flag`, `--no-flag`.
    public func applying(arguments: [String], source: String = "command line") throws -> TrainOptions {
        var o = self, i = 0
        func fail(_ message: String) -> GPT2DistError { GPT2DistError(.usage, "\(source): \(message) (see gpt2-dist train --help)") }
        while i < arguments.count {
            let argument = arguments[i]
            i += 1
            guard argument.hasPrefix("--"), argument.count > 2 else { throw fail("unexpected argument '\(argument)'") }
            let body = argument.dropFirst(2)
            let (name, inline) = body.firstIndex(of: "=").map { (String(body[..<$0]), String(body[body.index(after: $0)...])) }
                ?? (String(body), nil)
            if let option = Self.byName[name] {
                var value = inline
                if value == nil && option.takesValue {
                    // A value never starts with "--" (negative numbers are values: --steps -1 reaches the range check).
                    if i < arguments.count, !arguments[i].hasPrefix("--") { value = arguments[i]; i += 1 }
                    else if let bare = option.bareValue { value = bare }
                    else { throw fail("missing value for --\(name)") }
                }
                try option.set(&o, .argument(value), "--\(name)")
            } else if name.hasPrefix("no-"), let option = Self.byName[String(name.dropFirst(3))], !option.takesValue, inline == nil {
                try option.set(&o, .negated, argument)
            } else {
                throw fail("unknown option '--\(name)'")
            }
        }
        return o
    }

    /// These settings with a JSON object of settings applied. Strict (a user's file): unknown keys, null and values
    /// of the wrong type are errors naming the key. Not strict (a checkpoint's own settings, possibly written by
    /// another version): keys this version does not know are skipped, and so are the ones that start a run.
    public func applying(json object: [String: JSONValue], source: String, strict: Bool) throws -> TrainOptions {
        var o = self
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            let option = Self.byName[key]
            if !strict && (option == nil || option!.startsRun) { continue }
            guard let option, option.name != "run-config" else {
                throw GPT2DistError(.usage, "\(source): unknown run option \"\(key)\" (see gpt2-dist train --help)")
            }
            try option.set(&o, .json(value), "\(source): \"\(key)\"")
        }
        return o
    }

    static func settingsObject(_ data: Data, source: String) throws -> [String: JSONValue] {
        guard let object = (try? JSONValue.parse(data))?.object else {
            throw GPT2DistError(.usage, "\(source): malformed JSON (expected an object of option names and values)")
        }
        return object
    }

    /// The settings as a JSON object keyed by flag name (unset optional values left out), as stored in checkpoints'
    /// run_config; `applying(json:)` reads it back.
    public var json: String {
        var object: [String: JSONValue] = [:]
        for option in Self.table where option.name != "run-config" { object[option.name] = option.get(self) }
        return JSONValue.object(object).json
    }

    /// `train --help`'s list of options, wrapped at `columns`, each with its default.
    public static func helpMessage(columns: Int = 100) -> String {
        let defaults = TrainOptions()
        let indent = 26
        return table.map { option in
            var head = "  --" + option.name + (option.bareValue != nil ? " [<\(option.valueName)>]" : option.takesValue ? " <\(option.valueName)>" : "")
            if !option.takesValue { head = "  --[no-]" + option.name }
            var help = option.help
            switch option.get(defaults) {
            case .bool(true)?: help += " (default: on)"
            case .string(let s)?: help += " (default: \(s))"
            case let d? where d.number != nil: help += " (default: \(d.json))"
            default: break
            }
            if !option.aliases.isEmpty { help += " Also --" + option.aliases.joined(separator: ", --") + "." }
            let lines = wrap(help, width: max(20, columns - indent))
            let first = head.count < indent - 1 ? head.padding(toLength: indent, withPad: " ", startingAt: 0) + lines[0]
                                                 : head + "\n" + String(repeating: " ", count: indent) + lines[0]
            return ([first] + lines.dropFirst().map { String(repeating: " ", count: indent) + $0 }).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = [], line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width { lines.append(line); line = "" }
            line += (line.isEmpty ? "" : " ") + word
        }
        return lines + [line]
    }

    // MARK: validation

    /// Checks every value that does not depend on the model or the data; throws a one-line error.
    public func checkValues() throws {
        func require(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw GPT2DistError(.usage, message()) }
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
        if let d = lrDecaySteps { try positive(d, "lr-decay-steps") }
        try finite(decayFraction, "decay-fraction", "in (0, 1]", { $0 > 0 && $0 <= 1 })
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
        try nonNegative(taskEvery, "task-every")
        if let n = taskLimit { try positive(n, "task-limit") }
        // A bucket of at least one float and at most 64 GiB (its float count must fit an MPI count).
        try finite(bucketMb, "bucket-mb", "in (0, 65536]", { $0 * 1_048_576 / 4 >= 1 && $0 <= 65536 })
        try nonNegative(checksumEvery, "checksum-every")
        try positive(maxBadSteps, "max-bad-steps")
        try Runtime.checkThreads(threads)
    }
}

/// ZeRO stage of the optimizer state: replicated on every rank, or sharded across them (ZeRO-1).
public enum ZeroStage: Int, Sendable, CaseIterable {
    case off = 0, optimizer = 1
}

/// One row of the option table: a flag name bound to a property of `TrainOptions` through a key path, with the
/// conversions from a command-line word and from a JSON value derived from the property's type.
public struct TrainOption {
    public let name: String, aliases: [String], help: String
    /// With `.startsRun`: never taken from a checkpoint's stored settings.
    public let startsRun: Bool
    /// A value option (else an on/off flag with a --no- form), and the value an option given alone takes.
    let takesValue: Bool, bareValue: String?, valueName: String
    let set: (inout TrainOptions, Input, _ context: String) throws -> Void
    let get: (TrainOptions) -> JSONValue?

    public enum Restore: Sendable { case startsRun }
    enum Input { case argument(String?), json(JSONValue), negated }

    static func value<V: OptionValue>(_ name: String, aliases: [String] = [], _ path: WritableKeyPath<TrainOptions, V>,
                                      _ help: String, _ restore: Restore? = nil, bare: String? = nil) -> TrainOption {
        TrainOption(name: name, aliases: aliases, help: help, startsRun: restore != nil, takesValue: true, bareValue: bare,
                    valueName: V.valueName, set: { o, input, context in o[keyPath: path] = try V.read(input, context) },
                    get: { $0[keyPath: path].json })
    }

    static func flag(_ name: String, _ path: WritableKeyPath<TrainOptions, Bool>, _ help: String,
                     _ restore: Restore? = nil) -> TrainOption {
        TrainOption(name: name, aliases: [], help: help, startsRun: restore != nil, takesValue: false, bareValue: nil,
                    valueName: "", set: { o, input, context in
                        switch input {
                        case .argument(nil): o[keyPath: path] = true
                        case .negated: o[keyPath: path] = false
                        case .json(.bool(let b)): o[keyPath: path] = b
                        case .json(let v): throw GPT2DistError(.usage, "\(context) must be true or false, got \(v)")
                        case .argument(let v?): throw GPT2DistError(.usage, "\(context): a flag takes no value, got '\(v)'")
                        }
                    }, get: { .bool($0[keyPath: path]) })
    }
}

/// A type an option's value can have: read from a command-line word or a JSON value, written back as JSON (nil: an
/// optional setting left unset, which the JSON leaves out).
protocol OptionValue {
    static var valueName: String { get }
    static var expected: String { get }
    init?(word: String)
    init?(json: JSONValue)
    var json: JSONValue? { get }
}

extension OptionValue {
    static func read(_ input: TrainOption.Input, _ context: String) throws -> Self {
        switch input {
        case .argument(let word?):
            guard let v = Self(word: word) else { throw GPT2DistError(.usage, "\(context): '\(word)' is not \(expected)") }
            return v
        case .json(.null): throw GPT2DistError(.usage, "\(context) must be \(expected) (leave the key out for the default), got null")
        case .json(let value):
            guard let v = Self(json: value) else { throw GPT2DistError(.usage, "\(context) must be \(expected), got \(value)") }
            return v
        case .argument(nil), .negated: throw GPT2DistError(.usage, "\(context) needs a value")
        }
    }
}

extension Int: OptionValue {
    static var valueName: String { "n" }
    static var expected: String { "an integer" }
    init?(word: String) { self.init(word) }
    init?(json: JSONValue) { guard let i = json.int else { return nil }; self = i }
    var json: JSONValue? { .number(Double(self)) }
}

extension Double: OptionValue {
    static var valueName: String { "x" }
    static var expected: String { "a number" }
    init?(word: String) { self.init(word as String) }
    init?(json: JSONValue) { guard let d = json.number else { return nil }; self = d }
    var json: JSONValue? { isFinite ? .number(self) : .string(String(self)) }
}

extension Bool: OptionValue {
    static var valueName: String { "true|false" }
    static var expected: String { "true or false" }
    init?(word: String) { guard let b = Bool(word) else { return nil }; self = b }
    init?(json: JSONValue) { guard case .bool(let b) = json else { return nil }; self = b }
    var json: JSONValue? { .bool(self) }
}

extension String: OptionValue {
    static var valueName: String { "value" }
    static var expected: String { "a string" }
    init?(word: String) { self = word }
    init?(json: JSONValue) { guard let s = json.string else { return nil }; self = s }
    var json: JSONValue? { .string(self) }
}

/// Settings with no default (`--config`, `--micro-batch-size`, ...): given, a value of the wrapped type.
extension Optional: OptionValue where Wrapped: OptionValue {
    static var valueName: String { Wrapped.valueName }
    static var expected: String { Wrapped.expected }
    init?(word: String) { guard let value = Wrapped(word: word) else { return nil }; self = .some(value) }
    init?(json: JSONValue) { guard let value = Wrapped(json: json) else { return nil }; self = .some(value) }
    var json: JSONValue? { self?.json }
}

/// Options with a fixed set of values (`--lr-schedule`, `--zero`): the raw values are the accepted words.
protocol ChoiceValue: OptionValue, CaseIterable, RawRepresentable where RawValue: OptionValue {}

extension ChoiceValue {
    static var valueName: String { allCases.map { "\($0.rawValue)" }.joined(separator: "|") }
    static var expected: String { "one of " + allCases.map { "\($0.rawValue)" }.joined(separator: ", ") }
    init?(word: String) { guard let raw = RawValue(word: word) else { return nil }; self.init(rawValue: raw) }
    init?(json: JSONValue) { guard let raw = RawValue(json: json) else { return nil }; self.init(rawValue: raw) }
    var json: JSONValue? { rawValue.json }
}

extension LRSchedule.Kind: ChoiceValue {}
extension LRSchedule.DecayShape: ChoiceValue {}
extension ZeroStage: ChoiceValue {}
extension MatmulPrecision: ChoiceValue {}
