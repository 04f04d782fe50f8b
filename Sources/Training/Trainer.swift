import Autograd
import Checkpoint
import Common
import Data
import Distributed
import Foundation
import GPT2
import Machine
import Planning
import Tasks
import Tokenizer

/// Data-parallel training: every rank holds the full model, runs its rows of the global batch,
/// gradients are summed over ranks in buckets (overlapping backward), and every rank applies the same
/// AdamW update. Rank 0 writes metrics, the loss curve and checkpoints.
///
/// `run` reads top to bottom: validate the settings, build the model and its training state, restore it
/// (checkpoint, --init or fresh initialisation), then step until done or stopped, checkpointing on the way.
public final class Trainer {
    let o: TrainOptions
    let comm: Communicator
    let log: (String) -> Void

    public init(options: TrainOptions, comm: Communicator, log: @escaping (String) -> Void = Console.line) {
        o = options; self.comm = comm; self.log = log
    }

    /// Runs the whole job; returns normally on completion or preemption. Once the run has started, rank 0 keeps
    /// OUT/status.json saying where it stands (running, finished, stopped with a checkpoint, failed).
    public func run() throws {
        let plan = try agreed { try validate() }
        let state = try build(plan)
        try restore(state, plan)
        if let t = plan.traceSteps, t.lowerBound <= state.step {
            throw GPT2DistError(.usage, "--trace-steps \(t.lowerBound)-\(t.upperBound) is outside the run (it resumes after step \(state.step))")
        }
        announce(state, plan)
        try agreed { try writeStatus(state, .running, reason: "training") }
        StopSignal.install()
        do {
            let (outcome, reason) = try train(state, plan)
            try finish(state, outcome, reason: reason)
        } catch {
            if comm.isRoot { try? writeStatus(state, .failed, reason: "\(error)") }
            throw error
        }
    }

    /// The loop: step until --steps or a stop signal, validating and checkpointing on the way.
    func train(_ state: State, _ plan: Plan) throws -> (RunStatus.State, String) {
        while state.step < o.steps {
            if let steps = plan.traceSteps, steps.contains(state.step + 1), state.trace == nil { startTracing(state, steps) }
            let stats = try trainStep(state, plan)
            report(stats, state, plan)
            if Self.injectedDriftStep == state.step && comm.rank == comm.size - 1 { injectDrift(state) }
            if o.checksumEvery > 0 && state.step % o.checksumEvery == 0 { try checkReplicas(state) }
            if let signal = stats.stopSignal {
                if comm.isRoot { log("  \(StopSignal.describe(signal)) received by a rank: stopping after step \(state.step)") }
                try checkpoint(state)
                try stopTracing(state)
                return (.stopped, StopSignal.describe(signal))
            }
            if o.evalEvery > 0 && (state.step % o.evalEvery == 0 || state.step == o.steps) { try validateLoss(state, plan) }
            if plan.task != nil && ((o.taskEvery > 0 && state.step % o.taskEvery == 0) || state.step == o.steps) { scoreTask(state, plan) }
            if (o.ckptEvery > 0 && state.step % o.ckptEvery == 0) || state.step == o.steps { try checkpoint(state) }
            if let trace = state.trace, state.step >= trace.steps.upperBound { try stopTracing(state) }
        }
        return (.finished, "reached --steps \(o.steps)")
    }

    // MARK: 1. validate

    /// What the settings resolve to once the model config and the data are known.
    struct Plan {
        var config: GPT2Config
        var train: TokenDataset
        var val: TokenDataset?
        var micro: Int
        var accumulation: Int
        var resumeCandidates: [String]   // newest first; the first that verifies is used
        var initPath: String?
        var schedule: LRSchedule
        var dataIdentity: String?        // the training data's manifest id, stored in checkpoints
        var task: (task: ChoiceTask, items: [ChoiceItem])?  // --task, read and tokenized before any work
        var traceSteps: ClosedRange<Int>?  // --trace-steps
    }

