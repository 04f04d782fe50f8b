import ArgumentParser
import Autograd
import Checkpoint
import Common
import Data
import Distributed
import Foundation
import GPT2
import Machine
import Prepare
import Planning
import Tasks
import Tokenizer
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mean next-token cross-entropy of a checkpoint on a token file, or its HellaSwag accuracy (--task).",
        discussion: """
        Uses the batch order of training: batch s starts at token (s mod M)*B*T, M = floor((tokens-1)/(B*T)), \
        for s = 0 ..< --batches (0: all M). Runs alone or under mpirun (rows split over ranks). A directory means \
        its val_*.bin shards (as train's --val). --text tokenizes a UTF-8 file with GPT-2's BPE first (one \
        document, preceded by <|endoftext|>, as prepare does). --baselines also scores count-based unigram and \
        bigram models, counted on the given training tokens, on the same positions.
          gpt2-dist eval --checkpoint runs/demo --data data/shakespeare/val_000000.bin --batch-size 8 --seq-len 128 --batches 10
          gpt2-dist eval --checkpoint runs/quickstart --data data/shakespeare-complete --batches 0 --baselines data/shakespeare-complete
          gpt2-dist eval --checkpoint runs/demo --text some.txt --batch-size 4 --seq-len 128 --batches 5 --json

        --task hellaswag scores HellaSwag's validation set (data/eval/hellaswag/requests.jsonl.gz, from         Launch/fetch-data) as lm-evaluation-harness does: each ending's summed log-probability given the context         (tokenized apart); acc: its argmax; acc_norm: the argmax per character of the ending. Items are split         over ranks under mpirun.
          gpt2-dist eval --checkpoint runs/quickstart --task hellaswag --task-limit 500
        """
    )
    @Option(help: "Checkpoint file, `latest` pointer, or run directory.") var checkpoint: String
    @Option(help: "Token file (.bin), directory of shards, or glob.") var data: String?
    @Option(help: "A benchmark instead of a loss: hellaswag.") var task: String?
    @Option(help: "With --task: only the first N items.") var taskLimit: Int?
    @Option(help: "With --task: its file (default: data/eval/TASK/requests.jsonl.gz).") var taskFile: String?
    @Option(help: "A UTF-8 text file to tokenize and evaluate on (instead of --data).") var text: String?
    @Option(help: "GPT-2 vocabulary for --text: gpt2.tiktoken or a directory with it.") var vocab = "data/gpt2"
    @Option(help: "Sequences per batch.") var batchSize = 8
    @Option(help: "Tokens per sequence.") var seqLen = 128
    @Option(help: "Number of batches (0: every span of the data once).") var batches = 10
    @Option(help: "Training tokens (file, directory of train_*.bin, or glob) to count unigram and bigram baselines on.") var baselines: String?
    @Option(help: "Matrix products: fp32 or bf16 (bf16-rounded operands, fp32 accumulation; any checkpoint).")
    var precision: MatmulPrecision = .fp32
    @Flag(help: "Print {\"loss\": ...} only (with unigram and bigram when --baselines is given).") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let comm = Communicator.initialize()
        defer { comm.finalize() }
        _ = try compute.applyOrExit()
        try runOrFail {
            if let task {
                try runTask(task, comm: comm)
                return
            }
            let evaluation = try Evaluation(checkpoint: checkpoint)
            let vocabSize = evaluation.model.config.vocabSize
            let tokens: TokenDataset
            switch (data, text) {
            case (let d?, nil): tokens = try TokenDataset(spec: d, vocabSize: vocabSize, preferring: "val")
            case (nil, let t?): tokens = try tokenizeDocument(path: t, vocabulary: vocab, vocabSize: vocabSize)
            default: throw GPT2DistError(.usage, "give exactly one of --data or --text")
            }
            let r = try evaluation.run(tokens: tokens, batchSize: batchSize, seqLen: seqLen, batches: batches, baselines: baselines,
                                       precision: precision, comm: comm)
            guard comm.isRoot else { return }
            if json {
                let baselines = r.unigram.map { ", \"unigram\": \($0), \"bigram\": \(r.bigram!)" } ?? ""
                print("{\"loss\": \(r.loss)" + baselines + "}")
                return
            }
            print("\(Runtime.blasDescription); checkpoint step \(evaluation.step)")
            print(String(format: "eval loss %.6f (perplexity %.2f) over %d batches of %d x %d tokens (%d spans available) in %.2f s",
                         r.loss, exp(r.loss), r.batches, batchSize, seqLen, r.spans, r.seconds))
            if let unigram = r.unigram, let bigram = r.bigram, let trainTokens = r.baselineTrainTokens {
                // Kept in the checkpoint's run directory, whose plot draws them.
                let run = URL(fileURLWithPath: try TrainCheckpoint.resolve(checkpoint)).deletingLastPathComponent().path
                if FileManager.default.fileExists(atPath: run + "/metrics.h5") {
                    try RunBaselines(unigram: unigram, bigram: bigram, trainTokens: trainTokens, step: evaluation.step).write(runDirectory: run)
                    _ = try? LossPlot.render(runDirectory: run)
                }
                print(String(format: "  model    %.4f", r.loss))
                print(String(format: "  bigram   %.4f  (counts of %d training tokens: 0.7 bigram + 0.3 unigram)", bigram, trainTokens))
                print(String(format: "  unigram  %.4f  (counts, add-one smoothed)", unigram))
                func relation(_ d: Double) -> String { String(format: "%.2f nats %@", abs(d), d <= 0 ? "below" : "above") }
                print("  the model is \(relation(r.loss - unigram)) the unigram and \(relation(r.loss - bigram)) the bigram")
            }
        }
    }
}

