import Foundation

/// Errors from loading a GPT-2 vocabulary or decoding token ids. Each `description` is one line.
public enum TokenizerError: Error, CustomStringConvertible, LocalizedError, Sendable, Equatable {
    /// A vocabulary file could not be read.
    case cannotRead(path: String, reason: String)
    /// A line of a vocabulary file is malformed (`line` is 1-based).
    case malformedLine(path: String, line: Int, reason: String)
    /// A vocabulary file parsed but is not GPT-2's vocabulary (wrong size, duplicate or missing tokens, ...).
    case invalidVocabulary(path: String, reason: String)
    /// `decode` was given an id outside 0..<50257.
    case invalidTokenID(Int)

    public var description: String {
        switch self {
        case let .cannotRead(path, reason):
            return "cannot read GPT-2 vocabulary file \(path): \(reason)"
        case let .malformedLine(path, line, reason):
            return "malformed GPT-2 vocabulary file \(path), line \(line): \(reason)"
        case let .invalidVocabulary(path, reason):
            return "invalid GPT-2 vocabulary \(path): \(reason)"
        case let .invalidTokenID(id):
            return "token id \(id) is out of range: GPT-2 token ids are 0..<\(GPT2Tokenizer.vocabularySize)"
        }
    }

    public var errorDescription: String? { description }
}
