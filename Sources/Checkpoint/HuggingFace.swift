import Common
import Foundation
import GPT2

/// Import from and export to a Hugging Face GPT-2 directory (config.json + model.safetensors).
public enum HuggingFace {
    /// Our tensor name -> the name in Hugging Face's GPT2Model state dict.
    static func hfName(_ name: String) -> String {
        switch name {
        case "wte": return "wte.weight"
        case "wpe": return "wpe.weight"
        default: return name
        }
    }

    public static func readConfig(directory: String) throws -> GPT2Config {
        let path = directory + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else { throw GPT2DistError(.fileFormat, "cannot read \(path)") }
        guard let obj = (try? JSONValue.parse(data))?.object else { throw GPT2DistError(.fileFormat, "\(path): malformed JSON") }
        func int(_ keys: String...) throws -> Int {
            for k in keys { if let v = obj[k]?.int { return v } }
            throw GPT2DistError(.fileFormat, "\(path): missing integer \(keys[0])")
        }
        if let act = obj["activation_function"]?.string, !["gelu_new", "gelu_pytorch_tanh"].contains(act) {
            throw GPT2DistError(.fileFormat, "\(path): activation_function \(act) is not GPT-2's tanh GELU (gelu_new)")
        }
        if let eps = obj["layer_norm_epsilon"]?.number, abs(eps - 1e-5) > 1e-12 {
            throw GPT2DistError(.fileFormat, "\(path): layer_norm_epsilon \(eps) differs from GPT-2's 1e-5")
        }
        if let inner = obj["n_inner"]?.int, inner != 4 * (try int("n_embd")) {
            throw GPT2DistError(.fileFormat, "\(path): n_inner \(inner) is not 4 * n_embd")
        }
        let drop = obj["resid_pdrop"]?.number ?? 0.1
        return try GPT2Config(vocabSize: int("vocab_size"), contextLength: int("n_positions", "n_ctx"),
                              embDim: int("n_embd"), nHeads: int("n_head"), nLayers: int("n_layer"),
                              dropRate: drop, qkvBias: true)
    }

    /// Reads config.json + model.safetensors into a model; tensors are found by name
    /// (with or without the "transformer." prefix), lm_head.weight must be absent or equal to wte.
    public static func load(directory: String) throws -> GPT2Model {
        let config = try readConfig(directory: directory)
        let st = try SafeTensorsFile(path: directory + "/model.safetensors")
        let model = GPT2Model(config: config)
        let p = model.parameters
        for e in p.layout.entries {
            let n = hfName(e.name)
            let key = st.entries["transformer." + n] != nil ? "transformer." + n : n
            try st.readFloats(key, shape: e.shape, into: p.values.pointer + e.offset)
        }
        if st.entries["lm_head.weight"] != nil {
            let head = try st.floats("lm_head.weight")
            let wte = p.tensor("wte")
            if head.count != wte.count || !head.withUnsafeBufferPointer({ memcmp($0.baseAddress!, wte.data, wte.count * 4) == 0 }) {
                throw GPT2DistError(.fileFormat, "\(directory): lm_head.weight differs from wte; gpt2-dist ties the output head to the token embedding")
            }
        }
        return model
    }

    public static func configJSON(_ c: GPT2Config) -> String {
        let special = min(50256, c.vocabSize - 1)
        return """
        {
          "activation_function": "gelu_new",
          "architectures": ["GPT2LMHeadModel"],
          "attn_pdrop": \(c.dropRate),
          "bos_token_id": \(special),
          "embd_pdrop": \(c.dropRate),
          "eos_token_id": \(special),
          "initializer_range": 0.02,
          "layer_norm_epsilon": 1e-05,
          "model_type": "gpt2",
          "n_ctx": \(c.contextLength),
          "n_embd": \(c.embDim),
          "n_head": \(c.nHeads),
          "n_inner": null,
          "n_layer": \(c.nLayers),
          "n_positions": \(c.contextLength),
          "resid_pdrop": \(c.dropRate),
          "scale_attn_weights": true,
          "tie_word_embeddings": true,
          "torch_dtype": "float32",
          "use_cache": true,
          "vocab_size": \(c.vocabSize)
        }

        """
    }

    /// Writes config.json + model.safetensors (keys with "transformer.", as save_pretrained does).
    /// A model without QKV bias is exported with a zero c_attn.bias, which Hugging Face GPT-2 always has.
    public static func save(model: GPT2Model, directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let c = model.config, p = model.parameters
        let zeros = [Float](repeating: 0, count: 3 * c.embDim)
        try zeros.withUnsafeBufferPointer { zb in
            var tensors: [(name: String, shape: [Int], data: UnsafePointer<Float>)] = []
            for e in p.layout.entries {
                tensors.append(("transformer." + hfName(e.name), e.shape, UnsafePointer(p.values.pointer + e.offset)))
                if !c.qkvBias && e.name.hasSuffix("attn.c_attn.weight") {
                    let bias = e.name.replacingOccurrences(of: ".weight", with: ".bias")
                    tensors.append(("transformer." + bias, [3 * c.embDim], zb.baseAddress!))
                }
            }
            try AtomicFile.write(directory + "/model.safetensors") { tmp in
                try SafeTensorsFile.write(path: tmp, tensors: tensors, metadata: ["format": "pt"])
            }
        }
        try AtomicFile.write(text: configJSON(c), to: directory + "/config.json")
    }
}
