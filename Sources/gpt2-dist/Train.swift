import ArgumentParser
import Distributed
import Foundation
import Training
import Checkpoint

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train GPT-2 data-parallel (run under mpirun -np N, or alone as one rank).",
        discussion: """
        The global batch (--batch-size sequences of --seq-len tokens) is split into contiguous row blocks,
        one per rank, each run as micro-batches (gradient accumulation fills the rest):
          batch-size = micro-batch-size x ranks x accumulation steps.
        Step s reads the span starting at token (s mod M)*B*T of the data, M = floor((tokens-1)/(B*T)),
        so results do not depend on the number of ranks beyond float summation order.

        Settings come from defaults (GPT-2/nanoGPT), then --run-config FILE (JSON with these option names),
        then flags. Rank 0 writes OUT/metrics.h5, OUT/loss.svg and OUT/ckpt-STEP.h5 (+ OUT/latest).
        SIGTERM/SIGINT: all ranks stop after the current step, a checkpoint is written, exit 0.
        Resume with --resume (newest complete checkpoint in --out) or --resume FILE, at any rank count.

        Example:
          mpirun -np 2 gpt2-dist train --config Configs/gpt2-small-cpu.json \\
              --data data/shakespeare --val data/shakespeare --out runs/shakespeare --steps 300
        """
    )

    @Option(help: "Run config JSON with option names as keys (flags override it).") var runConfig: String?
    @Option(help: "Model config JSON (keys vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias).") var config: String?
    @Option(help: "Training tokens: an llm.c .bin file, a directory of train_*.bin shards, or a glob.") var data: String?
    @Option(help: "Validation tokens (file, directory of val_*.bin shards, or glob).") var val: String?
    @Option(help: "Run directory for checkpoints, metrics.h5 and loss.svg.") var out: String?
    @Option(help: "Optimizer steps in total (default 100).") var steps: Int?
    @Option(help: "Global batch size in sequences per optimizer step (default 8).") var batchSize: Int?
    @Option(help: "Sequences per rank per forward/backward (default batch-size / ranks).") var microBatchSize: Int?
    @Option(help: "Sequence length in tokens (default 128).") var seqLen: Int?
    @Option(help: "Peak learning rate (default 6e-4).") var lr: Double?
    @Option(help: "Final learning rate of the cosine schedule (default 6e-5).") var minLr: Double?
    @Option(help: "Linear warmup steps (default 0).") var warmupSteps: Int?
    @Option(help: "constant (after warmup; default) or cosine (to --min-lr at --lr-decay-steps).") var lrSchedule: String?
    @Option(help: "Steps over which cosine decays (default --steps).") var lrDecaySteps: Int?
    @Option(help: "AdamW weight decay on matrices and embeddings (default 0.1).") var weightDecay: Double?
    @Option(help: "AdamW beta1 (default 0.9).") var beta1: Double?
    @Option(help: "AdamW beta2 (default 0.95).") var beta2: Double?
    @Option(help: "AdamW epsilon (default 1e-8).") var eps: Double?
    @Option(help: "Global gradient-norm clip, 0 = off (default 1.0).") var gradClip: Double?
    @Option(help: "Seed for initialisation, dropout and shuffling (default 1337).") var seed: Int?
    @Flag(inversion: .prefixedNo, help: "Visit the data's spans in a seeded order (independent of ranks).") var shuffle: Bool?
    @Option(name: .customLong("init"), help: "Start from the weights of this checkpoint (e.g. imported GPT-2).") var initFrom: String?
    @Option(help: "Resume: alone, the newest complete checkpoint in --out; or a checkpoint file.") var resume: String?
    @Option(help: "Checkpoint every N steps (0: only at the end and on preemption).") var ckptEvery: Int?
    @Option(help: "Keep only the newest N checkpoints (default 3).") var keepCheckpoints: Int?
    @Option(help: "Validation every N steps (0: never).") var evalEvery: Int?
    @Option(help: "Validation batches per evaluation (default 10).") var evalBatches: Int?
    @Option(help: "All-reduce bucket size in MB (default 25).") var bucketMb: Double?
    @Flag(inversion: .prefixedNo, help: "Overlap gradient all-reduce with backward (default on).") var overlap: Bool?
    @Option(help: "1: shard AdamW state across ranks (ZeRO-1).") var zero: Int?
    @Flag(help: "Recompute block activations in backward to save memory.") var recompute = false
    @Option(help: "Compare a parameter checksum across ranks every N steps (0: never; default 50).") var checksumEvery: Int?
    @Option(help: "Abort after N non-finite steps in a row (default 5).") var maxBadSteps: Int?
    @OptionGroup var compute: ComputeOptions

    /// Settings in layers: defaults, then (when resuming) the run's own settings stored in its checkpoint,
    /// then --run-config, then flags. So `--resume --steps 600` continues a run exactly as it was configured.
    func options() throws -> TrainOptions {
        var o = TrainOptions()
        try applyFileAndFlags(to: &o)
        if o.resume != nil, let stored = try TrainCheckpoint.storedRunConfig(resume: o.resume!, out: o.out) {
            var base = stored
            base.initFrom = nil  // the weights and the model config now come from the checkpoint
            base.config = nil
            try applyFileAndFlags(to: &base)
            o = base
        }
        if o.data.isEmpty { throw TrainError("--data is required") }
        return o
    }

    func applyFileAndFlags(to o: inout TrainOptions) throws {
        if let rc = runConfig { try o.apply(runConfigFile: rc) }
        if let v = config { o.config = v }
        if let v = data { o.data = v }
        if let v = val { o.val = v }
        if let v = out { o.out = v }
        if let v = steps { o.steps = v }
        if let v = batchSize { o.batchSize = v }
        if let v = microBatchSize { o.microBatchSize = v }
        if let v = seqLen { o.seqLen = v }
        if let v = lr { o.lr = v }
        if let v = minLr { o.minLR = v }
        if let v = warmupSteps { o.warmupSteps = v }
        if let v = lrSchedule { o.lrSchedule = v }
        if let v = lrDecaySteps { o.lrDecaySteps = v }
        if let v = weightDecay { o.weightDecay = v }
        if let v = beta1 { o.beta1 = v }
        if let v = beta2 { o.beta2 = v }
        if let v = eps { o.eps = v }
        if let v = gradClip { o.gradClip = v }
        if let v = seed { o.seed = v }
        if let v = shuffle { o.shuffle = v }
        if let v = initFrom { o.initFrom = v }
        if let v = resume { o.resume = v }
        if let v = ckptEvery { o.ckptEvery = v }
        if let v = keepCheckpoints { o.keepCheckpoints = v }
        if let v = evalEvery { o.evalEvery = v }
        if let v = evalBatches { o.evalBatches = v }
        if let v = bucketMb { o.bucketMB = v }
        if let v = overlap { o.overlap = v }
        if let v = zero { o.zero = v }
        if recompute { o.recompute = true }
        if let v = checksumEvery { o.checksumEvery = v }
        if let v = maxBadSteps { o.maxBadSteps = v }
        if let v = compute.threads { o.threads = v }
    }

    func run() throws {
        let comm = Communicator.initialize()
        do {
            let o = try options()
            Runtime.setThreads(o.threads ?? Runtime.defaultThreads(localRanks: Runtime.localRanks))
            try Trainer(options: o, comm: comm).run()
        } catch {
            // Every rank reaches here with the agreed error; rank 0 reports it once.
            if comm.isRoot { FileHandle.standardError.write(Data("gpt2-dist: error: \(error)\n".utf8)) }
            comm.finalize()
            throw ExitCode(1)
        }
        comm.finalize()
    }
}
