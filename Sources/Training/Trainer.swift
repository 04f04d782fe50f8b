import Autograd
import Checkpoint
import Data
import Distributed
import Foundation
import GPT2

/// Data-parallel training: every rank holds the full model, runs its rows of the global batch,
/// gradients are summed over ranks in buckets (overlapping backward), and every rank applies the same
/// AdamW update. Rank 0 writes metrics, the loss curve and checkpoints.
public final class Trainer {
    let o: TrainOptions
    let comm: Communicator
    let log: (String) -> Void

    public init(options: TrainOptions, comm: Communicator, log: @escaping (String) -> Void = { print($0); fflush(stdout) }) {
        o = options; self.comm = comm; self.log = log
    }

    struct Setup {
        var config: GPT2Config
        var train: TokenDataset
        var val: TokenDataset?
        var micro: Int
        var accumulation: Int
        var resumePath: String?
        var initPath: String?
        var schedule: LRSchedule
    }

    /// Checks every input before any work; throws a one-line error.
    func prepare() throws -> Setup {
        let n = comm.size
        guard o.steps > 0 else { throw TrainError("--steps must be positive") }
        guard o.batchSize > 0, o.seqLen > 0 else { throw TrainError("--batch-size and --seq-len must be positive") }
        guard o.batchSize % n == 0 else {
            throw TrainError("--batch-size \(o.batchSize) is not divisible by the number of ranks (\(n))")
        }
        let micro = o.microBatchSize ?? o.batchSize / n
        guard micro > 0, o.batchSize % (micro * n) == 0 else {
            throw TrainError("--batch-size \(o.batchSize) must equal micro-batch (\(micro)) x ranks (\(n)) x accumulation steps")
        }
        guard let kind = LRSchedule.Kind(rawValue: o.lrSchedule) else {
            throw TrainError("--lr-schedule must be cosine or constant, got \(o.lrSchedule)")
        }
        guard o.lr > 0, o.minLR >= 0, o.warmupSteps >= 0, o.gradClip >= 0, o.weightDecay >= 0 else {
            throw TrainError("learning rates, warmup, clip and weight decay must be non-negative (lr positive)")
        }
        guard o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.eps > 0 else {
            throw TrainError("betas must be in [0, 1) and eps positive")
        }
        guard o.zero == 0 || o.zero == 1 else { throw TrainError("--zero must be 0 or 1") }
        guard !o.out.isEmpty else { throw TrainError("--out is required") }

        // Resume: explicit file, or the newest complete checkpoint in --out.
        var resumePath: String?
        if let r = o.resume {
            guard let p = TrainCheckpoint.resumePath(r, out: o.out) else {
                throw TrainError("--resume: no complete checkpoint in \(o.out)")
            }
            resumePath = p
        }
        guard resumePath == nil || o.initFrom == nil else { throw TrainError("--resume and --init cannot be combined") }

        var config: GPT2Config?
        if let path = o.config { config = try GPT2Config.load(path: path) }
        for (flag, path) in [("--resume", resumePath), ("--init", o.initFrom)] {
            guard let path else { continue }
            let c: GPT2Config
            do { c = try TrainCheckpoint.readConfig(path: path) } catch { throw TrainError("\(flag) \(path): \(error)") }
            if let given = config, given != c {
                throw TrainError("\(flag) \(path): its model config differs from --config \(o.config!)")
            }
            config = c
        }
        guard let config else { throw TrainError("--config is required (or --init/--resume to take it from a checkpoint)") }
        guard o.seqLen <= config.contextLength else {
            throw TrainError("--seq-len \(o.seqLen) exceeds the model's context_length \(config.contextLength)")
        }
        let train = try TokenDataset(spec: o.data, vocabSize: config.vocabSize, preferring: "train")
        _ = try BatchOrder(tokenCount: train.count, batchSize: o.batchSize, seqLen: o.seqLen)
        var val: TokenDataset?
        if let v = o.val {
            val = try TokenDataset(spec: v, vocabSize: config.vocabSize, preferring: "val")
            _ = try BatchOrder(tokenCount: val!.count, batchSize: o.batchSize, seqLen: o.seqLen)
        }
        // Output directory: must be writable; never overwrite an existing run unless resuming it.
        do { try FileManager.default.createDirectory(atPath: o.out, withIntermediateDirectories: true) } catch {
            throw TrainError("cannot create --out directory \(o.out)")
        }
        guard access(o.out, W_OK) == 0 else { throw TrainError("--out directory \(o.out) is not writable") }
        if resumePath == nil && !TrainCheckpoint.list(directory: o.out).isEmpty {
            throw TrainError("\(o.out) already holds checkpoints; pass --resume to continue that run or choose another --out")
        }
        guard (o.lrDecaySteps ?? 1) > 0 else { throw TrainError("--lr-decay-steps must be positive") }
        let schedule = LRSchedule(kind: kind, lr: o.lr, minLR: o.minLR, warmupSteps: o.warmupSteps, totalSteps: o.lrDecaySteps ?? o.steps)
        return Setup(config: config, train: train, val: val, micro: micro, accumulation: o.batchSize / (micro * n),
                     resumePath: resumePath, initPath: o.initFrom, schedule: schedule)
    }

