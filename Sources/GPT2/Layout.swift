import Autograd

extension GPT2Config {
    /// Every parameter with the name and shape of Hugging Face GPT-2's state dict (without "transformer."),
    /// linear weights input-major as GPT-2's Conv1D. Order: embeddings, blocks 0..L-1, final norm,
    /// so backward finishes parameter blocks from the end of the flat buffer towards its start.
    public var parameterLayout: ParameterLayout {
        let C = embDim
        var layout = ParameterLayout()
        layout.append("wte", [vocabSize, C])
        layout.append("wpe", [contextLength, C])
        for l in 0..<nLayers {
            let p = "h.\(l)."
            layout.append(p + "ln_1.weight", [C])
            layout.append(p + "ln_1.bias", [C])
            layout.append(p + "attn.c_attn.weight", [C, 3 * C])
            if qkvBias { layout.append(p + "attn.c_attn.bias", [3 * C]) }
            layout.append(p + "attn.c_proj.weight", [C, C])
            layout.append(p + "attn.c_proj.bias", [C])
            layout.append(p + "ln_2.weight", [C])
            layout.append(p + "ln_2.bias", [C])
            layout.append(p + "mlp.c_fc.weight", [C, 4 * C])
            layout.append(p + "mlp.c_fc.bias", [4 * C])
            layout.append(p + "mlp.c_proj.weight", [4 * C, C])
            layout.append(p + "mlp.c_proj.bias", [C])
        }
        layout.append("ln_f.weight", [C])
        layout.append("ln_f.bias", [C])
        return layout
    }

    /// The flat gradient buffer in the regions backward finishes, in that order, when the token embedding's rows
    /// are deferred (`GPT2Graph.defersTokenGradient`): wte (its dense part is final after the output head), ln_f,
    /// then for each block from L-1 down to 0 the tensors of each op from its last to its first (mlp.c_proj,
    /// mlp.c_fc, ln_2, attn.c_proj, attn.c_attn, ln_1: descending in the buffer), then wpe (after the embedding).
    /// Region indices: 0 wte, 1 ln_f, 2 + 6(L-1-l) + j for op j of block l, 2 + 6L wpe. Gradient buckets are cut
    /// from these regions.
    public var gradientRegions: [Range<Int>] {
        let layout = parameterLayout
        func start(_ name: String) -> Int { layout.entry(name)!.offset }
        var regions = [start("wte")..<start("wpe"), start("ln_f.weight")..<layout.totalCount]
        var end = start("ln_f.weight")
        for l in (0..<nLayers).reversed() {
            for name in Self.blockOpsInBackwardOrder {
                let lo = start("h.\(l).\(name).weight")
                regions.append(lo..<end)
                end = lo
            }
        }
        regions.append(start("wpe")..<end)
        return regions
    }

    /// The parameterised ops of a block, last first (each one's weight and bias lie just below the previous one's).
    public static let blockOpsInBackwardOrder = ["mlp.c_proj", "mlp.c_fc", "ln_2", "attn.c_proj", "attn.c_attn", "ln_1"]

    /// Parameter count with the output head tied to wte (what is stored and trained).
    public var parameterCount: Int { parameterLayout.totalCount }
    /// Parameter count if the output head were a separate [V, C] matrix.
    public var untiedParameterCount: Int { parameterCount + vocabSize * embDim }

    /// Training FLOPs per token, as nanoGPT counts them: 6N + 12·L·C·T (forward + backward).
    public func flopsPerToken(seqLen: Int) -> Double {
        6 * Double(parameterCount) + 12 * Double(nLayers) * Double(embDim) * Double(seqLen)
    }
}