    /// Checks every input before any work; throws a one-line error.
    func validate() throws -> Plan {
        try o.checkValues()
        if o.precision == .bf16 { _ = try BF16Engine.choose() }  // a forced engine that cannot run here is an error now
        let n = comm.size, out = o.out!
        guard o.batchSize % n == 0 else {
            throw GPT2DistError(.training, "--batch-size \(o.batchSize) is not divisible by the number of ranks (\(n))")
        }
        let micro = o.microBatchSize ?? o.batchSize / n
        guard o.batchSize % (micro * n) == 0 else {
            throw GPT2DistError(.training, "--batch-size \(o.batchSize) must equal micro-batch (\(micro)) x ranks (\(n)) x accumulation steps")
        }
        guard o.resume == nil || o.initFrom == nil else { throw GPT2DistError(.training, "--resume and --init cannot be combined") }

        // Resume: an explicit file, or every complete checkpoint in --out, newest first (a damaged one falls back).
        let candidates = o.resume.map { TrainCheckpoint.resumeCandidates($0, out: out) } ?? []
        guard o.resume == nil || !candidates.isEmpty else { throw GPT2DistError(.training, "--resume: no complete checkpoint in \(out)") }

        var config: GPT2Config?
        if let path = o.config { config = try GPT2Config.load(path: path) }
        for (flag, path) in [("--resume", candidates.first), ("--init", o.initFrom)] {
            guard let path else { continue }
            let c: GPT2Config
            do { c = try TrainCheckpoint.readConfig(path: path) } catch { throw GPT2DistError(.training, "\(flag) \(path): \(error)") }
            if let given = config, given != c {
                throw GPT2DistError(.training, "\(flag) \(path): its model config differs from --config \(o.config!)")
            }
            config = c
        }
        guard let config else { throw GPT2DistError(.training, "--config is required (or --init/--resume to take it from a checkpoint)") }
        guard o.seqLen <= config.contextLength else {
            throw GPT2DistError(.training, "--seq-len \(o.seqLen) exceeds the model's context_length \(config.contextLength)")
        }
        let hashShare = (index: comm.rank, of: n)
        let (train, trainManifest) = try openTokens(o.data!, preferring: "train", vocabSize: config.vocabSize, hashShare: hashShare)
        _ = try BatchOrder(tokenCount: train.count, batchSize: o.batchSize, seqLen: o.seqLen)
        var val: TokenDataset?
        if let v = o.val {
            val = try openTokens(v, preferring: "val", vocabSize: config.vocabSize, hashShare: hashShare).0
            _ = try BatchOrder(tokenCount: val!.count, batchSize: o.batchSize, seqLen: o.seqLen)
        }
        // A resumed run continues on the data it trained on: the checkpoint names the manifest id of its data.
        if let newest = candidates.first, !o.allowDataChange, let trained = try? TrainCheckpoint.readDataIdentity(path: newest) {
            guard trainManifest?.id == trained else {
                let now = trainManifest.map { "dataset \($0.id.prefix(12))" } ?? "shards without a manifest.json"
                throw GPT2DistError(.training, "--resume: \(newest) was trained on dataset \(trained.prefix(12)), but --data \(o.data!) now holds "
                    + "\(now); pass --allow-data-change to continue on this data")
            }
        }
        // Output directory: must be writable; never overwrite an existing run unless resuming it.
        do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
            throw GPT2DistError(.training, "cannot create --out directory \(out)")
        }
        guard access(out, W_OK) == 0 else { throw GPT2DistError(.training, "--out directory \(out) is not writable") }
        if candidates.isEmpty && !TrainCheckpoint.list(directory: out).isEmpty {
            throw GPT2DistError(.training, "\(out) already holds checkpoints; pass --resume to continue that run or choose another --out")
        }
        let schedule = LRSchedule(kind: o.lrSchedule, lr: o.lr, minLR: o.minLr, warmupSteps: o.warmupSteps, totalSteps: o.lrDecaySteps ?? o.steps,
                                  decayFraction: o.decayFraction, decayShape: o.decayShape)
        var task: (task: ChoiceTask, items: [ChoiceItem])?
        if let name = o.task {
            let t = try ChoiceTask.named(name)
            try t.requireGPT2Vocabulary(config.vocabSize)
            task = (t, try t.load(file: o.taskFile, vocabulary: o.vocab, limit: o.taskLimit))
        }
        let traceSteps = try o.traceSteps.map { text -> ClosedRange<Int> in
            let steps = try TraceRecorder.parseSteps(text)
            guard steps.upperBound <= o.steps else {
                throw GPT2DistError(.usage, "--trace-steps \(text) is outside the run (steps 1-\(o.steps))")
            }
            return steps
        }
        return Plan(config: config, train: train, val: val, micro: micro, accumulation: o.batchSize / (micro * n),
                    resumeCandidates: candidates, initPath: o.initFrom, schedule: schedule, dataIdentity: trainManifest?.id, task: task,
                    traceSteps: traceSteps)
    }

    /// Opens token shards. Shards that `prepare` wrote are checked against their manifest (sizes here, sha256 of
    /// this rank's share of them) instead of scanning every token id; others are scanned.
    func openTokens(_ spec: String, preferring prefix: String, vocabSize: Int,
                    hashShare: (index: Int, of: Int)) throws -> (TokenDataset, DatasetManifest?) {
        let paths = try TokenDataset.resolve(spec, preferring: prefix)
        guard let check = try ManifestCheck.find(paths: paths) else { return (try TokenDataset(paths: paths, vocabSize: vocabSize), nil) }
        try check.verify(paths: paths, hashShare: hashShare, threads: Parallel.threads)
        return (try TokenDataset(paths: paths, vocabSize: vocabSize, idsCheckedBelow: check.manifest.tokenIdLimit), check.manifest)
    }

    // MARK: 2. build and restore

    /// Everything a running job holds: the model, its optimizer, the graph, the reducer and the counters.
    final class State {
        let model: GPT2Model
        let optimizer: AdamW
        let sharding: OptimizerSharding
        let graph: GPT2Graph
        let reducer: BucketedAllReduce
        let order: BatchOrder
        let sgemmPeak: Double
        var metrics: MetricsLog?
        var tensorboard: TensorBoardWriter?  // rank 0, unless --tensorboard false
        var tokenRows: TokenGradientExchange?  // several ranks: the token embedding's rows of wte, summed apart
        var step = 0, tokensSeen = 0
        var firstStep = 0  // where this run started (after a resume: the checkpoint's step)
        var dataIdentity: String?  // the training data's manifest id
        var badSteps = 0   // non-finite steps in a row
        var resumedFrom: String?
        var metricsWarned = false
        var checkpointName: String?, checkpointStep: Int?  // the newest checkpoint of this run directory
        var resumedPrecision: MatmulPrecision?  // what the resumed checkpoint's run trained with
        let started = Runtime.now()
        var timedSteps = 0, timedSeconds = 0.0
        /// bf16: whether the parameters' bf16 copy matches the values (AdamW refreshes what it updates; under ZeRO-1
        /// the other ranks' parts are rounded as their all-gather lands: `awaitParameters`).
        var bf16CopyIsCurrent = false
        var taskScorer: ChoiceScorer?  // --task: its graphs, built at the first scoring
        var trace: TraceRecorder?  // while a step of --trace-steps runs
        /// ZeRO-1 in bf16: the regions whose all-gathered parts are not yet in the bf16 copy.
        var bf16RegionsPending: [Bool] = []
        lazy var othersParts: [[Range<Int>]] = model.config.gradientRegions.map { region in
            var parts: [Range<Int>] = [], next = region.lowerBound
            for owned in sharding.mine where owned.overlaps(region) {
                if owned.lowerBound > next { parts.append(next..<owned.lowerBound) }
                next = max(next, owned.upperBound)
            }
            if next < region.upperBound { parts.append(next..<region.upperBound) }
            return parts
        }

        init(model: GPT2Model, optimizer: AdamW, sharding: OptimizerSharding, graph: GPT2Graph, reducer: BucketedAllReduce,
             order: BatchOrder, sgemmPeak: Double) {
            self.model = model; self.optimizer = optimizer; self.sharding = sharding; self.graph = graph
            self.reducer = reducer; self.order = order; self.sgemmPeak = sgemmPeak
        }
        var largestTensor: Int { model.parameters.layout.entries.map(\.count).max()! }
    }

    func build(_ plan: Plan) throws -> State {
        let cfg = plan.config, n = comm.size
        let peak = Runtime.measureSgemmPeak(seconds: 0.3)  // before the big allocations: its buffers stay out of peak RSS
        // Gradients are summed in buckets that overlap backward: all-reduced, or with ZeRO-1 reduce-scattered
        // (each rank keeps its part of every bucket, and parameters are all-gathered after the update, bucket by bucket).
        // wte's dense part goes first: the token embedding's rows are held back and summed apart (TokenGradientExchange).
        let schedule = BucketSchedule(regions: cfg.gradientRegions, bucketFloats: Int(o.bucketMb * 1_048_576 / 4))
        let sharding = OptimizerSharding(schedule: schedule, total: cfg.parameterCount, ranks: n, rank: comm.rank,
                                         sharded: o.zero == .optimizer && n > 1)
        let model = GPT2Model(config: cfg)
        let optimizer = AdamW(layout: model.parameters.layout, parts: sharding.mine, hyper: {
            var h = AdamW.Hyper(); h.beta1 = o.beta1; h.beta2 = o.beta2; h.eps = o.eps; h.weightDecay = o.weightDecay
            h.embeddingLRScale = o.embeddingLrScale; return h
        }())
        let graph = GPT2Graph(model: model, batch: plan.micro, seqLen: o.seqLen, mode: .train, recompute: o.recompute,
                              precision: o.precision)
        graph.lossGradScale = 1 / Float(o.batchSize * o.seqLen)  // summed over micro-batches and ranks = the global mean
        let order = try BatchOrder(tokenCount: plan.train.count, batchSize: o.batchSize, seqLen: o.seqLen,
                                   shuffleSeed: o.shuffle ? UInt64(o.seed) : nil)
        let reducer = BucketedAllReduce(comm: comm, base: model.parameters.gradients.pointer, schedule: schedule,
                                        overlap: o.overlap, shardsBuckets: sharding.sharded)
        let state = State(model: model, optimizer: optimizer, sharding: sharding, graph: graph, reducer: reducer,
                          order: order, sgemmPeak: peak)
        state.dataIdentity = plan.dataIdentity
        if n > 1 {
            state.tokenRows = TokenGradientExchange(vocab: cfg.vocabSize, channels: cfg.embDim, globalPositions: n * plan.micro * o.seqLen)
        }
        state.metrics = try agreed { () -> MetricsLog? in
            guard comm.isRoot else { return nil }
            let removed = TrainCheckpoint.removeStaleTemporaries(directory: o.out!)
            for r in removed { log("  removed \(r), left by a run that was killed while writing a checkpoint") }
            return try MetricsLog.openOrCreate(path: o.out! + "/metrics.h5", log: log)
        }
        if comm.isRoot && o.tensorboard {
            do { state.tensorboard = try TensorBoardWriter(directory: o.out!) } catch { log("  warning: no TensorBoard events: \(error)") }
        }
        return state
    }

    /// Identical starting point on every rank: rank 0 reads or initialises, then broadcasts; AdamW state goes
    /// tensor by tensor to whichever ranks hold it.
    func restore(_ s: State, _ plan: Plan) throws {
        let params = s.model.parameters
        let reader = try agreed { () -> TrainCheckpoint.Reader? in
            guard comm.isRoot else { return nil }
            if !plan.resumeCandidates.isEmpty { return try openVerifiedCheckpoint(plan.resumeCandidates, model: s.model) }
            if let i = plan.initPath {
                // Straight into the flat buffer: no second copy of the model (it may be 1.5B parameters).
                let f = try HDF5File.open(i)
                defer { f.close() }
                try ModelFile.readTensors(f, group: "/params", layout: params.layout, into: params.values.pointer)
            } else {
                s.model.initialize(seed: UInt64(o.seed))
            }
            return nil
        }
        comm.broadcast(params.values.pointer, count: params.count)
        var counters = [Double(reader?.state.step ?? 0), Double(reader?.state.tokensSeen ?? 0), plan.resumeCandidates.isEmpty ? 0 : 1]
        comm.broadcast(&counters)
        s.step = Int(counters[0]); s.tokensSeen = Int(counters[1]); s.firstStep = s.step
        s.resumedFrom = reader?.path
        if let stored = reader?.state.runConfig,
           let object = try? TrainOptions.settingsObject(Data(stored.utf8), source: "the checkpoint's run_config") {
            // Read through the option table, as resolving the settings did (an older run_config has no precision: fp32).
            s.resumedPrecision = (try? TrainOptions().applying(json: object, source: "run_config", strict: false))?.precision
        }
        if let path = reader?.path, URL(fileURLWithPath: path).deletingLastPathComponent().standardizedFileURL
            == URL(fileURLWithPath: o.out!).standardizedFileURL {
            s.checkpointName = URL(fileURLWithPath: path).lastPathComponent
            s.checkpointStep = s.step
        }
        guard counters[2] > 0 else { return }
        var failure: String?
        let scratch = FloatBuffer(count: s.largestTensor)
        for (group, local) in [("m", s.optimizer.m.pointer), ("v", s.optimizer.v.pointer)] {
            for e in params.layout.entries {
                if let r = reader, failure == nil {
                    do { try r.read(group, e, into: scratch.pointer) } catch { failure = "\(error)" }
                }
                s.sharding.scatter(e, full: scratch.pointer, local: local, comm: comm)
            }
        }
        reader?.close()
        if let message = comm.agreeOnFailure(failure) { throw GPT2DistError(.training, message) }
    }

    /// The first candidate whose every dataset reads back with a valid checksum; each one skipped is reported.
    /// Only a bare --resume falls back: a file the user named is used or refused.
    func openVerifiedCheckpoint(_ candidates: [String], model: GPT2Model) throws -> TrainCheckpoint.Reader {
        var problems: [String] = []
        for path in candidates {
            do {
                let reader = try TrainCheckpoint.Reader(path: path, model: model)  // reads (and checks) the parameters
                try reader.verifyOptimizerState(layout: model.parameters.layout)
                for damaged in problems { log("  warning: \(damaged); resuming from \(path) instead") }
                return reader
            } catch {
                problems.append("\(path) is unusable (\(error))")
                if o.resume != TrainCheckpoint.newestInOut { throw error }
            }
        }
        throw GPT2DistError(.training, "--resume: no usable checkpoint in \(o.out!): " + problems.joined(separator: "; "))
    }

    func announce(_ s: State, _ plan: Plan) {
        guard comm.isRoot else { return }
        let cfg = plan.config, n = comm.size
        log("gpt2-dist train: \(n) rank(s) x \(Runtime.blasDescription); model \(cfg.parameterCount) parameters "
            + "(\(cfg.nLayers) layers, \(cfg.embDim) wide, \(cfg.nHeads) heads, vocab \(cfg.vocabSize))")
        log("  batch \(o.batchSize) x \(o.seqLen) tokens = micro \(plan.micro) x \(n) ranks x \(plan.accumulation) accumulation; "
            + "train tokens \(plan.train.count)\(plan.val.map { ", val tokens \($0.count)" } ?? ""); "
            + "sgemm peak \(String(format: "%.0f", s.sgemmPeak / 1e9)) GFLOP/s per rank")
        let mem = MemoryEstimate(config: cfg, microBatch: plan.micro, seqLen: o.seqLen, ranks: n, zero: s.sharding.sharded,
                                 recompute: o.recompute, activationBytes: s.graph.activationBytes, bucketMb: o.bucketMb)
        log("  memory per rank (predicted): \(Format.bytes(mem.rootTotal)) = params \(Format.bytes(mem.parameters)) + grads "
            + "\(Format.bytes(mem.gradients)) + AdamW \(Format.bytes(mem.optimizer)) + activations "
            + "\(Format.bytes(mem.activations)) + runtime \(Format.bytes(MemoryEstimate.runtimeOverhead))"
            + (mem.communication > 0 ? " + reduce-scatter buffer \(Format.bytes(mem.communication))" : "")
            + (mem.checkpointGather > 0 ? " + checkpoint gather \(Format.bytes(mem.checkpointGather)) (rank 0 only; "
               + "ranks > 0: \(Format.bytes(mem.total)))" : ""))
        let local = Runtime.localRanks
        if local * BLAS.threads > Runtime.nodeCores {
            log("  warning: \(local) ranks x \(BLAS.threads) threads on this node exceed its \(Runtime.nodeCores) cores: "
                + "every step will be several times slower (lower --threads or the ranks per node)")
        }
        if o.overlap && n > 1 && !s.reducer.overlap {
            log("  warning: MPI does not provide MPI_THREAD_MULTIPLE: gradients are reduced after backward, not during it")
        }
        if n > Runtime.localRanks && Communicator.setsTCPFlags {
            log("  network: ranks on several hosts; Open MPI's TCP transport set to plain sends in both directions of each link "
                + "(btl_tcp_flags=\(Communicator.tcpFlags); OMPI_MCA_btl_tcp_flags overrides)")
        }
        if s.sharding.sharded {
            log("  ZeRO-1: AdamW state sharded, \(s.sharding.ownedCount) of \(cfg.parameterCount) parameters on this rank, a part of every bucket")
        }
        if o.precision == .bf16, let (_, detail) = try? BF16Engine.choose() {
            log("  precision bf16 (bf16 operands, fp32 accumulation; weights, optimizer and loss in fp32), engine \(detail)")
        }
        if let r = s.resumedFrom { log("  resumed from \(r) at step \(s.step)") }
        if let trained = s.resumedPrecision, trained != o.precision {
            log("  note: the checkpoint was trained with --precision \(trained.rawValue); continuing in \(o.precision.rawValue)")
        }
        if let i = plan.initPath { log("  initialised from \(i)") }
    }

    // MARK: 3. one step

    struct StepStats {
        var loss: Double, norm: Double, lr: Double
        /// The whole step; the communication thread's busy time; how long compute waited for communication (exposed);
        /// the optimizer update; reading the batch.
        var seconds: Double, commSeconds: Double, exposedSeconds: Double, optimizerSeconds: Double, dataSeconds: Double
        var stopSignal: Int32?
    }

    /// One optimizer step: forward and backward over this rank's rows (gradients summed across ranks meanwhile),
    /// one all-reduce of the loss and the stop flags, then clipping and the AdamW update (skipped when anything is
    /// non-finite).
    func trainStep(_ s: State, _ plan: Plan) throws -> StepStats {
        let t0 = Runtime.now(), traceStart = TraceRecorder.now()
        let (lossSum, dataSeconds) = forwardBackward(s, plan)
        sumGradients(s, plan)
        let exposedSeconds = s.reducer.waitSeconds + (s.tokenRows?.seconds ?? 0)
        let commSeconds = s.reducer.commSeconds + (s.tokenRows?.seconds ?? 0)
        // One all-reduce carries the loss and whether any rank was asked to stop (and by which signal).
        var agreed = [lossSum, StopSignal.requested ? 1 : 0, StopSignal.requested ? Double(StopSignal.signalNumber) : 0]
        traced(s, "loss all-reduce") { comm.allReduceSum(&agreed) }
        let loss = agreed[0] / Double(o.batchSize * o.seqLen)
        let norm = traced(s, "gradient norm") { gradientNorm(s) }
        let lr = plan.schedule(s.step)
        let tOpt = Runtime.now()
        try traced(s, "optimizer") { try update(s, plan, loss: loss, norm: norm, lr: lr) }
        let optimizerSeconds = Runtime.now() - tOpt
        s.step += 1
        s.tokensSeen += o.batchSize * o.seqLen
        s.reducer.resetTimers()
        // One rank signalled: name its signal; several: SIGTERM stands for them all.
        let stop: Int32? = agreed[1] == 0 ? nil : agreed[1] == 1 ? Int32(agreed[2]) : SIGTERM
        let seconds = Runtime.now() - t0
        s.trace?.span("step \(s.step)", "step", start: traceStart, end: TraceRecorder.now(), args: ["ms": seconds * 1000])
        return StepStats(loss: loss, norm: norm, lr: lr, seconds: seconds, commSeconds: commSeconds,
                         exposedSeconds: exposedSeconds, optimizerSeconds: optimizerSeconds, dataSeconds: dataSeconds,
                         stopSignal: stop)
    }

    /// Every micro-batch of this rank's rows, forward then backward; the last one's backward hands gradient
    /// buckets to the reducer as it finishes them (wte's dense part first). Returns the summed loss and the
    /// seconds spent reading batches.
    func forwardBackward(_ s: State, _ plan: Plan) -> (lossSum: Double, dataSeconds: Double) {
        traced(s, "zero gradients") { s.model.parameters.zeroGradients() }
        s.reducer.begin()
        var lossSum = 0.0, dataSeconds = 0.0
        let rowsPerRank = plan.micro * plan.accumulation, reducer = s.reducer
        for k in 0..<plan.accumulation {
            let first = comm.rank * rowsPerRank + k * plan.micro
            let tData = Runtime.now()
            traced(s, "data", "data") {
                s.order.fill(plan.train, step: s.step, firstRow: first, rows: plan.micro,
                             inputs: s.graph.inputs.pointer, targets: s.graph.targets.pointer)
            }
            dataSeconds += Runtime.now() - tData
            // ZeRO-1: the previous update's all-gather may still be landing; forward waits region by region.
            s.graph.forward(step: s.step, seed: UInt64(o.seed), rowOffset: first, bf16CopyIsCurrent: s.bf16CopyIsCurrent,
                            awaitingParameters: reducer.gathering ? { self.awaitParameters(s, region: $0) } : nil)
            s.bf16CopyIsCurrent = true
            traced(s, "wait: parameters (all-gather)", "wait") { awaitAllParameters(s) }
            lossSum += s.graph.lossSum
            let deferRows = k == plan.accumulation - 1 && s.tokenRows != nil
            s.graph.defersTokenGradient = deferRows
            s.graph.backward(progress: deferRows && reducer.overlap ? { reducer.ready(throughRegion: $0) } : nil)
        }
        return (lossSum, dataSeconds)
    }

    /// Waits for the buckets, then sums the token embedding's rows apart (several ranks).
    func sumGradients(_ s: State, _ plan: Plan) {
        traced(s, "wait: gradient buckets", "wait") { s.reducer.finish() }
        guard let rows = s.tokenRows else { return }
        let params = s.model.parameters
        fillEveryRanksTokens(rows, s, plan, step: s.step, microBatch: plan.accumulation - 1)
        traced(s, "token rows of wte (exchange)", "comm") {
            rows.reduce(tokens: s.graph.inputs.pointer, rowGradient: s.graph.embeddingGradient, positions: plan.micro * o.seqLen,
                        comm: comm, gradients: params.gradients.pointer, wteOffset: params.layout.entry("wte")!.offset,
                        keep: s.sharding.mine)
        }
    }

    /// Clipping and AdamW, then (ZeRO-1) the all-gather of the updated parameters; a non-finite loss or norm skips
    /// the update, and `--max-bad-steps` of them in a row end the run.
    func update(_ s: State, _ plan: Plan, loss: Double, norm: Double, lr: Double) throws {
        let params = s.model.parameters
        guard loss.isFinite && norm.isFinite else {
            s.badSteps += 1
            if comm.isRoot { log("  step \(s.step + 1): non-finite loss or gradient norm (loss \(loss), norm \(norm)); update skipped") }
            if s.badSteps >= o.maxBadSteps {
                throw GPT2DistError(.training, "\(s.badSteps) non-finite steps in a row at step \(s.step + 1); stopping (lower --lr or check the data)")
            }
            return
        }
        s.badSteps = 0
        let clip: Float = o.gradClip > 0 ? Float(min(1, o.gradClip / (norm + 1e-6))) : 1
        s.optimizer.step(params: params.values.pointer, grads: params.gradients.pointer, lr: lr, t: s.step + 1, gradScale: clip,
                         bf16: params.bf16Pointer)
        guard s.sharding.sharded else { return }
        if params.bf16 != nil { s.bf16RegionsPending = Array(repeating: true, count: s.othersParts.count) }
        // The next step's first forward reads wte's rows of its tokens first: those now, the rest while it runs.
        if let rows = s.tokenRows, s.reducer.overlap {
            fillEveryRanksTokens(rows, s, plan, step: s.step + 1, microBatch: 0)
            rows.shareRows(values: params.values.pointer, wteOffset: params.layout.entry("wte")!.offset, owned: s.sharding.mine,
                           comm: comm)
        }
        s.reducer.startAllGather(params.values.pointer)
    }

    /// ZeRO-1: waits until region `region` holds every rank's updated parameters, and (bf16) rounds the other ranks'
    /// parts of it into the bf16 copy (this rank's parts were rounded by its AdamW update).
    func awaitParameters(_ s: State, region: Int) {
        traced(s, "wait: parameters (all-gather)", "wait") { s.reducer.awaitParameters(region: region) }
        guard s.bf16RegionsPending.indices.contains(region), s.bf16RegionsPending[region] else { return }
        for part in s.othersParts[region] { s.model.parameters.refreshBF16Copy(part) }
        s.bf16RegionsPending[region] = false
    }

    /// Waits for the whole all-gather (before anything reads all parameters: evaluation, checkpoints, checks).
    func awaitAllParameters(_ s: State) {
        s.reducer.awaitAllParameters()
        for region in s.bf16RegionsPending.indices { awaitParameters(s, region: region) }
    }

    /// Token ids of micro-batch `microBatch` of every rank at `step`, rank by rank, as each rank reads them.
    func fillEveryRanksTokens(_ rows: TokenGradientExchange, _ s: State, _ plan: Plan, step: Int, microBatch: Int) {
        let positions = plan.micro * o.seqLen, rowsPerRank = plan.micro * plan.accumulation
        for r in 0..<comm.size {
            s.order.fill(plan.train, step: step, firstRow: r * rowsPerRank + microBatch * plan.micro, rows: plan.micro,
                         inputs: rows.globalTokens.pointer + r * positions, targets: rows.targetsScratch.pointer + r * positions)
        }
    }

    /// The global gradient norm (each rank holds only its shard's summed gradients under ZeRO-1).
    func gradientNorm(_ s: State) -> Double {
        let g = s.model.parameters.gradients.pointer
        guard s.sharding.sharded else { return Training.gradientNorm(g, s.model.parameters.count) }
        var squares = [s.sharding.mine.reduce(0.0) { $0 + pow(Training.gradientNorm(g + $1.lowerBound, $1.count), 2) }]
        comm.allReduceSum(&squares)
        return squares[0].squareRoot()
    }

    /// The progress line and the metrics row (rank 0).
    func report(_ r: StepStats, _ s: State, _ plan: Plan) {
        let B = o.batchSize, T = o.seqLen
        // The first step of a run includes warm-up: leave it out of the ETA unless it is the only one.
        if s.step > s.firstStep + 1 || o.steps - s.firstStep == 1 { s.timedSteps += 1; s.timedSeconds += r.seconds }
        guard comm.isRoot else { return }
        let avg = s.timedSteps > 0 ? s.timedSeconds / Double(s.timedSteps) : r.seconds
        let tps = Double(B * T) / r.seconds
        let mfu = plan.config.flopsPerToken(seqLen: T) * Double(B * T) / r.seconds / (s.sgemmPeak * Double(comm.size)) * 100
        log(String(format: "step %d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f ms | %.0f tok/s | MFU %.1f%% | comm %.0f ms (%.0f exposed) | opt %.0f ms | ETA %@",
                   s.step, o.steps, r.loss, r.lr, r.norm, r.seconds * 1000, tps, mfu, r.commSeconds * 1000, r.exposedSeconds * 1000,
                   r.optimizerSeconds * 1000, Format.duration(avg * Double(o.steps - s.step))))
        record(s, ["step": Double(s.step), "train_loss": r.loss, "lr": r.lr, "grad_norm": r.norm, "tokens_per_s": tps,
                   "ms_per_step": r.seconds * 1000, "comm_ms": r.commSeconds * 1000, "exposed_ms": r.exposedSeconds * 1000,
                   "opt_ms": r.optimizerSeconds * 1000, "data_ms": r.dataSeconds * 1000, "mfu": mfu / 100])
    }

    /// Rank 0 alone writes metrics: the same row to metrics.h5 and (unless off) the TensorBoard event file. A busy or
    /// failing metrics file is reported once, never fatal.
    func record(_ s: State, _ values: [String: Double]) {
        let t0 = TraceRecorder.now()
        defer { s.trace?.span("metrics row", "writer", .writer, start: t0, end: TraceRecorder.now()) }
        if let warning = s.metrics?.append(values), !s.metricsWarned {
            log("  warning: metrics.h5 not written this step: \(warning)")
            s.metricsWarned = true
        }
        do { try s.tensorboard?.append(values, step: s.step) } catch {
            log("  warning: TensorBoard events no longer written: \(error)")
            s.tensorboard = nil
        }
    }

    func validateLoss(_ s: State, _ plan: Plan) throws {
        guard let val = plan.val, o.evalBatches > 0 else { return }
        awaitAllParameters(s)  // ZeRO-1's all-gather otherwise overlaps the next forward
        let B = o.batchSize, T = o.seqLen
        let batches = min(o.evalBatches, (val.count - 1) / (B * T))
        let loss = try evaluateLoss(graph: s.graph, data: val, batchSize: B, seqLen: T, batches: batches, comm: comm,
                                    bf16CopyIsCurrent: s.bf16CopyIsCurrent)
        if comm.isRoot {
            log(String(format: "  validation loss %.4f (step %d, %d batches)", loss, s.step, batches))
            record(s, ["val_step": Double(s.step), "val_loss": loss])
        }
    }

    // MARK: tracing (--trace-steps)

    /// Runs `body`, as one span of the compute track while a step is traced.
    @discardableResult
    func traced<R>(_ s: State, _ name: String, _ category: String = "compute", _ body: () throws -> R) rethrows -> R {
        guard let trace = s.trace else { return try body() }
        return try trace.measure(name, category, .compute, body)
    }

    /// From the next step on: every op, wait and bucket into a TraceRecorder (clocks aligned at a barrier).
    func startTracing(_ s: State, _ steps: ClosedRange<Int>) {
        let trace = TraceRecorder(steps: steps)
        trace.start(comm: comm)
        let names = s.graph.tape.names
        s.graph.tape.spanObserver = { op, phase, start, end in
            let name = op < 0 ? "zero activation gradients" : names[op] + (phase == .recompute ? " (recompute)" : "")
            trace.span(name, phase.rawValue, start: start, end: end)
        }
        s.reducer.bucketObserver = { kind, range, handedOff, start, end in
            let bytes = Double(range.count * 4)
            trace.span(kind.rawValue, "comm", .communication, start: start, end: end, args: ["bytes": bytes, "queued_ms": Double(start - handedOff) / 1e6])
            trace.asyncSpan("\(kind.rawValue) bucket (hand-off to done)", "bucket", start: handedOff, end: end, args: ["bytes": bytes])
        }
        s.trace = trace
    }

    /// After the last traced step (or when the run ends first): hooks off, and rank 0 writes OUT/trace.json with
    /// every rank's events. Collective.
    func stopTracing(_ s: State) throws {
        guard let trace = s.trace else { return }
        s.graph.tape.spanObserver = nil
        s.reducer.bucketObserver = nil
        awaitAllParameters(s)  // an all-gather still landing would report into the recorder
        s.trace = nil
        let path = o.out! + "/trace.json"
        try trace.write(path: path, comm: comm)
        if comm.isRoot { log("  trace of steps \(trace.steps.lowerBound)-\(trace.steps.upperBound) on \(comm.size) rank(s): \(path)") }
    }

    /// --task: the benchmark on the current weights (fp32 products, items split over ranks), into the records.
    func scoreTask(_ s: State, _ plan: Plan) {
        guard let (task, items) = plan.task else { return }
        awaitAllParameters(s)
        if s.taskScorer == nil { s.taskScorer = ChoiceScorer(model: s.model, rows: plan.micro) }
        let r = s.taskScorer!.score(items, comm: comm)
        if comm.isRoot {
            log(String(format: "  %@ acc %.4f, acc_norm %.4f (step %d, %d items, %.1f s)", task.rawValue, r.acc, r.accNorm, s.step, r.items, r.seconds))
            record(s, ["eval_step": Double(s.step), task.metricNames.acc: r.acc, task.metricNames.accNorm: r.accNorm])
        }
    }

    // MARK: 4. checkpoint

    /// Rank 0 writes OUT/ckpt-STEP.h5 (every rank takes part in gathering sharded optimizer state); the file is
    /// verified before it replaces anything, and only then does `latest` move and old checkpoints go.
    func checkpoint(_ s: State) throws {
        let t0 = TraceRecorder.now()
        defer { s.trace?.span("checkpoint", "writer", .writer, start: t0, end: TraceRecorder.now()) }
        awaitAllParameters(s)  // ZeRO-1's all-gather otherwise overlaps the next forward
        var failure: String?
        let params = s.model.parameters
        let path = o.out! + "/" + TrainCheckpoint.fileName(step: s.step)
        var writer: TrainCheckpoint.Writer?
        if comm.isRoot {
            do { writer = try TrainCheckpoint.Writer(path: path, model: s.model, step: s.step) } catch { failure = "\(error)" }
        }
        let scratch = s.sharding.sharded && comm.isRoot ? FloatBuffer(count: s.largestTensor) : nil  // only root gathers
        for (group, local) in [("m", s.optimizer.m.pointer), ("v", s.optimizer.v.pointer)] {
            for e in params.layout.entries {
                let full = s.sharding.gather(e, local: local, scratch: scratch?.pointer ?? local, comm: comm)
                if let w = writer, failure == nil, let full {
                    do { try w.write(group, e, full) } catch { failure = "\(error)" }
                }
            }
        }
        if let w = writer, failure == nil {
            do {
                let state = TrainState(step: s.step, tokensSeen: s.tokensSeen, runConfig: o.json,
                                       dataIdentity: s.dataIdentity)
                try w.finish(state)
                try TrainCheckpoint.commit(directory: o.out!, path: path, keep: o.keepCheckpoints)
                s.checkpointName = URL(fileURLWithPath: path).lastPathComponent
                s.checkpointStep = s.step
                _ = try? LossPlot.render(runDirectory: o.out!)
                log("  checkpoint \(path)")
                do { try writeStatus(s, .running, reason: "training") } catch { log("  warning: status.json not updated: \(error)") }
            } catch { failure = "\(error)" }
        }
        if let message = comm.agreeOnFailure(failure) { throw GPT2DistError(.training, message) }
    }

    // MARK: 5. finish

    /// Gathers every rank's peak memory and records how the run ended.
    func finish(_ s: State, _ outcome: RunStatus.State, reason: String) throws {
        var rss = [Double](repeating: 0, count: comm.size)
        rss[comm.rank] = Double(Runtime.peakRSS)
        comm.allReduceSum(&rss)
        guard comm.isRoot else { return }
        if let m = s.metrics, m.pendingRows > 0 {
            log("  warning: \(m.pendingRows) metrics row(s) not written: \(m.path) stayed busy (locked by a reader)")
        }
        if outcome == .finished {
            log(String(format: "done: %d steps in %@; peak RSS per rank: %@", s.step - s.firstStep, Format.duration(Runtime.now() - s.started),
                       rss.map { Format.bytes($0) }.joined(separator: ", ")))
        }
        try writeStatus(s, outcome, reason: reason, peakRSS: rss.map { Int($0) })
    }

    /// Rank 0 rewrites OUT/status.json.
    func writeStatus(_ s: State, _ state: RunStatus.State, reason: String, peakRSS: [Int]? = nil) throws {
        guard comm.isRoot else { return }
        try RunStatus(state: state, step: s.step, steps: o.steps, checkpoint: s.checkpointName, checkpointStep: s.checkpointStep,
                      reason: reason, ranks: comm.size, parameters: s.model.config.parameterCount, peakRSSBytes: peakRSS)
            .write(runDirectory: o.out!)
    }

    /// Fault injection for the tests of `checkReplicas`: GPT2DIST_INJECT_DRIFT=STEP makes the last rank change one
    /// parameter after that step, as a bit flip or a missed update would.
    static let injectedDriftStep = ProcessInfo.processInfo.environment["GPT2DIST_INJECT_DRIFT"].flatMap { Int($0) }

    func injectDrift(_ s: State) {
        awaitAllParameters(s)
        s.model.parameters.values.pointer[0] += 1e-3
        s.bf16CopyIsCurrent = false
    }

    /// All ranks must hold bit-identical parameters; a checksum of every one of them catches drift.
    func checkReplicas(_ s: State) throws {
        awaitAllParameters(s)
        let params = s.model.parameters
        let sum = parameterChecksum(params.values.pointer, params.count)
        var lo = [sum], hi = [sum]
        comm.allReduceMin(&lo); comm.allReduceMax(&hi)
        if lo[0] != hi[0] { throw GPT2DistError(.training, "ranks hold different parameters (checksums \(lo[0]) vs \(hi[0])); aborting") }
    }

    /// Runs `body` on every rank and agrees on the outcome: if any rank failed, all throw the first failure.
    func agreed<R>(_ body: () throws -> R) throws -> R {
        var result: R?
        var failure: String?
        do { result = try body() } catch { failure = "\(error)" }
        if let message = comm.agreeOnFailure(failure) { throw GPT2DistError(.training, message) }
        return result!
    }
}