    /// Runs the whole job; returns normally on completion or preemption.
    public func run() throws {
        var setup: Setup?
        var failure: String?
        do { setup = try prepare() } catch { failure = "\(error)" }
        if let message = comm.agreeOnFailure(failure) { throw TrainError(message) }
        let s = setup!
        let cfg = s.config, n = comm.size, B = o.batchSize, T = o.seqLen
        let peak = Runtime.measureSgemmPeak(seconds: 0.3)  // before the big allocations: its buffers stay out of peak RSS
        let sharding = OptimizerSharding(total: cfg.parameterCount, ranks: n, rank: comm.rank, sharded: o.zero == 1 && n > 1)
        let model = GPT2Model(config: cfg, paddedCount: sharding.paddedCount)
        let params = model.parameters
        let opt = AdamW(layout: params.layout, slice: sharding.mine, hyper: {
            var h = AdamW.Hyper(); h.beta1 = o.beta1; h.beta2 = o.beta2; h.eps = o.eps; h.weightDecay = o.weightDecay; return h
        }())
        let largestTensor = params.layout.entries.map(\.count).max()!

        // Identical starting point on every rank: rank 0 reads or initialises, then broadcasts; AdamW state
        // goes tensor by tensor to whichever ranks hold it.
        var startStep = 0, tokensSeen = 0
        var loadError: String?
        var reader: TrainCheckpoint.Reader?
        if comm.isRoot {
            do {
                if let r = s.resumePath {
                    reader = try TrainCheckpoint.Reader(path: r, model: model)
                    startStep = reader!.state.step; tokensSeen = reader!.state.tokensSeen
                } else if let i = s.initPath {
                    // Straight into the flat buffer: no second copy of the model (it may be 1.5B parameters).
                    let f = try HDF5File.open(i)
                    defer { f.close() }
                    try ModelFile.readTensors(f, group: "/params", layout: params.layout, into: params.values.pointer)
                } else {
                    model.initialize(seed: UInt64(o.seed))
                }
            } catch { loadError = "\(error)" }
        }
        if let message = comm.agreeOnFailure(loadError) { throw TrainError(message) }
        comm.broadcast(params.values.pointer, count: params.count)
        var counters = [Double(startStep), Double(tokensSeen), s.resumePath == nil ? 0 : 1]
        comm.broadcast(&counters)
        startStep = Int(counters[0]); tokensSeen = Int(counters[1])
        if counters[2] > 0 {
            let scratch = FloatBuffer(count: largestTensor)
            for (group, local) in [("m", opt.m.pointer), ("v", opt.v.pointer)] {
                for e in params.layout.entries {
                    if let r = reader, loadError == nil {
                        do { try r.read(group, e, into: scratch.pointer) } catch { loadError = "\(error)" }
                    }
                    sharding.scatter(e, full: scratch.pointer, local: local, comm: comm)
                }
            }
            reader?.close()
            if let message = comm.agreeOnFailure(loadError) { throw TrainError(message) }
        }

        let graph = GPT2Graph(model: model, batch: s.micro, seqLen: T, mode: .train, recompute: o.recompute)
        graph.lossGradScale = 1 / Float(B * T)  // summed over micro-batches and ranks = the global mean
        let order = try BatchOrder(tokenCount: s.train.count, batchSize: B, seqLen: T, shuffleSeed: o.shuffle ? UInt64(o.seed) : nil)
        // Gradients are summed in buckets that overlap backward: all-reduced, or with ZeRO-1 reduce-scattered
        // into this rank's shard (and parameters all-gathered after the update, bucket by bucket).
        let reducer = BucketedAllReduce(comm: comm, base: params.gradients.pointer, count: params.count,
                                        bucketFloats: max(1, Int(o.bucketMB * 1_048_576 / 4)), overlap: o.overlap,
                                        blockSize: sharding.sharded ? sharding.blockSize : nil)
        let flopsPerStep = cfg.flopsPerToken(seqLen: T) * Double(B * T)
        var metrics: MetricsLog?
        var metricsError: String?
        if comm.isRoot {
            do { metrics = try MetricsLog.openOrCreate(path: o.out + "/metrics.h5", log: log) } catch { metricsError = "\(error)" }
        }
        if let message = comm.agreeOnFailure(metricsError) { throw TrainError(message) }
        StopSignal.install()

        if comm.isRoot {
            log("gpt2-dist train: \(n) rank(s) x \(Runtime.blasDescription); model \(cfg.parameterCount) parameters "
                + "(\(cfg.nLayers) layers, \(cfg.embDim) wide, \(cfg.nHeads) heads, vocab \(cfg.vocabSize))")
            log("  batch \(B) x \(T) tokens = micro \(s.micro) x \(n) ranks x \(s.accumulation) accumulation; "
                + "train tokens \(s.train.count)\(s.val.map { ", val tokens \($0.count)" } ?? ""); "
                + "sgemm peak \(String(format: "%.0f", peak / 1e9)) GFLOP/s per rank")
            let mem = MemoryEstimate(config: cfg, microBatch: s.micro, seqLen: T, ranks: n, zero: sharding.sharded,
                                     recompute: o.recompute, activationBytes: graph.activationBytes)
            log("  memory per rank (predicted): \(Runtime.formatBytes(mem.total)) = params \(Runtime.formatBytes(mem.parameters)) + grads "
                + "\(Runtime.formatBytes(mem.gradients)) + AdamW \(Runtime.formatBytes(mem.optimizer)) + activations "
                + "\(Runtime.formatBytes(mem.activations)) + runtime \(Runtime.formatBytes(MemoryEstimate.runtimeOverhead))")
            let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN)), local = Runtime.localRanks
            if local * BLAS.threads > cores {
                log("  warning: \(local) ranks x \(BLAS.threads) threads on this node exceed its \(cores) cores: "
                    + "every step will be several times slower (lower --threads or the ranks per node)")
            }
            if sharding.sharded {
                log("  ZeRO-1: AdamW state sharded, \(sharding.blockSize) of \(cfg.parameterCount) parameters per rank")
            }
            if let r = s.resumePath { log("  resumed from \(r) at step \(startStep)") }
            if let i = s.initPath { log("  initialised from \(i)") }
        }

        // Rank 0 alone writes metrics; a busy or failing metrics file is reported, never fatal.
        var metricsWarned = false
        func record(_ values: [String: Double]) {
            if let warning = metrics?.append(values), !metricsWarned {
                log("  warning: metrics.h5 not written this step: \(warning)")
                metricsWarned = true
            }
        }

        func saveCheckpoint(step: Int) throws {
            var failure: String?
            let path = o.out + "/" + TrainCheckpoint.fileName(step: step)
            var writer: TrainCheckpoint.Writer?
            if comm.isRoot {
                do { writer = try TrainCheckpoint.Writer(path: path, model: model, step: step) } catch { failure = "\(error)" }
            }
            // Every rank takes part in gathering each optimizer tensor (a no-op without sharding).
            let scratch = sharding.sharded ? FloatBuffer(count: largestTensor) : nil
            for (group, local) in [("m", opt.m.pointer), ("v", opt.v.pointer)] {
                for e in params.layout.entries {
                    let full = sharding.gather(e, local: local, scratch: scratch?.pointer ?? local, comm: comm)
                    if let w = writer, failure == nil, let full {
                        do { try w.write(group, e, full) } catch { failure = "\(error)" }
                    }
                }
            }
            if let w = writer, failure == nil {
                do {
                    let state = TrainState(step: step, tokensSeen: tokensSeen, dataCursor: step, seed: o.seed, runConfig: o.json)
                    try w.finish(state)
                    try TrainCheckpoint.commit(directory: o.out, path: path, keep: o.keepCheckpoints)
                    _ = try? LossPlot.render(runDirectory: o.out)
                    log("  checkpoint \(path)")
                } catch { failure = "\(error)" }
            }
            if let message = comm.agreeOnFailure(failure) { throw TrainError(message) }
        }

        func validate(step: Int) throws {
            guard let val = s.val, o.evalBatches > 0 else { return }
            let batches = min(o.evalBatches, (val.count - 1) / (B * T))
            let loss = try evaluateLoss(graph: graph, data: val, batchSize: B, seqLen: T, batches: batches, comm: comm)
            if comm.isRoot {
                log(String(format: "  validation loss %.4f (step %d, %d batches)", loss, step, batches))
                record(["val_step": Double(step), "val_loss": loss])
            }
        }

        var badSteps = 0
        let runStart = Runtime.now()
        var timedSteps = 0, timedSeconds = 0.0
        var step = startStep
        var reduceSeconds = 0.0
        while step < o.steps {
            let t0 = Runtime.now()
            params.zeroGradients()
            reducer.begin()
            var lossSum = 0.0
            let rowsPerRank = s.micro * s.accumulation
            for k in 0..<s.accumulation {
                let first = comm.rank * rowsPerRank + k * s.micro
                order.fill(s.train, step: step, firstRow: first, rows: s.micro, inputs: graph.inputs.pointer, targets: graph.targets.pointer)
                graph.forward(step: step, seed: UInt64(o.seed), rowOffset: first)
                lossSum += graph.lossSum
                let last = k == s.accumulation - 1
                graph.backward(progress: last && reducer.overlap ? { reducer.ready(from: $0) } : nil)
            }
            reducer.finish()
            reduceSeconds = reducer.waitSeconds
            // One all-reduce carries the loss and whether any rank was asked to stop (and by which signal).
            var agreed = [lossSum, StopSignal.requested ? 1 : 0, StopSignal.requested ? Double(StopSignal.signalNumber) : 0]
            comm.allReduceSum(&agreed)
            let loss = agreed[0] / Double(B * T)
            var norm: Double
            if sharding.sharded {
                var sq = [pow(gradientNorm(params.gradients.pointer + sharding.mine.lowerBound, sharding.mine.count), 2)]
                comm.allReduceSum(&sq)
                norm = sq[0].squareRoot()
            } else {
                norm = gradientNorm(params.gradients.pointer, params.count)
            }
            let lr = s.schedule(step)
            let tOpt = Runtime.now()
            if loss.isFinite && norm.isFinite {
                badSteps = 0
                let clip: Float = o.gradClip > 0 ? Float(min(1, o.gradClip / (norm + 1e-6))) : 1
                let lo = sharding.mine.lowerBound
                opt.step(params: params.values.pointer + lo, grads: params.gradients.pointer + lo,
                         lr: lr, t: step + 1, gradScale: clip)
                reducer.allGather(params.values.pointer)
            } else {
                badSteps += 1
                if comm.isRoot { log("  step \(step + 1): non-finite loss or gradient norm (loss \(loss), norm \(norm)); update skipped") }
                if badSteps >= o.maxBadSteps {
                    throw TrainError("\(badSteps) non-finite steps in a row at step \(step + 1); stopping (lower --lr or check the data)")
                }
            }
            let optSeconds = Runtime.now() - tOpt
            step += 1
            tokensSeen += B * T
            let dt = Runtime.now() - t0
            if step > startStep + 1 || o.steps - startStep == 1 { timedSteps += 1; timedSeconds += dt }
            let avg = timedSteps > 0 ? timedSeconds / Double(timedSteps) : dt
            if comm.isRoot {
                let tps = Double(B * T) / dt
                let mfu = flopsPerStep / dt / (peak * Double(n)) * 100
                log(String(format: "step %d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f ms | %.0f tok/s | MFU %.1f%% | comm %.0f ms | opt %.0f ms | ETA %@",
                           step, o.steps, loss, lr, norm, dt * 1000, tps, mfu, reduceSeconds * 1000, optSeconds * 1000,
                           Runtime.formatDuration(avg * Double(o.steps - step))))
                record(["step": Double(step), "train_loss": loss, "lr": lr, "grad_norm": norm,
                                     "tokens_per_s": tps, "ms_per_step": dt * 1000])
            }
            reducer.resetTimers()
            if o.checksumEvery > 0 && step % o.checksumEvery == 0 { try checkReplicas(params) }
            let stopping = agreed[1] > 0
            if o.evalEvery > 0 && (step % o.evalEvery == 0 || step == o.steps) && !stopping { try validate(step: step) }
            if stopping {
                if comm.isRoot {
                    let sig = agreed[1] == 1 ? Int32(agreed[2]) : SIGTERM  // one rank signalled: name its signal
                    log("  \(StopSignal.describe(sig)) received by a rank: stopping after step \(step)")
                }
                try saveCheckpoint(step: step)
                return
            }
            if (o.ckptEvery > 0 && step % o.ckptEvery == 0) || step == o.steps { try saveCheckpoint(step: step) }
        }
        var rss = [Double](repeating: 0, count: n)
        rss[comm.rank] = Double(Runtime.peakRSS)
        comm.allReduceSum(&rss)
        if comm.isRoot {
            log(String(format: "done: %d steps in %@; peak RSS per rank: %@", o.steps - startStep,
                       Runtime.formatDuration(Runtime.now() - runStart), rss.map { Runtime.formatBytes($0) }.joined(separator: ", ")))
        }
    }

    /// All ranks must hold bit-identical parameters; a cheap checksum catches drift.
    func checkReplicas(_ params: Parameters) throws {
        var sum = 0.0
        let p = params.values.pointer
        for i in Swift.stride(from: 0, to: params.count, by: 97) { sum += Double(p[i]) * Double(i % 13 + 1) }
        var lo = [sum], hi = [sum]
        comm.allReduceMin(&lo); comm.allReduceMax(&hi)
        if lo[0] != hi[0] { throw TrainError("ranks hold different parameters (checksums \(lo[0]) vs \(hi[0])); aborting") }
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
