import Autograd
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
    public enum Mode { case train, evaluate, logits }

    public let model: GPT2Model
    public let batch: Int, seqLen: Int, mode: Mode
    public let tape: Tape
    /// Input token ids [batch, seqLen] and next-token targets, filled by the caller before `forward`.
    public let inputs: TokenBuffer, targets: TokenBuffer
    /// Logits [batch, seqLen, vocab] after forward in `.evaluate` and `.logits` modes. In `.train` mode the
    /// cross-entropy replaces them by the probabilities (their memory becomes the gradient); nil with recompute,
    /// where the fused chunked head never stores them.
    public let logits: Tensor!
    let lossOp: (any LossOp)?
    let embedding: EmbeddingOp

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
    public init(model: GPT2Model, batch: Int, seqLen: Int, mode: Mode, recompute: Bool = false) {
        let cfg = model.config
        precondition(seqLen >= 1 && seqLen <= cfg.contextLength, "seq-len must be in 1...context_length")
        self.model = model; self.batch = batch; self.seqLen = seqLen; self.mode = mode
        let B = batch, T = seqLen, C = cfg.embDim, V = cfg.vocabSize, L = cfg.nLayers
        let tape = Tape()
        self.tape = tape
        let p = model.parameters, arena = tape.arena, ctx = tape.context
        let grad: ActivationArena.Gradient = mode == .train ? .accumulated : .none
        let drop = Float(cfg.dropRate)
        inputs = TokenBuffer(count: B * T)
        targets = TokenBuffer(count: B * T)

        func act(_ shape: [Int]) -> Tensor { arena.tensor(shape, gradient: grad) }

        // Gradient regions, numbered as cfg.gradientRegions: 0 wte (after the head), 1 ln_f, 2 + 6(L-1-l) + j the j-th op
        // of block l counted from its last (GPT2Config.blockOpsInBackwardOrder), 2 + 6L wpe.
        var x = act([B, T, C])
        embedding = EmbeddingOp(tokens: inputs, wte: p.tensor("wte"), wpe: p.tensor("wpe"), out: x, batch: B, seqLen: T)
        tape.record(embedding, completesRegion: 2 + 6 * L)
        if drop > 0 && mode == .train {
            let y = act(x.shape)
            tape.record(DropoutOp(x: x, out: y, rate: drop, site: 1 << 40, context: ctx))
            x = y
        }
        // A block's internal activations: its own, or (recompute) one set shared by all blocks.
        struct Internals {
            var ln1, qkv, att, proj, x1, ln2, fc, gelu, mproj: Tensor
            var projDrop: Tensor?, mprojDrop: Tensor?
            var all: [Tensor] { [ln1, qkv, att, proj, x1, ln2, fc, gelu, mproj] + [projDrop, mprojDrop].compactMap { $0 } }
        }
        let dropping = drop > 0 && mode == .train
        func internals() -> Internals {
            Internals(ln1: act([B, T, C]), qkv: act([B, T, 3 * C]), att: act([B, T, C]), proj: act([B, T, C]),
                      x1: act([B, T, C]), ln2: act([B, T, C]), fc: act([B, T, 4 * C]), gelu: act([B, T, 4 * C]),
                      mproj: act([B, T, C]), projDrop: dropping ? act([B, T, C]) : nil,
                      mprojDrop: dropping ? act([B, T, C]) : nil)
        }
        let recomputing = recompute && mode == .train
        let shared = recomputing ? internals() : nil
        for l in 0..<L {
            let n = "h.\(l)."
            let site = UInt64(l) << 8
            let a = shared ?? internals()
            // Region of the block's op named j-th from its last in GPT2Config.blockOpsInBackwardOrder.
            func region(_ j: Int) -> Int { 2 + 6 * (L - 1 - l) + j }
            if recomputing { tape.beginSegment() }
            tape.record(LayerNormOp(x: x, weight: p.tensor(n + "ln_1.weight"), bias: p.tensor(n + "ln_1.bias"),
                                    out: a.ln1, arena: arena), completesRegion: region(5))
            tape.record(LinearOp(x: a.ln1, weight: p.tensor(n + "attn.c_attn.weight"),
                                 bias: cfg.qkvBias ? p.tensor(n + "attn.c_attn.bias") : nil, out: a.qkv, arena: arena),
                        completesRegion: region(4))
            tape.record(CausalSelfAttentionOp(qkv: a.qkv, out: a.att, batch: B, seqLen: T, heads: cfg.nHeads,
                                              dropRate: mode == .train ? drop : 0, site: site | 1,
                                              context: ctx, arena: arena))
            tape.record(LinearOp(x: a.att, weight: p.tensor(n + "attn.c_proj.weight"),
                                 bias: p.tensor(n + "attn.c_proj.bias"), out: a.proj, arena: arena), completesRegion: region(3))
            if let d = a.projDrop { tape.record(DropoutOp(x: a.proj, out: d, rate: drop, site: site | 2, context: ctx)) }
            tape.record(AddOp(a: x, b: a.projDrop ?? a.proj, out: a.x1))
            tape.record(LayerNormOp(x: a.x1, weight: p.tensor(n + "ln_2.weight"), bias: p.tensor(n + "ln_2.bias"),
                                    out: a.ln2, arena: arena), completesRegion: region(2))
            tape.record(LinearOp(x: a.ln2, weight: p.tensor(n + "mlp.c_fc.weight"), bias: p.tensor(n + "mlp.c_fc.bias"),
                                 out: a.fc, arena: arena), completesRegion: region(1))
            tape.record(GELUOp(x: a.fc, out: a.gelu))
            tape.record(LinearOp(x: a.gelu, weight: p.tensor(n + "mlp.c_proj.weight"),
                                 bias: p.tensor(n + "mlp.c_proj.bias"), out: a.mproj, arena: arena), completesRegion: region(0))
            if let d = a.mprojDrop { tape.record(DropoutOp(x: a.mproj, out: d, rate: drop, site: site | 3, context: ctx)) }
            let x2 = act([B, T, C])
            tape.record(AddOp(a: a.x1, b: a.mprojDrop ?? a.mproj, out: x2))
            if recomputing { tape.endSegment(shared: a.all, recompute: l < L - 1) }
            x = x2
        }
        let lnf = act([B, T, C])
        tape.record(LayerNormOp(x: x, weight: p.tensor("ln_f.weight"), bias: p.tensor("ln_f.bias"), out: lnf, arena: arena),
                    completesRegion: 1)
        if recomputing {
            let ce = ChunkedHeadCrossEntropyOp(x: lnf, wte: p.tensor("wte"), targets: targets, arena: arena)
            tape.record(ce, completesRegion: 0)
            logits = nil
            lossOp = ce
        } else {
            let l = arena.tensor([B, T, V], gradient: mode == .train ? .inPlace : .none)
            tape.record(TiedHeadOp(x: lnf, wte: p.tensor("wte"), logits: l), completesRegion: 0)
            logits = l
            if mode == .logits {
                lossOp = nil
            } else {
                let ce = SoftmaxCrossEntropyOp(logits: l, targets: targets, arena: arena)
                tape.record(ce)
                lossOp = ce
            }
        }
    }

    /// Bytes of activations and scratch held by this graph.
    public var activationBytes: Int { tape.arena.bytes }

    /// Gradient of the loss propagated by backward (default 1/(batch·seqLen): the mean over this batch).
    public var lossGradScale: Float {
        get { lossOp?.gradScale ?? 0 }
        set { lossOp?.gradScale = newValue }
    }

    /// Runs the forward pass; returns the mean cross-entropy (0 in `.logits` mode). `training: false` on a
    /// training graph evaluates without dropout (validation reuses the training graph's memory).
    /// `awaitingParameters(k)` is called before the first op that reads region k of `config.gradientRegions`
    /// (the token embedding reads wte's rows of `inputs` before region 0: the caller provides those first).
    @discardableResult
    public func forward(step: Int = 0, seed: UInt64 = 0, rowOffset: Int = 0, training: Bool? = nil,
                        awaitingParameters: ((Int) -> Void)? = nil) -> Float {
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
