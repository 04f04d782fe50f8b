import Autograd
import Common
import Foundation

/// GPT-2: token + position embeddings, pre-LayerNorm blocks (causal multi-head attention, GELU MLP),
/// final LayerNorm, output head tied to the token embedding. Parameters live in one flat buffer.
public final class GPT2Model: @unchecked Sendable {
    public let config: GPT2Config
    public let parameters: Parameters

    public init(config: GPT2Config) {
        self.config = config
        parameters = Parameters(layout: config.parameterLayout)
    }

    /// GPT-2 initialisation: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2·n_layers)),
    /// biases 0, LayerNorm weight 1 and bias 0. Every value is a function of (seed, tensor name, index).
    public func initialize(seed: UInt64) {
        let residualStd = 0.02 / Float(2 * config.nLayers).squareRoot()
        for e in parameters.layout.entries {
            let dst = parameters.values.pointer + e.offset
            let isNorm = e.name.hasPrefix("ln_f") || e.name.contains(".ln_")
            if e.name.hasSuffix(".bias") {
                memset(dst, 0, e.count * 4)
            } else if isNorm {
                for i in 0..<e.count { dst[i] = 1 }
            } else {
                let std: Float = e.name.hasSuffix("c_proj.weight") ? residualStd : 0.02
                let key = CounterRandom.key(seed, stableHash(e.name))
                Parallel.chunks(e.count, costPerItem: 16) { _, r in
                    for i in r { dst[i] = std * CounterRandom.normal(key, UInt64(i)) }
                }
            }
        }
    }
}

/// FNV-1a: a hash of a name that is the same in every process (Swift's Hasher is seeded per run).
public func stableHash(_ s: String) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    return h
}

/// The tape of one forward/backward pass for a fixed (batch, seqLen), with all activations preallocated.
public final class GPT2Graph {
    /// train: loss and backward; evaluate: the loss; logits: the logits only; features: the final LayerNorm's output
    /// only (no head: a caller that needs the head at a few positions computes them itself).
    public enum Mode { case train, evaluate, logits, features }

    public let model: GPT2Model
    public let batch: Int, seqLen: Int, mode: Mode
    public let tape: Tape
    /// Input token ids [batch, seqLen] and next-token targets, filled by the caller before `forward`.
    public let inputs: TokenBuffer, targets: TokenBuffer
    /// Logits [batch, seqLen, vocab] after forward in `.evaluate` and `.logits` modes. In `.train` mode the
    /// cross-entropy replaces them by the probabilities (their memory becomes the gradient); nil with recompute,
    /// where the fused chunked head never stores them.
    public let logits: Tensor!
    /// The final LayerNorm's output [batch, seqLen, emb_dim] after forward (what the tied head multiplies by wte^T).
    public let features: Tensor
    let lossOp: (any LossOp)?
    let embedding: EmbeddingOp

    /// Rows packing a shared prefix with several continuations (see `PackedRows`), for scoring; nil: plain rows.
    public var packedRows: PackedRows? {
        get { tape.context.packedRows }
        set {
            precondition(newValue == nil || (mode != .train && newValue!.batch == batch && newValue!.seqLen == seqLen))
            tape.context.packedRows = newValue
        }
    }

    /// Backward leaves the token embedding's rows out of wte's gradient (see `EmbeddingOp.defersTokenGradient`);
    /// the caller adds them from `inputs` and `embeddingGradient`. Needed to reduce wte while backward still runs.
    public var defersTokenGradient: Bool {
        get { embedding.defersTokenGradient }
        set { embedding.defersTokenGradient = newValue }
    }
    /// The gradient at the embedding's output, by position [batch·seqLen, emb_dim], after backward.
    public var embeddingGradient: UnsafePointer<Float> { embedding.outputGradient }

