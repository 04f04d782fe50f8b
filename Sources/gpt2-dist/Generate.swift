import ArgumentParser
import Autograd
import Checkpoint
import Common
import Foundation
import GPT2
import Machine
import Prepare
import Tokenizer
import Training

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt with a checkpoint (KV-cached decoding).",
        discussion: """
        Greedy at --temperature 0, else sampled from softmax(logits / temperature) over the --top-k most \
        likely tokens (0 = all), reproducibly for a --seed. Text prompts use GPT-2's BPE (--vocab).
          gpt2-dist generate --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 100
          gpt2-dist generate --checkpoint gpt2.h5 --prompt-tokens 6109,3626,6100,345 --temperature 0 --tokens
        """
    )
    @Option(help: "Checkpoint file, `latest` pointer, or run directory.") var checkpoint: String
    @Option(help: "Prompt text (encoded with GPT-2's BPE).") var prompt: String?
    @Option(help: "Prompt as comma-separated token ids.") var promptTokens: String?
    @Option(help: "Tokens to generate.") var maxNewTokens = 50
    @Option(help: "0 = greedy.") var temperature: Float = 0.8
    @Option(help: "Sample among the K most likely tokens (0 = all).") var topK = 40
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Flag(help: "Print token ids instead of text.") var tokens = false
    @Option(help: "GPT-2 vocabulary: gpt2.tiktoken, or a directory with it (or encoder.json + vocab.bpe).")
    var vocab = "data/gpt2"
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        _ = try compute.applyOrExit()
        try runOrFail {
            let (model, _) = try ModelFile.load(path: TrainCheckpoint.resolve(checkpoint))
            let cfg = model.config
            var tokenizer: GPT2Tokenizer?
            func tok() throws -> GPT2Tokenizer {
                if tokenizer == nil { tokenizer = try loadTokenizer(vocab) }
                return tokenizer!
            }
            var ids: [Int]
            switch (prompt, promptTokens) {
            case (let text?, nil):
                ids = try tok().encode(text).map(Int.init)
            case (nil, let list?):
                ids = try list.split(separator: ",").map {
                    guard let v = Int($0.trimmingCharacters(in: .whitespaces)) else { throw GPT2DistError(.usage, "--prompt-tokens: \"\($0)\" is not an integer") }
                    return v
                }
            default:
                throw GPT2DistError(.usage, "give exactly one of --prompt or --prompt-tokens")
            }
            guard !ids.isEmpty else {
                throw GPT2DistError(.usage, "the prompt is empty (give some text, or --prompt-tokens \(GPT2Tokenizer.endOfText) for an unconditional sample)")
            }
            if let bad = ids.first(where: { $0 < 0 || $0 >= cfg.vocabSize }) {
                throw GPT2DistError(.usage, "prompt token id \(bad) is out of range for vocab_size \(cfg.vocabSize)")
            }
            guard maxNewTokens >= 0 else { throw GPT2DistError(.usage, "--max-new-tokens must be 0 or more, got \(maxNewTokens)") }
            guard temperature.isFinite, temperature >= 0 else { throw GPT2DistError(.usage, "--temperature must be a finite number >= 0, got \(temperature)") }
            guard topK >= 0 else { throw GPT2DistError(.usage, "--top-k must be 0 or more, got \(topK)") }
            let gen = GPT2Generator(model: model)
            let t0 = Runtime.now()
            let out = gen.generate(prompt: ids, count: maxNewTokens, temperature: temperature, topK: topK, seed: seed)
            let dt = Runtime.now() - t0
            if tokens {
                print(out.map(String.init).joined(separator: ","))
            } else if cfg.vocabSize <= GPT2Tokenizer.vocabularySize, let t = try? tok() {
                print(try t.decode((ids + out).map { Int32($0) }))
            } else {
                print((ids + out).map(String.init).joined(separator: ","))
            }
            Console.error(String(format: "[%d tokens in %.2f s, %.1f tok/s; %@]", out.count, dt,
                                 Double(out.count) / max(dt, 1e-9), Runtime.blasDescription))
        }
    }
}
