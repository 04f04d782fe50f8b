import ArgumentParser
import Autograd
import Checkpoint
import Data
import Distributed
import Foundation
import GPT2
import Tokenizer
import Training

/// Resolves a run directory or a `latest` pointer to a checkpoint file.
func checkpointPath(_ spec: String) throws -> String {
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue {
        guard let p = TrainCheckpoint.newestComplete(directory: spec) else { throw TrainError("no complete checkpoint in \(spec)") }
        return p
    }
    let url = URL(fileURLWithPath: spec), directory = url.deletingLastPathComponent().path
    if url.lastPathComponent == "latest", let name = TrainCheckpoint.latestName(directory: directory) {
        return directory + "/" + name
    }
    return spec
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mean next-token cross-entropy of a checkpoint on a token file.",
        discussion: """
        Uses the batch order of training: batch s starts at token (s mod M)*B*T, M = floor((tokens-1)/(B*T)), \
        for s = 0 ..< --batches (0: all M). Runs alone or under mpirun (rows split over ranks). A directory means \
        its val_*.bin shards (as train's --val). --text tokenizes a UTF-8 file with GPT-2's BPE first (one \
        document, preceded by <|endoftext|>, as prepare does). --baselines also scores count-based unigram and \
        bigram models, counted on the given training tokens, on the same positions.
          gpt2-dist eval --checkpoint runs/demo --data data/shakespeare/val_000000.bin --batch-size 8 --seq-len 128 --batches 10
          gpt2-dist eval --checkpoint runs/quickstart --data data/shakespeare-complete --batches 0 --baselines data/shakespeare-complete
          gpt2-dist eval --checkpoint runs/demo --text some.txt --batch-size 4 --seq-len 128 --batches 5 --json
        """
    )
    @Option(help: "Checkpoint file, `latest` pointer, or run directory.") var checkpoint: String
    @Option(help: "Token file (.bin), directory of shards, or glob.") var data: String?
    @Option(help: "A UTF-8 text file to tokenize and evaluate on (instead of --data).") var text: String?
    @Option(help: "GPT-2 vocabulary for --text: gpt2.tiktoken or a directory with it.") var vocab = "data/gpt2"
    @Option(help: "Sequences per batch.") var batchSize = 8
    @Option(help: "Tokens per sequence.") var seqLen = 128
    @Option(help: "Number of batches (0: every span of the data once).") var batches = 10
    @Option(help: "Training tokens (file, directory of train_*.bin, or glob) to count unigram and bigram baselines on.") var baselines: String?
    @Flag(help: "Print {\"loss\": ...} only (with unigram and bigram when --baselines is given).") var json = false
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        let comm = Communicator.initialize()
        defer { comm.finalize() }
        _ = try compute.applyOrExit()
        try runOrFail {
            guard batches >= 0 else { throw TrainError("--batches must be 0 (all) or a positive integer, got \(batches)") }
            guard batchSize > 0, batchSize % comm.size == 0 else {
                throw TrainError("--batch-size \(batchSize) is not divisible by the number of ranks (\(comm.size))")
            }
            let (model, step) = try ModelFile.load(path: checkpointPath(checkpoint))
            guard seqLen > 0, seqLen <= model.config.contextLength else {
                throw TrainError("--seq-len \(seqLen) must be in 1...\(model.config.contextLength) (context_length)")
            }
            let tokens: TokenDataset
            switch (data, text) {
            case (let d?, nil):
                tokens = try TokenDataset(spec: d, vocabSize: model.config.vocabSize, preferring: "val")
            case (nil, let t?):
                guard let raw = FileManager.default.contents(atPath: t), let s = String(data: raw, encoding: .utf8) else {
                    throw TrainError("cannot read UTF-8 text from \(t)")
                }
                let ids = [Int32(GPT2Tokenizer.endOfText)] + (try loadTokenizer(vocab)).encode(s, allowSpecial: false)
                if let bad = ids.first(where: { Int($0) >= model.config.vocabSize }) {
                    throw TrainError("token id \(bad) of \(t) is out of range for the model's vocab_size \(model.config.vocabSize)")
                }
                tokens = TokenDataset(tokens: ids.map { UInt16($0) })
            default:
                throw TrainError("give exactly one of --data or --text")
            }
            let order = try BatchOrder(tokenCount: tokens.count, batchSize: batchSize, seqLen: seqLen)
            let graph = GPT2Graph(model: model, batch: batchSize / comm.size, seqLen: seqLen, mode: .evaluate)
            let count = batches == 0 ? order.spans : batches
            let t0 = Runtime.now()
            let loss = try evaluateLoss(graph: graph, data: tokens, batchSize: batchSize, seqLen: seqLen, batches: count, comm: comm)
            let seconds = Runtime.now() - t0
            guard comm.isRoot else { return }
            var reference: (unigram: Double, bigram: Double, trainTokens: Int)?
            if let b = baselines {
                let counts = CountBaselines(train: try TokenDataset(spec: b, vocabSize: model.config.vocabSize, preferring: "train"),
                                            vocabSize: model.config.vocabSize)
                let l = try counts.losses(data: tokens, batchSize: batchSize, seqLen: seqLen, batches: count)
                reference = (l.unigram, l.bigram, counts.trainTokens)
            }
            if json {
                print("{\"loss\": \(loss)" + (reference.map { ", \"unigram\": \($0.unigram), \"bigram\": \($0.bigram)" } ?? "") + "}")
            } else {
                print("\(Runtime.blasDescription); checkpoint step \(step)")
                print(String(format: "eval loss %.6f (perplexity %.2f) over %d batches of %d x %d tokens (%d spans available) in %.2f s",
                             loss, exp(loss), count, batchSize, seqLen, order.spans, seconds))
                if let r = reference {
                    print(String(format: "  model    %.4f", loss))
                    print(String(format: "  bigram   %.4f  (counts of %d training tokens: 0.7 bigram + 0.3 unigram)", r.bigram, r.trainTokens))
                    print(String(format: "  unigram  %.4f  (counts, add-one smoothed)", r.unigram))
                    func relation(_ d: Double) -> String { String(format: "%.2f nats %@", abs(d), d <= 0 ? "below" : "above") }
                    print("  the model is \(relation(loss - r.unigram)) the unigram and \(relation(loss - r.bigram)) the bigram")
                }
            }
        }
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
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try runOrFail {
            let cfg = config.hasSuffix(".h5") ? try TrainCheckpoint.readConfig(path: config) : try GPT2Config.load(path: config)
            guard ranks > 0 else { throw TrainError("--ranks must be a positive integer, got \(ranks)") }
            guard batchSize > 0 else { throw TrainError("--batch-size must be a positive integer, got \(batchSize)") }
            guard batchSize % ranks == 0 else { throw TrainError("--batch-size \(batchSize) is not divisible by --ranks \(ranks)") }
            let micro = microBatchSize ?? batchSize / ranks
            guard micro > 0, batchSize % (micro * ranks) == 0 else {
                throw TrainError("--micro-batch-size must be a positive divisor of batch-size / ranks (\(batchSize / ranks)), got \(micro)")
            }
            guard zero == 0 || zero == 1 else { throw TrainError("--zero must be 0 or 1, got \(zero)") }
            let T = seqLen ?? cfg.contextLength
            guard T > 0, T <= cfg.contextLength else { throw TrainError("--seq-len must be in 1...\(cfg.contextLength)") }
            let mem = MemoryEstimate(config: cfg, microBatch: micro, seqLen: T, ranks: ranks, zero: zero == 1, recompute: recompute)
            let n = Double(cfg.parameterCount), adam = mem.optimizer + mem.checkpointGather, act = mem.activations, total = mem.rootTotal
            if json {
                print("""
                {"parameters": \(cfg.parameterCount), "parameters_untied": \(cfg.untiedParameterCount), \
                "bytes_parameters": \(Int(4 * n)), "bytes_gradients": \(Int(4 * n)), "bytes_adamw": \(Int(adam)), \
                "bytes_activations": \(Int(act)), "bytes_total_per_rank": \(Int(total)), "flops_per_token": \(cfg.flopsPerToken(seqLen: T))}
                """)
                return
            }
            print("model: \(cfg.nLayers) layers, emb_dim \(cfg.embDim), \(cfg.nHeads) heads, context \(cfg.contextLength), vocab \(cfg.vocabSize), qkv_bias \(cfg.qkvBias), drop_rate \(cfg.dropRate)")
            print("parameters: \(grouped(cfg.parameterCount)) (output head tied to wte); \(grouped(cfg.untiedParameterCount)) if untied")
            print("per rank (\(ranks) rank(s), micro-batch \(micro) x \(T) tokens\(zero == 1 ? ", ZeRO-1" : "")\(recompute ? ", recompute" : "")):")
            print("  parameters  \(Runtime.formatBytes(4 * n))")
            print("  gradients   \(Runtime.formatBytes(4 * n))")
            print("  AdamW m, v  \(Runtime.formatBytes(adam))\(mem.checkpointGather > 0 ? " (includes rank 0's checkpoint gather buffer, \(Runtime.formatBytes(mem.checkpointGather)))" : "")")
            print("  activations \(Runtime.formatBytes(act))")
            if mem.communication > 0 { print("  reduce-scatter buffer \(Runtime.formatBytes(mem.communication)) (one gradient bucket)") }
            print("  runtime     \(Runtime.formatBytes(MemoryEstimate.runtimeOverhead)) (libraries and buffers, measured)")
            print("  total       \(Runtime.formatBytes(total)) (compare with the peak RSS train reports)")
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
            guard !FileManager.default.fileExists(atPath: out) else { throw TrainError("\(out) already exists; not overwriting it") }
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
            let (model, step) = try ModelFile.load(path: checkpointPath(checkpoint))
            for f in ["config.json", "model.safetensors"] where FileManager.default.fileExists(atPath: out + "/" + f) {
                throw TrainError("\(out)/\(f) already exists; not overwriting it")
            }
            try HuggingFace.save(model: model, directory: out)
            print("wrote \(out)/config.json and \(out)/model.safetensors (step \(step))")
        }
    }
}

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw RUN/loss.svg (train and validation loss vs step) from RUN/metrics.h5.")
    @Argument(help: "Run directory.") var runDirectory: String

    func run() throws {
        try runOrFail { print("wrote \(try LossPlot.render(runDirectory: runDirectory))") }
    }
}