    /// `recompute` (training only): blocks share one set of internal activation buffers and recompute them
    /// in backward; only each block's output is kept, so activations are ~one block plus the block inputs.
    /// `precision`: what the matrix products multiply (bf16: operands rounded to bf16, accumulated in fp32; the
    /// weights, LayerNorm, softmax, GELU, the loss and every gradient stay fp32).
    /// `bf16Engine`: the engine of bf16 products (default: `BF16Engine.choose()`).
    public init(model: GPT2Model, batch: Int, seqLen: Int, mode: Mode, recompute: Bool = false,
                precision: MatmulPrecision = .fp32, bf16Engine: BF16Engine? = nil) {
        let cfg = model.config
        precondition(seqLen >= 1 && seqLen <= cfg.contextLength, "seq-len must be in 1...context_length")
        self.model = model; self.batch = batch; self.seqLen = seqLen; self.mode = mode
        let B = batch, T = seqLen, C = cfg.embDim, V = cfg.vocabSize, L = cfg.nLayers
        let tape = Tape(precision: precision, engine: bf16Engine)
        self.tape = tape
        let p = model.parameters, arena = tape.arena, ctx = tape.context
        if precision == .bf16 { p.enableBF16Copy() }  // before the ops take their tensors: they read it
        let grad: ActivationArena.Gradient = mode == .train ? .accumulated : .none
        let drop = Float(cfg.dropRate)
        inputs = TokenBuffer(count: B * T)
        targets = TokenBuffer(count: B * T)

        func act(_ shape: [Int]) -> Tensor { arena.tensor(shape, gradient: grad) }

        // Each op that uses parameters completes, in backward, the gradient region of the same name.
        let region = cfg.gradientRegionIndex
        var x = act([B, T, C])
        embedding = EmbeddingOp(tokens: inputs, wte: p.tensor("wte"), wpe: p.tensor("wpe"), out: x, batch: B, seqLen: T, context: ctx)
        tape.record(embedding, name: "embedding", completesRegion: region["wpe"])
        if drop > 0 && mode == .train {
            let y = act(x.shape)
            tape.record(DropoutOp(x: x, out: y, rate: drop, site: 1 << 40, context: ctx), name: "embedding.dropout")
            x = y
        }
        // A block's internal activations (every op's output but the last, and the dropped copies): its own, or
        // (recompute) one set shared by all blocks.
        let dropping = drop > 0 && mode == .train
        let ops = BlockOp.gpt2
        func internals() -> [String: Tensor] {
            var a: [String: Tensor] = [:]
            for op in ops.dropLast() {
                a[op.name] = act([B, T, op.width(cfg)])
                if dropping && op.dropoutSite != nil { a[op.name + ".dropped"] = act([B, T, op.width(cfg)]) }
            }
            return a
        }
        let recomputing = recompute && mode == .train
        let shared = recomputing ? internals() : nil
        for l in 0..<L {
            let site = UInt64(l) << 8
            var a = shared ?? internals()
            a[BlockOp.input] = x
            let output = act([B, T, ops.last!.width(cfg)])
            if recomputing { tape.beginSegment() }
            for (i, op) in ops.enumerated() {
                let out = i == ops.count - 1 ? output : a[op.name]!
                let context = BlockOpContext(
                    inputs: op.inputs.map { a[$0 + ".dropped"] ?? a[$0]! }, out: out,
                    parameter: { p.tensor(GPT2Config.blockParameterName(l, op.name, $0)) },
                    hasParameter: { p.layout.entry(GPT2Config.blockParameterName(l, op.name, $0)) != nil },
                    config: cfg, batch: B, seqLen: T, arena: arena, stepContext: ctx, matmul: tape.matmul, site: site,
                    dropRate: mode == .train ? drop : 0)
                tape.record(op.make(context), name: "h.\(l).\(op.name)", completesRegion: region["h.\(l).\(op.name)"])
                if let d = op.dropoutSite, let dropped = a[op.name + ".dropped"] {
                    tape.record(DropoutOp(x: out, out: dropped, rate: drop, site: site | d, context: ctx), name: "h.\(l).\(op.name).dropout")
                }
            }
            if recomputing {
                tape.endSegment(shared: ops.dropLast().flatMap { [a[$0.name]!] + (a[$0.name + ".dropped"].map { [$0] } ?? []) },
                                recompute: l < L - 1)
            }
            x = output
        }
        let lnf = act([B, T, C])
        tape.record(LayerNormOp(x: x, weight: p.tensor("ln_f.weight"), bias: p.tensor("ln_f.bias"), out: lnf, arena: arena),
                    name: "ln_f", completesRegion: region["ln_f"])
        features = lnf
        if mode == .features {
            logits = nil
            lossOp = nil
        } else if recomputing {
            let ce = ChunkedHeadCrossEntropyOp(x: lnf, wte: p.tensor("wte"), targets: targets, arena: arena, matmul: tape.matmul)
            tape.record(ce, name: "head+loss", completesRegion: region["wte"])
            logits = nil
            lossOp = ce
        } else {
            let l = arena.tensor([B, T, V], gradient: mode == .train ? .inPlace : .none)
            tape.record(TiedHeadOp(x: lnf, wte: p.tensor("wte"), logits: l, matmul: tape.matmul), name: "head", completesRegion: region["wte"])
            logits = l
            if mode == .logits {
                lossOp = nil
            } else {
                let ce = SoftmaxCrossEntropyOp(logits: l, targets: targets, arena: arena)
                tape.record(ce, name: "loss")
                lossOp = ce
            }
        }
    }

