import Autograd

extension GPT2Config {
    /// Every parameter with the name and shape of Hugging Face GPT-2's state dict (without "transformer."),
    /// linear weights input-major as GPT-2's Conv1D. Order: embeddings, blocks 0..L-1 (each op of `BlockOp.gpt2`
    /// in forward order), final norm, so backward finishes parameter blocks from the end of the flat buffer
    /// towards its start.
    public var parameterLayout: ParameterLayout {
        var layout = ParameterLayout()
        layout.append("wte", [vocabSize, embDim])
        layout.append("wpe", [contextLength, embDim])
        for l in 0..<nLayers {
            for op in BlockOp.gpt2 {
                for p in op.parameters(self) { layout.append(Self.blockParameterName(l, op.name, p.name), p.shape) }
            }
        }
        layout.append("ln_f.weight", [embDim])
        layout.append("ln_f.bias", [embDim])
        return layout
    }

    /// `h.L.OP.PARAMETER`, as Hugging Face names a block's tensors.
    public static func blockParameterName(_ layer: Int, _ op: String, _ parameter: String) -> String {
        "h.\(layer).\(op).\(parameter)"
    }

    /// The names of the gradient regions backward finishes, in that order, when the token embedding's rows are
    /// deferred (`GPT2Graph.defersTokenGradient`): wte (its dense part is final after the output head), ln_f,
    /// then for each block from L-1 down to 0 its parameterised ops from last to first (`h.L.OP`), then wpe
    /// (after the embedding). Gradient buckets are cut from these regions.
    public var gradientRegionNames: [String] {
        ["wte", "ln_f"] + (0..<nLayers).reversed().flatMap { l in
            BlockOp.gpt2ParameterisedInBackwardOrder.map { "h.\(l).\($0.name)" }
        } + ["wpe"]
    }

    /// The flat gradient buffer cut into `gradientRegionNames`' regions, in the same order: each region is its
    /// tensors' range of the buffer.
    public var gradientRegions: [Range<Int>] {
        let layout = parameterLayout
        func start(_ name: String) -> Int { layout.entry(name)!.offset }
        var regions = [start("wte")..<start("wpe"), start("ln_f.weight")..<layout.totalCount]
        var end = start("ln_f.weight")
        for l in (0..<nLayers).reversed() {
            for op in BlockOp.gpt2ParameterisedInBackwardOrder {
                let lo = start(Self.blockParameterName(l, op.name, op.parameters(self)[0].name))
                regions.append(lo..<end)
                end = lo
            }
        }
        regions.append(start("wpe")..<end)
        return regions
    }

    /// Index of each named gradient region in `gradientRegions`.
    public var gradientRegionIndex: [String: Int] {
        Dictionary(uniqueKeysWithValues: gradientRegionNames.enumerated().map { ($1, $0) })
    }

    /// Parameter count with the output head tied to wte (what is stored and trained).
    public var parameterCount: Int { parameterLayout.totalCount }
    /// Parameter count if the output head were a separate [V, C] matrix.
    public var untiedParameterCount: Int { parameterCount + vocabSize * embDim }

    /// Training FLOPs per token, as nanoGPT counts them: 6N + 12·L·C·T (forward + backward).
    public func flopsPerToken(seqLen: Int) -> Double {
        6 * Double(parameterCount) + 12 * Double(nLayers) * Double(embDim) * Double(seqLen)
    }
}
