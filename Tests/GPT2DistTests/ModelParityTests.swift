import Autograd
import Checkpoint
import Data
import Foundation
import GPT2
import Testing
import Training
import Common

/// The Swift model against PyTorch + Hugging Face transformers on a small random GPT-2
/// (fixtures from Tests/Fixtures/make_gpt2_fixtures.py).
struct ModelParityTests {
    let hfDir = fixtures + "/tiny-gpt2/hf"
    let expected: SafeTensorsFile

    init() throws { expected = try SafeTensorsFile(path: fixtures + "/tiny-gpt2/expected.safetensors") }

    func fixtureName(_ ours: String) -> String { ours == "wte" || ours == "wpe" ? ours + ".weight" : ours }

    @Test func logitsLossAndEveryGradient() throws {
        let model = try HuggingFace.load(directory: hfDir)
        let B = 4, T = 32
        let graph = GPT2Graph(model: model, batch: B, seqLen: T, mode: .train)
        let x = try expected.ints("batch0.inputs").map(Int32.init), y = try expected.ints("batch0.targets").map(Int32.init)
        graph.setBatch(inputs: x, targets: y)
        let loss = graph.forward()
        let refLoss = try expected.floats("loss")[0]
        #expect(abs(loss - refLoss) / refLoss < 1e-5, "loss \(loss) vs HF \(refLoss)")
        let refLogits = try expected.floats("logits")
        let eval = GPT2Graph(model: model, batch: B, seqLen: T, mode: .logits)
        eval.setBatch(inputs: x, targets: nil)
        eval.forward()
        let logitErr = maxRelativeError(eval.logits.data, refLogits, refLogits.count)
        #expect(logitErr < 1e-4, "logits max-relative error \(logitErr)")

        model.parameters.zeroGradients()
        graph.backward()
        for e in model.parameters.layout.entries {
            let ref = try expected.floats("grad." + fixtureName(e.name))
            #expect(ref.count == e.count)
            let err = maxRelativeError(model.parameters.gradients.pointer + e.offset, ref, e.count)
            #expect(err < 1e-4, "gradient of \(e.name): max-relative error \(err)")
        }
    }

    @Test func greedyGenerationMatchesHuggingFace() throws {
        let model = try HuggingFace.load(directory: hfDir)
        let prompt = try expected.ints("generate.prompt"), ref = try expected.ints("generate.greedy")
        let out = GPT2Generator(model: model).generate(prompt: prompt, count: ref.count)
        #expect(out == ref)
    }

    @Test func kvCacheLogitsEqualFullForward() throws {
        let model = try HuggingFace.load(directory: hfDir)
        let tokens: [Int32] = [5, 17, 300, 2, 99, 400, 7, 7]
        let graph = GPT2Graph(model: model, batch: 1, seqLen: tokens.count, mode: .logits)
        graph.setBatch(inputs: tokens, targets: nil)
        graph.forward()
        let gen = GPT2Generator(model: model)
        let V = model.config.vocabSize
        for (t, tok) in tokens.enumerated() {
            gen.append(token: Int(tok))
            let err = maxRelativeError(gen.logits.pointer, graph.logits.data + t * V, V)
            #expect(err < 1e-5, "position \(t): cached decoding differs by \(err)")
        }
    }

    @Test func evalLossMatchesHuggingFace() throws {
        let model = try HuggingFace.load(directory: hfDir)
        let data = try TokenDataset(paths: [fixtures + "/tiny-gpt2/tokens.bin"], vocabSize: model.config.vocabSize)
        let order = try BatchOrder(tokenCount: data.count, batchSize: 4, seqLen: 32)
        let graph = GPT2Graph(model: model, batch: 4, seqLen: 32, mode: .evaluate)
        var total = 0.0
        for s in 0..<3 {
            order.fill(data, step: s, firstRow: 0, rows: 4, inputs: graph.inputs.pointer, targets: graph.targets.pointer)
            total += Double(graph.forward())
        }
        let ref = try expected.floats("eval.loss")[0]
        #expect(abs(Float(total / 3) - ref) / ref < 1e-5)
    }

    @Test func importExportIsBitIdentical() throws {
        let model = try HuggingFace.load(directory: hfDir)
        let dir = tmpDir("export")
        let ckpt = dir + "/model.h5"
        try ModelFile.save(model: model, step: 0, to: ckpt)
        let (reloaded, step) = try ModelFile.load(path: ckpt)
        #expect(step == 0 && reloaded.config == model.config)
        try HuggingFace.save(model: reloaded, directory: dir + "/hf")
        let original = try SafeTensorsFile(path: hfDir + "/model.safetensors")
        let exported = try SafeTensorsFile(path: dir + "/hf/model.safetensors")
        #expect(Set(original.entries.keys) == Set(exported.entries.keys))
        for name in original.entries.keys {
            #expect(try original.floats(name) == exported.floats(name), "\(name) changed in import/export")
        }
        let cfg = try HuggingFace.readConfig(directory: dir + "/hf")
        #expect(cfg.vocabSize == model.config.vocabSize && cfg.nLayers == model.config.nLayers)
    }
}

