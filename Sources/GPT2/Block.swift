import Autograd

/// A GPT-2 block, defined once: its ops in forward order. Each op names its parameters (their shapes), the
/// activations it reads, the width of what it writes, its FLOPs and how to put it on the tape. Everything about a
/// block is derived from this table: the parameter layout (`GPT2Config.parameterLayout`), the gradient regions
/// backward finishes (`gradientRegions`), the training graph (`GPT2Graph`) and the plan's counted compute
/// (`ScalingModel.Timeline.counted`). Adding a layer type means one entry here plus its kernels.
public struct BlockOp: Sendable {
    /// Unique within the block; a parameterised op's tensors are named `h.L.<name>.<parameter>`, as Hugging Face's.
    public let name: String
    /// Parameter name and shape for a config, in the order they lie in the flat buffer.
    public let parameters: @Sendable (GPT2Config) -> [(name: String, shape: [Int])]
    /// What the op reads: `BlockOp.input` (the block's input) or earlier ops' names.
    public let inputs: [String]
    /// Features per position of the op's output.
    public let width: @Sendable (GPT2Config) -> Int
    /// Training FLOPs per token (forward, backward) at sequence length T.
    public let flops: @Sendable (GPT2Config, _ seqLen: Int) -> (forward: Double, backward: Double)
    /// With dropout on (training, drop_rate > 0): the op's output is dropped at this site (see `DropoutOp`).
    public let dropoutSite: UInt64?
    /// Records the op's kernel on the tape.
    let make: @Sendable (BlockOpContext) -> any Op

    /// The name that stands for the block's input in `inputs`.
    public static let input = "input"

    public var hasParameters: Bool { !parameters(GPT2Config.shapeProbe).isEmpty }
}

/// What an op's `make` gets: its inputs and output, its parameters by name, and the shape of the batch.
struct BlockOpContext {
    let inputs: [Tensor], out: Tensor
    let parameter: (String) -> Tensor
    let hasParameter: (String) -> Bool
    let config: GPT2Config, batch: Int, seqLen: Int
    let arena: ActivationArena, stepContext: StepContext, matmul: Matmul
    /// The block's dropout-site base, and the dropout rate inside ops (0 unless training with drop_rate > 0).
    let site: UInt64, dropRate: Float
}

extension BlockOp {
    /// The GPT-2 block: pre-LayerNorm causal self-attention and a GELU MLP, each added to the residual stream.
    public static let gpt2: [BlockOp] = [
        layerNorm("ln_1", input: input),
        linear("attn.c_attn", input: "ln_1", inFeatures: { $0.embDim }, outFeatures: { 3 * $0.embDim }, bias: { $0.qkvBias }),
        BlockOp(name: "attn", parameters: { _ in [] }, inputs: ["attn.c_attn"], width: { $0.embDim },
                // QK^T and PV: 2·T·C each per token forward, twice that backward (nanoGPT's 12·L·C·T in all).
                flops: { c, t in (4 * Double(c.embDim * t), 8 * Double(c.embDim * t)) }, dropoutSite: nil,
                make: { k in
                    CausalSelfAttentionOp(qkv: k.inputs[0], out: k.out, batch: k.batch, seqLen: k.seqLen, heads: k.config.nHeads,
                                          dropRate: k.dropRate, site: k.site | 1, context: k.stepContext, arena: k.arena,
                                          matmul: k.matmul)
                }),
        linear("attn.c_proj", input: "attn", inFeatures: { $0.embDim }, outFeatures: { $0.embDim }, dropoutSite: 2),
        add("residual_1", input, "attn.c_proj"),
        layerNorm("ln_2", input: "residual_1"),
        linear("mlp.c_fc", input: "ln_2", inFeatures: { $0.embDim }, outFeatures: { 4 * $0.embDim }),
        BlockOp(name: "mlp.gelu", parameters: { _ in [] }, inputs: ["mlp.c_fc"], width: { 4 * $0.embDim },
                flops: { _, _ in (0, 0) }, dropoutSite: nil, make: { k in GELUOp(x: k.inputs[0], out: k.out) }),
        linear("mlp.c_proj", input: "mlp.gelu", inFeatures: { 4 * $0.embDim }, outFeatures: { $0.embDim }, dropoutSite: 3),
        add("residual_2", "residual_1", "mlp.c_proj"),
    ]

    /// y = x W + b, W input-major (GPT-2's Conv1D): 2·in·out FLOPs per token forward, twice that backward.
    static func linear(_ name: String, input: String, inFeatures: @escaping @Sendable (GPT2Config) -> Int,
                       outFeatures: @escaping @Sendable (GPT2Config) -> Int,
                       bias: @escaping @Sendable (GPT2Config) -> Bool = { _ in true }, dropoutSite: UInt64? = nil) -> BlockOp {
        BlockOp(name: name, parameters: { c in
                    [("weight", [inFeatures(c), outFeatures(c)])] + (bias(c) ? [("bias", [outFeatures(c)])] : [])
                }, inputs: [input], width: outFeatures,
                flops: { c, _ in let w = Double(inFeatures(c) * outFeatures(c)); return (2 * w, 4 * w) },
                dropoutSite: dropoutSite,
                make: { k in
                    LinearOp(x: k.inputs[0], weight: k.parameter("weight"), bias: k.hasParameter("bias") ? k.parameter("bias") : nil,
                             out: k.out, arena: k.arena, matmul: k.matmul)
                })
    }

    /// LayerNorm over the features (its FLOPs are elementwise: not counted, as nanoGPT's 6N + 12LCT).
    static func layerNorm(_ name: String, input: String) -> BlockOp {
        BlockOp(name: name, parameters: { c in [("weight", [c.embDim]), ("bias", [c.embDim])] }, inputs: [input],
                width: { $0.embDim }, flops: { _, _ in (0, 0) }, dropoutSite: nil,
                make: { k in LayerNormOp(x: k.inputs[0], weight: k.parameter("weight"), bias: k.parameter("bias"), out: k.out, arena: k.arena) })
    }

    /// A residual sum.
    static func add(_ name: String, _ a: String, _ b: String) -> BlockOp {
        BlockOp(name: name, parameters: { _ in [] }, inputs: [a, b], width: { $0.embDim }, flops: { _, _ in (0, 0) },
                dropoutSite: nil, make: { k in AddOp(a: k.inputs[0], b: k.inputs[1], out: k.out) })
    }

    /// The block's parameterised ops, last first: the order backward finishes their gradients (each op's tensors
    /// lie just below the next op's in the flat buffer).
    public static var gpt2ParameterisedInBackwardOrder: [BlockOp] { gpt2.filter(\.hasParameters).reversed() }
}

extension GPT2Config {
    /// A config for asking ops which parameters they have (only which, not how large).
    static let shapeProbe = try! GPT2Config(vocabSize: 1, contextLength: 1, embDim: 1, nHeads: 1, nLayers: 1)
}
