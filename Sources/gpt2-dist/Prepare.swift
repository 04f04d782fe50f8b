import ArgumentParser
import Foundation

struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tokenize text files into llm.c .bin shards (train_*.bin, val_*.bin).")
    func run() throws { throw fail("prepare is not available in this build yet") }
}
