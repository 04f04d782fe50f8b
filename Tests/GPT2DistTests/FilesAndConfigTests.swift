import Autograd
import Checkpoint
import Data
import Foundation
import GPT2
import Testing
import Tokenizer
import Training
import Common

struct ConfigTests {
    func parse(_ json: String) throws -> GPT2Config { try GPT2Config.parse(json: Data(json.utf8), source: "c.json") }
    let good = #""vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "drop_rate": 0.1"#

    @Test func seedParameterCounts() throws {
        let raschka = try parse("{\(good), \"qkv_bias\": false}")
        #expect(raschka.parameterCount == 124_412_160)
        #expect(raschka.untiedParameterCount == 163_009_536)
        #expect(try parse("{\(good), \"qkv_bias\": true}").parameterCount == 124_439_808)
        for (file, layers, width, heads) in [("gpt2-124M", 12, 768, 12), ("gpt2-355M", 24, 1024, 16),
                                             ("gpt2-774M", 36, 1280, 20), ("gpt2-1558M", 48, 1600, 25)] {
            let c = try GPT2Config.load(path: repoRoot + "/Configs/\(file).json")
            #expect(c.nLayers == layers && c.embDim == width && c.nHeads == heads && c.contextLength == 1024 && c.vocabSize == 50257)
        }
        #expect(try GPT2Config.load(path: repoRoot + "/Configs/gpt2-1558M.json").parameterCount == 1_557_611_200)
    }