/// L2 norm of a flat buffer, accumulated in double.
public func gradientNorm(_ g: UnsafePointer<Float>, _ count: Int) -> Double {
    let workers = max(Parallel.threads, 1)
    var partial = [Double](repeating: 0, count: workers)
    partial.withUnsafeMutableBufferPointer { part in
        let pp = part.baseAddress!
        Parallel.chunks(count, costPerItem: 2) { w, r in
            var acc = 0.0, block: Float = 0
            var i = r.lowerBound
            while i < r.upperBound {
                let hi = min(i + 4096, r.upperBound)
                block = 0
                for j in i..<hi { block += g[j] * g[j] }
                acc += Double(block)
                i = hi
            }
            pp[w] += acc
        }
    }
    return partial.reduce(0, +).squareRoot()
}

/// A weighted sum of every value (weights 1...13 by index, so swapped values change it too), in blocks of a fixed
/// size summed in order: the same bits on every rank whatever its thread count.
public func parameterChecksum(_ p: UnsafePointer<Float>, _ count: Int) -> Double {
    let block = 1 << 16, blocks = (count + block - 1) / block
    var partial = [Double](repeating: 0, count: blocks)
    partial.withUnsafeMutableBufferPointer { out in
        let o = out.baseAddress!
        Parallel.forEach(blocks) { _, b in
            var acc = 0.0
            for i in (b * block)..<min(count, (b + 1) * block) { acc += Double(p[i]) * Double(i % 13 + 1) }
            o[b] = acc
        }
    }
    return partial.reduce(0, +)
}