extension Eval {
    /// `--task`: the checkpoint's accuracy on a multiple-choice benchmark.
    func runTask(_ name: String, comm: Communicator) throws {
        let task = try ChoiceTask.named(name)
        if let n = taskLimit, n <= 0 { throw GPT2DistError(.usage, "--task-limit must be a positive integer, got \(n)") }
        guard data == nil && text == nil else { throw GPT2DistError(.usage, "--task scores a benchmark: leave out --data and --text") }
        let evaluation = try Evaluation(checkpoint: checkpoint)
        try task.requireGPT2Vocabulary(evaluation.model.config.vocabSize)
        let t0 = Date()
        let items = try task.load(file: taskFile, vocabulary: vocab, limit: taskLimit)
        let loadSeconds = Date().timeIntervalSince(t0)
        let r = ChoiceScorer(model: evaluation.model, rows: batchSize, precision: precision).score(items, comm: comm)
        guard comm.isRoot else { return }
        if json {
            print("{\"task\": \"\(task.rawValue)\", \"acc\": \(r.acc), \"acc_norm\": \(r.accNorm), \"items\": \(r.items), \"seconds\": \(r.seconds)}")
            return
        }
        print("\(Runtime.blasDescription); checkpoint step \(evaluation.step)")
        print(String(format: "%@: acc %.4f, acc_norm %.4f over %d items (%d endings) in %.1f s (%.1f items/s, %d rank(s)); loaded and tokenized in %.1f s",
                     task.rawValue, r.acc, r.accNorm, r.items, items.reduce(0) { $0 + $1.continuations.count }, r.seconds,
                     Double(r.items) / r.seconds, comm.size, loadSeconds))
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Parameter count and per-rank memory for a model config.",
        discussion: """
        Memory per rank: parameters (4 B each), gradients (4 B), AdamW m and v (8 B, or 8/N with --zero 1), \
        and activations for one micro-batch, counted by building the training graph (no memory is touched).
          gpt2-dist info --config Configs/gpt2-124M.json --batch-size 8 --seq-len 1024 --ranks 8
        """
    )
    @Option(help: "Model config JSON, or a checkpoint (.h5).") var config: String
    @Option(help: "Global batch size in sequences.") var batchSize = 8
    @Option(help: "Micro-batch per rank (default batch-size / ranks).") var microBatchSize: Int?
    @Option(help: "Tokens per sequence (default: context_length).") var seqLen: Int?
    @Option(help: "Number of ranks.") var ranks = 1
    @Option(help: "1: AdamW state sharded over ranks (ZeRO-1).") var zero = 0
    @Flag(help: "Recompute block activations in backward (train --recompute).") var recompute = false
    @Option(help: "Matrix products: fp32 or bf16 (train --precision; bf16 adds scratch for rounded operands).")
    var precision: MatmulPrecision = .fp32
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runOrFail {
            let cfg = config.hasSuffix(".h5") ? try TrainCheckpoint.readConfig(path: config) : try GPT2Config.load(path: config)
            guard ranks > 0 else { throw GPT2DistError(.usage, "--ranks must be a positive integer, got \(ranks)") }
            guard batchSize > 0 else { throw GPT2DistError(.usage, "--batch-size must be a positive integer, got \(batchSize)") }
            guard batchSize % ranks == 0 else { throw GPT2DistError(.usage, "--batch-size \(batchSize) is not divisible by --ranks \(ranks)") }
            let micro = microBatchSize ?? batchSize / ranks
            guard micro > 0, batchSize % (micro * ranks) == 0 else {
                throw GPT2DistError(.usage, "--micro-batch-size must be a positive divisor of batch-size / ranks (\(batchSize / ranks)), got \(micro)")
            }
            guard zero == 0 || zero == 1 else { throw GPT2DistError(.usage, "--zero must be 0 or 1, got \(zero)") }
            let T = seqLen ?? cfg.contextLength
            guard T > 0, T <= cfg.contextLength else { throw GPT2DistError(.usage, "--seq-len must be in 1...\(cfg.contextLength)") }
            let mem = MemoryEstimate(config: cfg, microBatch: micro, seqLen: T, ranks: ranks, zero: zero == 1, recompute: recompute,
                                     precision: precision)
            let adam = mem.optimizer + mem.checkpointGather, act = mem.activations, total = mem.rootTotal
            if json {
                print("""
                {"parameters": \(cfg.parameterCount), "parameters_untied": \(cfg.untiedParameterCount), \
                "bytes_parameters": \(Int(mem.parameters)), "bytes_gradients": \(Int(mem.gradients)), "bytes_adamw": \(Int(adam)), \
                "bytes_activations": \(Int(act)), "bytes_total_per_rank": \(Int(total)), "flops_per_token": \(cfg.flopsPerToken(seqLen: T))}
                """)
                return
            }
            print("model: \(cfg.nLayers) layers, emb_dim \(cfg.embDim), \(cfg.nHeads) heads, context \(cfg.contextLength), vocab \(cfg.vocabSize), qkv_bias \(cfg.qkvBias), drop_rate \(cfg.dropRate)")
            print("parameters: \(grouped(cfg.parameterCount)) (output head tied to wte); \(grouped(cfg.untiedParameterCount)) if untied")
            print("per rank (\(ranks) rank(s), micro-batch \(micro) x \(T) tokens\(zero == 1 ? ", ZeRO-1" : "")\(recompute ? ", recompute" : "")):")
            print("  parameters  \(Format.bytes(mem.parameters))\(precision == .bf16 ? " (fp32 and the bf16 copy)" : "")")
            print("  gradients   \(Format.bytes(mem.gradients))")
            print("  AdamW m, v  \(Format.bytes(adam))\(mem.checkpointGather > 0 ? " (includes rank 0's checkpoint gather buffer, \(Format.bytes(mem.checkpointGather)))" : "")")
            print("  activations \(Format.bytes(act))")
            if mem.communication > 0 { print("  reduce-scatter buffer \(Format.bytes(mem.communication)) (one gradient bucket)") }
            print("  runtime     \(Format.bytes(MemoryEstimate.runtimeOverhead)) (libraries and buffers, measured)")
            print("  total       \(Format.bytes(total)) (compare with the peak RSS train reports)")
            print(String(format: "training FLOPs per token: %.3g (6N + 12·L·C·T)", cfg.flopsPerToken(seqLen: T)))
        }
    }
}

func grouped(_ n: Int) -> String {
    let s = String(n)
    var out = ""
    for (i, ch) in s.enumerated() {
        if i > 0 && (s.count - i) % 3 == 0 { out += "," }
        out.append(ch)
    }
    return out
}

struct ImportHF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-hf",
        abstract: "Convert a Hugging Face GPT-2 directory (config.json + model.safetensors) to a gpt2-dist checkpoint.",
        discussion: """
        Tensors are found by name (with or without the "transformer." prefix); lm_head.weight may be absent (tied). \
        Works for gpt2, gpt2-medium, gpt2-large and gpt2-xl as saved by save_pretrained.
          gpt2-dist import-hf --from ./gpt2 --out gpt2-124M.h5
        """
    )
    @Option(name: .customLong("from"), help: "Hugging Face model directory.") var from: String
    @Option(help: "Output checkpoint (.h5); an existing file is not overwritten.") var out: String

    func run() throws {
        try runOrFail {
            guard !FileManager.default.fileExists(atPath: out) else { throw GPT2DistError(.usage, "\(out) already exists; not overwriting it") }
            let model = try HuggingFace.load(directory: from)
            try ModelFile.save(model: model, step: 0, to: out)
            print("wrote \(out): \(grouped(model.config.parameterCount)) parameters, \(model.config.nLayers) layers")
        }
    }
}