    /// Bytes of activations and scratch held by this graph (with bf16, the rounded operands' scratch too).
    public var activationBytes: Int { tape.arena.bytes + tape.matmul.scratchBytes }

    public var precision: MatmulPrecision { tape.matmul.precision }

    /// Gradient of the loss propagated by backward (default 1/(batch·seqLen): the mean over this batch).
    public var lossGradScale: Float {
        get { lossOp?.gradScale ?? 0 }
        set { lossOp?.gradScale = newValue }
    }

    /// Runs the forward pass; returns the mean cross-entropy (0 in `.logits` mode). `training: false` on a
    /// training graph evaluates without dropout (validation reuses the training graph's memory).
    /// `awaitingParameters(k)` is called before the first op that reads region k of `config.gradientRegions`
    /// (the token embedding reads wte's rows of `inputs` before region 0: the caller provides those first).
    /// bf16: the products read the parameters' bf16 copy, rounded again here unless `bf16CopyIsCurrent` (the caller
    /// refreshed it with every change of the values since, as the trainer's AdamW update does).
    @discardableResult
    public func forward(step: Int = 0, seed: UInt64 = 0, rowOffset: Int = 0, training: Bool? = nil,
                        bf16CopyIsCurrent: Bool = false, awaitingParameters: ((Int) -> Void)? = nil) -> Float {
        if precision == .bf16 && !bf16CopyIsCurrent { model.parameters.refreshBF16Copy() }
        let c = tape.context
        c.step = step; c.seed = seed; c.rowOffset = rowOffset; c.training = training ?? (mode == .train)
        tape.forward(awaiting: awaitingParameters)
        return lossOp?.loss ?? 0
    }

    /// Sum of per-position losses of the last forward (for exact means across micro-batches and ranks).
    public var lossSum: Double { lossOp?.lossSum ?? 0 }

    /// Accumulates parameter gradients (+=) into the model's flat gradient buffer. `progress(k)`: regions 0...k of
    /// `config.gradientRegions` are final (only with the token rows deferred: wte is region 0).
    public func backward(progress: ((Int) -> Void)? = nil) {
        precondition(mode == .train, "backward needs a graph built in .train mode")
        precondition(progress == nil || defersTokenGradient, "progress needs the token rows deferred (wte is region 0)")
        tape.backward(progress: progress)
    }

    /// Copies tokens into the input/target buffers (row-major [batch, seqLen]).
    public func setBatch(inputs x: UnsafePointer<Int32>, targets y: UnsafePointer<Int32>?) {
        memcpy(inputs.pointer, x, batch * seqLen * 4)
        if let y { memcpy(targets.pointer, y, batch * seqLen * 4) }
    }
}