/// Recomputing block activations in backward changes memory, not results.
struct RecomputeTests {
    @Test func recomputeGivesIdenticalLossAndGradients() throws {
        var cfg = try HuggingFace.readConfig(directory: fixtures + "/tiny-gpt2/hf")
        cfg.dropRate = 0.2  // masks must be recomputed identically too
        func run(recompute: Bool) throws -> (Float, [Float], Int) {
            let loaded = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
            let model = GPT2Model(config: cfg)
            model.parameters.values.copy(from: loaded.parameters.values)
            let graph = GPT2Graph(model: model, batch: 2, seqLen: 16, mode: .train, recompute: recompute)
            for i in 0..<32 { graph.inputs.pointer[i] = Int32(i * 37 % 512); graph.targets.pointer[i] = Int32(i * 11 % 512) }
            var loss: Float = 0
            for step in 0..<2 {  // twice: buffers reused across steps
                model.parameters.zeroGradients()
                loss = graph.forward(step: step, seed: 9)
                graph.backward()
            }
            return (loss, Array(model.parameters.gradients.buffer), graph.activationBytes)
        }
        let (l0, g0, bytes0) = try run(recompute: false), (l1, g1, bytes1) = try run(recompute: true)
        // Blocks recompute exactly; the chunked output head sums wte's gradient chunk by chunk (float order).
        #expect(abs(l0 - l1) <= 1e-6 * abs(l0))
        #expect(maxRelativeError(g1, g0, g0.count) < 1e-5)
        #expect(bytes1 < bytes0)
    }
}

/// A steady-state training step reuses every buffer: parameters, gradients, activations, AdamW state (and in bf16 the
/// parameters' bf16 copy and the converted operands' scratch).
struct SteadyStateTests {
    @Test(arguments: MatmulPrecision.allCases) func trainingStepAllocatesNothing(precision: MatmulPrecision) throws {
        let cfg = try GPT2Config(vocabSize: 256, contextLength: 32, embDim: 48, nHeads: 4, nLayers: 2, dropRate: 0.1)
        let model = GPT2Model(config: cfg)
        model.initialize(seed: 1)
        let graph = GPT2Graph(model: model, batch: 2, seqLen: 16, mode: .train, precision: precision)
        for i in 0..<32 { graph.inputs.pointer[i] = Int32(i * 5 % 256); graph.targets.pointer[i] = Int32(i * 3 % 256) }
        let opt = Training.AdamW(layout: model.parameters.layout, hyper: .init())
        func step(_ s: Int) {
            model.parameters.zeroGradients()
            graph.forward(step: s, seed: 1, bf16CopyIsCurrent: s > 0)
            graph.backward()
            opt.step(params: model.parameters.values.pointer, grads: model.parameters.gradients.pointer, lr: 1e-3, t: s + 1, gradScale: 1,
                     bf16: model.parameters.bf16Pointer)
        }
        step(0)
        // (Counted per thread: other suites run concurrently in this process.)
        let buffers = FloatBuffer.allocationsOnThisThread
        #expect(buffers > 0)
        for s in 1...5 { step(s) }
        #expect(FloatBuffer.allocationsOnThisThread == buffers)
    }
}

/// The hub's files (gpt2 … gpt2-xl) name tensors without "transformer.", carry causal-mask buffers
/// (h.N.attn.bias) and sometimes an explicit lm_head.weight equal to wte: all must import by name.
struct HubFormatImportTests {
    @Test func importsUnprefixedKeysWithMaskBuffersAndTiedHead() throws {
        let src = try SafeTensorsFile(path: fixtures + "/tiny-gpt2/hf/model.safetensors")
        let dir = tmpDir("hubformat")
        var arrays: [(String, [Int], [Float])] = []
        for (name, e) in src.entries.sorted(by: { $0.key > $1.key }) {  // reversed order: lookup must be by name
            arrays.append((name.replacingOccurrences(of: "transformer.", with: ""), e.shape, try src.floats(name)))
        }
        let mask = (0..<(64 * 64)).map { Float($0 % 64 <= $0 / 64 ? 1 : 0) }
        arrays.append(("h.0.attn.bias", [1, 1, 64, 64], mask))
        arrays.append(("h.1.attn.bias", [1, 1, 64, 64], mask))
        arrays.append(("lm_head.weight", [512, 64], try src.floats("transformer.wte.weight")))
        let pointers = arrays.map { a -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: a.2.count)
            p.initialize(from: a.2, count: a.2.count)
            return p
        }
        defer { pointers.forEach { $0.deallocate() } }
        try SafeTensorsFile.write(path: dir + "/model.safetensors",
                                  tensors: zip(arrays, pointers).map { ($0.0, $0.1, UnsafePointer($1)) })
        try FileManager.default.copyItem(atPath: fixtures + "/tiny-gpt2/hf/config.json", toPath: dir + "/config.json")
        let hub = try HuggingFace.load(directory: dir), reference = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
        #expect(Array(hub.parameters.values.buffer) == Array(reference.parameters.values.buffer))

        // An lm_head that differs from wte cannot be represented: refused, not silently dropped.
        pointers.last![0] += 1
        try SafeTensorsFile.write(path: dir + "/model.safetensors",
                                  tensors: zip(arrays, pointers).map { ($0.0, $0.1, UnsafePointer($1)) })
        #expect(throws: GPT2DistError.self) { try HuggingFace.load(directory: dir) }
    }
}
