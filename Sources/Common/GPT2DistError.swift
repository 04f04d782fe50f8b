/// Every error gpt2-dist reports to a person: one line that says what is wrong and, where it helps, what to do.
/// `kind` says which part of the system refused; the message is what the CLI prints after "gpt2-dist: error:".
public struct GPT2DistError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// A model config (its keys and values).
        case config
        /// Token shards, datasets and their manifests.
        case data
        /// A file gpt2-dist reads or writes (HDF5, safetensors, status): damaged, foreign or unwritable.
        case fileFormat
        /// A setting of a command (an option, a run config).
        case usage
        /// A training run (its inputs, its state, the ranks' agreement).
        case training
        /// Tokenizing a corpus (`prepare`).
        case preparation
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
