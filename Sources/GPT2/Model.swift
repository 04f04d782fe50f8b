import Autograd
import Foundation

/// GPT-2: token + position embeddings, pre-LayerNorm blocks (causal multi-head attention, GELU MLP),
/// final LayerNorm, output head tied to the token embedding. Parameters live in one flat buffer.
public final class GPT2Model: @unchecked Sendable {
    public let config: GPT2Config
    public let parameters: Parameters

    /// `paddedCount`: see `Parameters` (room for equal per-rank blocks under ZeRO-1).
    public init(config: GPT2Config, paddedCount: Int? = nil) {
        self.config = config
        parameters = Parameters(layout: config.parameterLayout, paddedCount: paddedCount)
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
    public let logits: Tensor
    let lossOp: SoftmaxCrossEntropyOp?

    public init(model: GPT2Model, batch: Int, seqLen: Int, mode: Mode) {
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
        func dropout(_ x: Tensor, site: UInt64) -> Tensor {
            guard drop > 0 && mode == .train else { return x }
            let y = act(x.shape)
            tape.record(DropoutOp(x: x, out: y, rate: drop, site: site, context: ctx))
            return y
        }
        func offset(_ name: String) -> Int { p.layout.entry(name)!.offset }

        var x = act([B, T, C])
        tape.record(EmbeddingOp(tokens: inputs, wte: p.tensor("wte"), wpe: p.tensor("wpe"), out: x, batch: B, seqLen: T),
                    completesParametersFrom: 0)
        x = dropout(x, site: 1 << 40)
        for l in 0..<L {
            let n = "h.\(l)."
            let site = UInt64(l) << 8
            let ln1 = act([B, T, C])
            tape.record(LayerNormOp(x: x, weight: p.tensor(n + "ln_1.weight"), bias: p.tensor(n + "ln_1.bias"),
                                    out: ln1, arena: arena), completesParametersFrom: offset(n + "ln_1.weight"))
            let qkv = act([B, T, 3 * C])
            tape.record(LinearOp(x: ln1, weight: p.tensor(n + "attn.c_attn.weight"),
                                 bias: cfg.qkvBias ? p.tensor(n + "attn.c_attn.bias") : nil, out: qkv, arena: arena))
            let att = act([B, T, C])
            tape.record(CausalSelfAttentionOp(qkv: qkv, out: att, batch: B, seqLen: T, heads: cfg.nHeads,
                                              dropRate: mode == .train ? drop : 0, site: site | 1,
                                              context: ctx, arena: arena))
            let proj = act([B, T, C])
            tape.record(LinearOp(x: att, weight: p.tensor(n + "attn.c_proj.weight"),
                                 bias: p.tensor(n + "attn.c_proj.bias"), out: proj, arena: arena))
            let x1 = act([B, T, C])
            tape.record(AddOp(a: x, b: dropout(proj, site: site | 2), out: x1))
            let ln2 = act([B, T, C])
            tape.record(LayerNormOp(x: x1, weight: p.tensor(n + "ln_2.weight"), bias: p.tensor(n + "ln_2.bias"),
                                    out: ln2, arena: arena))
            let fc = act([B, T, 4 * C])
            tape.record(LinearOp(x: ln2, weight: p.tensor(n + "mlp.c_fc.weight"), bias: p.tensor(n + "mlp.c_fc.bias"),
                                 out: fc, arena: arena))
            let gelu = act([B, T, 4 * C])
            tape.record(GELUOp(x: fc, out: gelu))
            let mproj = act([B, T, C])
            tape.record(LinearOp(x: gelu, weight: p.tensor(n + "mlp.c_proj.weight"),
                                 bias: p.tensor(n + "mlp.c_proj.bias"), out: mproj, arena: arena))
            let x2 = act([B, T, C])
            tape.record(AddOp(a: x1, b: dropout(mproj, site: site | 3), out: x2))
            x = x2
        }
        let lnf = act([B, T, C])
        tape.record(LayerNormOp(x: x, weight: p.tensor("ln_f.weight"), bias: p.tensor("ln_f.bias"), out: lnf, arena: arena),
                    completesParametersFrom: offset("ln_f.weight"))
        logits = arena.tensor([B, T, V], gradient: mode == .train ? .inPlace : .none)
        tape.record(TiedHeadOp(x: lnf, wte: p.tensor("wte"), logits: logits))
        if mode == .logits {
            lossOp = nil
        } else {
            let ce = SoftmaxCrossEntropyOp(logits: logits, targets: targets, arena: arena)
            tape.record(ce)
            lossOp = ce
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
    @discardableResult
    public func forward(step: Int = 0, seed: UInt64 = 0, rowOffset: Int = 0, training: Bool? = nil) -> Float {
        let c = tape.context
        c.step = step; c.seed = seed; c.rowOffset = rowOffset; c.training = training ?? (mode == .train)
        tape.forward()
        return lossOp?.loss ?? 0
    }

    /// Sum of per-position losses of the last forward (for exact means across micro-batches and ranks).
    public var lossSum: Double { lossOp?.lossSum ?? 0 }

    /// Accumulates parameter gradients (+=) into the model's flat gradient buffer.
    public func backward(progress: ((Int) -> Void)? = nil) {
        precondition(mode == .train, "backward needs a graph built in .train mode")
        tape.backward(progress: progress)
    }

    /// Copies tokens into the input/target buffers (row-major [batch, seqLen]).
    public func setBatch(inputs x: UnsafePointer<Int32>, targets y: UnsafePointer<Int32>?) {
        memcpy(inputs.pointer, x, batch * seqLen * 4)
        if let y { memcpy(targets.pointer, y, batch * seqLen * 4) }
    }
}