    @Test func invalidConfigsNameTheKey() {
        let cases: [(String, String)] = [
            ("{\(good), \"qkv_bias\": false, \"n_embd\": 5}", "n_embd"),
            (#"{"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "drop_rate": 0.1, "qkv_bias": false}"#, "n_layers"),
            (#"{"vocab_size": 50257, "context_length": 1024, "emb_dim": 770, "n_heads": 12, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": false}"#, "n_heads"),
            (#"{"vocab_size": 0, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": false}"#, "vocab_size"),
            (#"{"vocab_size": 50257, "context_length": -1, "emb_dim": 768, "n_heads": 12, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": false}"#, "context_length"),
            (#"{"vocab_size": 50257, "context_length": 1024, "emb_dim": 768.5, "n_heads": 12, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": false}"#, "emb_dim"),
            (#"{"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 2, "drop_rate": 1.5, "qkv_bias": false}"#, "drop_rate"),
            (#"{"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": 1}"#, "qkv_bias"),
            (#"{"vocab_size": 50257, "context_length": 1024,"#, "malformed JSON"),
            ("[1, 2]", "object"),
        ]
        for (json, needle) in cases {
            do {
                _ = try parse(json)
                Issue.record("accepted: \(json)")
            } catch {
                #expect("\(error)".contains(needle), "error for \(json) does not name \(needle): \(error)")
                #expect("\(error)".hasPrefix("c.json"), "error does not name the file: \(error)")
            }
        }
    }

    @Test func initialisationIsGPT2sAndDeterministic() throws {
        let cfg = try GPT2Config(vocabSize: 300, contextLength: 32, embDim: 48, nHeads: 4, nLayers: 3)
        let a = GPT2Model(config: cfg), b = GPT2Model(config: cfg), c = GPT2Model(config: cfg)
        a.initialize(seed: 7); b.initialize(seed: 7); c.initialize(seed: 8)
        #expect(Array(a.parameters.values.buffer) == Array(b.parameters.values.buffer))
        #expect(Array(a.parameters.values.buffer) != Array(c.parameters.values.buffer))
        func std(_ name: String) -> Double {
            let t = a.parameters.tensor(name)
            let v = Array(t.values).map(Double.init)
            let m = v.reduce(0, +) / Double(v.count)
            return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
        }
        #expect(abs(std("wte") - 0.02) < 0.002)
        #expect(abs(std("h.0.mlp.c_fc.weight") - 0.02) < 0.002)
        #expect(abs(std("h.1.attn.c_proj.weight") - 0.02 / 6.0.squareRoot()) < 0.001)
        #expect(a.parameters.tensor("h.2.ln_1.weight").values.allSatisfy { $0 == 1 })
        #expect(a.parameters.tensor("h.2.mlp.c_fc.bias").values.allSatisfy { $0 == 0 })
        #expect(a.parameters.tensor("ln_f.bias").values.allSatisfy { $0 == 0 })
    }
}

struct FileFormatTests {
    @Test func safetensorsRejectsBadFiles() throws {
        let dir = tmpDir("safetensors")
        let good = dir + "/good.safetensors"
        let values: [Float] = [1, 2, 3, 4, 5, 6]
        try values.withUnsafeBufferPointer {
            try SafeTensorsFile.write(path: good, tensors: [("x", [2, 3], $0.baseAddress!)])
        }
        let st = try SafeTensorsFile(path: good)
        #expect(try st.floats("x") == values)
        var out = [Float](repeating: 0, count: 6)
        #expect(throws: GPT2DistError.self) { try st.readFloats("x", shape: [3, 2], into: &out) }
        #expect(throws: GPT2DistError.self) { try st.readFloats("y", shape: [2, 3], into: &out) }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        func expectRejected(_ data: Data, _ needle: String) throws {
            let p = dir + "/bad.safetensors"
            try data.write(to: URL(fileURLWithPath: p))
            do { _ = try SafeTensorsFile(path: p); Issue.record("accepted a bad file (\(needle))") } catch {
                #expect("\(error)".contains(needle), "\(error)")
            }
        }
        try expectRejected(bytes.prefix(bytes.count - 4), "truncated")
        try expectRejected(Data([1, 2, 3]), "too short")
        var huge = bytes
        huge.replaceSubrange(0..<8, with: [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
        try expectRejected(huge, "header length")
        let header = #"{"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]"#  // unterminated JSON
        var broken = Data(count: 8)
        broken.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(header.utf8.count).littleEndian, as: UInt64.self) }
        try expectRejected(broken + Data(header.utf8) + Data(count: 24), "not JSON")
        let intHeader = #"{"x":{"dtype":"I32","shape":[2,3],"data_offsets":[0,24]}}"#
        var ints = Data(count: 8)
        ints.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(intHeader.utf8.count).littleEndian, as: UInt64.self) }
        try (ints + Data(intHeader.utf8) + Data(count: 24)).write(to: URL(fileURLWithPath: dir + "/int.safetensors"))
        let intFile = try SafeTensorsFile(path: dir + "/int.safetensors")
        #expect(throws: GPT2DistError.self) { try intFile.readFloats("x", shape: [2, 3], into: &out) }
    }

    @Test func corruptOrTruncatedCheckpointIsRejected() throws {
        let dir = tmpDir("ckpt")
        let model = try HuggingFace.load(directory: fixtures + "/tiny-gpt2/hf")
        try ModelFile.save(model: model, step: 3, to: dir + "/m.h5")
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/m.h5"))
        try data.prefix(data.count / 3).write(to: URL(fileURLWithPath: dir + "/trunc.h5"))
        #expect(throws: (any Error).self) { try ModelFile.load(path: dir + "/trunc.h5") }
        try Data("not hdf5 at all".utf8).write(to: URL(fileURLWithPath: dir + "/junk.h5"))
        #expect(throws: (any Error).self) { try ModelFile.load(path: dir + "/junk.h5") }
        let (loaded, step) = try ModelFile.load(path: dir + "/m.h5")
        #expect(step == 3 && Array(loaded.parameters.values.buffer) == Array(model.parameters.values.buffer))
        // Values that cannot come from training (a damaged file) are refused, naming the tensor.
        model.parameters.tensor("h.1.mlp.c_fc.bias").data[3] = .nan
        try ModelFile.save(model: model, step: 3, to: dir + "/nan.h5")
        do { _ = try ModelFile.load(path: dir + "/nan.h5"); Issue.record("loaded a NaN checkpoint") } catch {
            #expect("\(error)".contains("h.1.mlp.c_fc.bias") && "\(error)".contains("non-finite"), "\(error)")
        }
    }

    @Test func tokenShardsRoundTripAndSpanMultipleFiles() throws {
        let dir = tmpDir("shards")
        try TokenShardFormat.write(tokens: (0..<10).map { UInt16($0) }, to: dir + "/train_000000.bin")
        try TokenShardFormat.write(tokens: (10..<25).map { UInt16($0) }, to: dir + "/train_000001.bin")
        let ds = try TokenDataset(spec: dir, vocabSize: 100)
        #expect(ds.count == 25 && ds.tokens() == (0..<25).map { Int32($0) })
        let order = try BatchOrder(tokenCount: ds.count, batchSize: 2, seqLen: 4)
        #expect(order.spans == 3)
        var x = [Int32](repeating: 0, count: 8), y = x
        order.fill(ds, step: 4, firstRow: 0, rows: 2, inputs: &x, targets: &y)  // step 4 -> span 1
        #expect(x == (8..<16).map { Int32($0) } && y == (9..<17).map { Int32($0) })
        #expect(throws: GPT2DistError.self) { try TokenDataset(spec: dir, vocabSize: 20) }
        let shuffled = try BatchOrder(tokenCount: 1000, batchSize: 2, seqLen: 4, shuffleSeed: 3)
        let firstEpoch = (0..<shuffled.spans).map { shuffled.span(step: $0) }
        #expect(Set(firstEpoch).count == shuffled.spans && firstEpoch != Array(0..<shuffled.spans))
    }
}
