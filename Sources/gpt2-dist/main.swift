import ArgumentParser
import Foundation
import Machine
import Training

// The OpenBLAS kernel must be chosen before the library loads: re-exec once with OPENBLAS_CORETYPE set.
Runtime.ensureOpenBLASKernel()
Console.install()
let arguments = Array(CommandLine.arguments.dropFirst())
do {
    var command = try GPT2Dist.parseAsRoot(arguments)
    try command.run()
} catch {
    // A malformed command line is one line and exit 1 like every other error (ArgumentParser would print the
    // whole usage and exit 64); --help, --version and our own exit codes pass through.
    if GPT2Dist.exitCode(for: error) == .validationFailure {
        let message = GPT2Dist.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        let command = arguments.first.map { $0.hasPrefix("-") ? "" : " " + $0 } ?? ""
        GPT2Dist.exit(withError: fail("\(message) (see gpt2-dist\(command) --help)"))
    }
    GPT2Dist.exit(withError: error)
}