struct ExportHF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-hf",
        abstract: "Write a checkpoint as a Hugging Face GPT-2 directory (config.json + model.safetensors).",
        discussion: """
        The result loads with transformers' GPT2LMHeadModel.from_pretrained(DIR) and gives the same logits.
          gpt2-dist export-hf --checkpoint runs/demo --out hf-demo
        """
    )
    @Option(help: "Checkpoint file, `latest` pointer, or run directory.") var checkpoint: String
    @Option(help: "Output directory.") var out: String

    func run() throws {
        try runOrFail {
            let (model, step) = try ModelFile.load(path: TrainCheckpoint.resolve(checkpoint))
            for f in ["config.json", "model.safetensors"] where FileManager.default.fileExists(atPath: out + "/" + f) {
                throw GPT2DistError(.usage, "\(out)/\(f) already exists; not overwriting it")
            }
            try HuggingFace.save(model: model, directory: out)
            print("wrote \(out)/config.json and \(out)/model.safetensors (step \(step))")
        }
    }
}

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw loss curves from runs' metrics.h5: one run into RUN/loss.svg, several overlaid into one SVG.",
        discussion: """
        One run: train loss raw and smoothed (EMA, --smooth, default 0.9) and validation loss, into RUN/loss.svg         (unless --out). Several: one colour per run, train solid (smoothed with --smooth), validation dashed.         --x tokens, flops (6·N·tokens) or time (training time) puts runs of different sizes on one axis.

        Examples:
          gpt2-dist plot runs/demo
          gpt2-dist plot runs/small runs/medium --x flops --smooth 0.9 --out sweep.svg
        """)
    @Argument(help: "Run directories.") var runDirectories: [String]
    @Option(help: "SVG file to write (default: RUN/loss.svg for one run, overlay.svg for several).") var out: String?
    @Option(help: "x axis: step, tokens, flops or time.") var x: String = "step"
    @Option(help: "Smooth the train loss by an exponential moving average with this weight on the past, in [0, 1).") var smooth: Double?

    func run() throws {
        try runOrFail {
            guard !runDirectories.isEmpty else { throw GPT2DistError(.usage, "plot needs at least one run directory") }
            guard let axis = LossPlot.XAxis(rawValue: x) else {
                throw GPT2DistError(.usage, "--x must be one of \(LossPlot.XAxis.allCases.map(\.rawValue).joined(separator: ", ")), got \(x)")
            }
            if let a = smooth, !(a >= 0 && a < 1) { throw GPT2DistError(.usage, "--smooth must be in [0, 1), got \(a)") }
            if runDirectories.count == 1 && out == nil && axis == .step {
                print("wrote \(try LossPlot.render(runDirectory: runDirectories[0], smooth: smooth))")
            } else {
                print("wrote \(try LossPlot.overlay(runDirectories: runDirectories, axis: axis, smooth: smooth, out: out ?? "overlay.svg"))")
            }
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a run's metrics.h5 as CSV: one row per step, the last logged for that step (a resumed run logs some twice).",
        discussion: """
        Train columns: \(MetricsLog.trainSeries.joined(separator: ", ")) (times in ms; comm_ms: the communication \
        thread busy, exposed_ms: compute waiting for it). --val: \(MetricsLog.valSeries.joined(separator: ", ")).

        Example:
          gpt2-dist metrics runs/demo > demo.csv
        """)
    @Argument(help: "Run directory.") var runDirectory: String
    @Flag(help: "The validation series instead of the training ones.") var val = false

    func run() throws {
        try runOrFail {
            print(try MetricsLog.csv(path: runDirectory + "/metrics.h5", series: val ? MetricsLog.valSeries : MetricsLog.trainSeries),
                  terminator: "")
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a run's status.json (state: running, finished, stopped, failed), or one of its fields.",
        discussion: """
        For scripts: --field prints one value alone (empty for an unset one), e.g. \
        `gpt2-dist status runs/demo --field checkpoint_step`. Exit 1 when the directory has no status.json.
        """)
    @Argument(help: "Run directory.") var runDirectory: String
    @Option(help: "Print this field's value only.") var field: String?

    func run() throws {
        try runOrFail {
            guard let data = FileManager.default.contents(atPath: RunStatus.path(runDirectory: runDirectory)) else {
                throw GPT2DistError(.usage, "\(runDirectory) has no \(RunStatus.fileName) (not a run directory, or the run never started)")
            }
            _ = try RunStatus.read(runDirectory: runDirectory)  // checks the format
            guard let field else { print(String(decoding: data, as: UTF8.self), terminator: ""); return }
            guard let object = try JSONValue.parse(data).object, let value = object[field] else {
                throw GPT2DistError(.usage, "\(RunStatus.fileName) has no field \"\(field)\"")
            }
            switch value {
            case .null: print("")
            case .string(let s): print(s)
            default: print(value.description)
            }
        }
    }
}

extension MatmulPrecision: ExpressibleByArgument {}
