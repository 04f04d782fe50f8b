import ArgumentParser
import Foundation
import Machine
import Training

struct GPT2Dist: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpt2-dist",
        abstract: "Data-parallel GPT-2 training over MPI on CPU clusters.",
        discussion: """
        Launch training with `mpirun -np N gpt2-dist train ...` (or run it alone as one rank). \
        Every command prints the OpenBLAS kernel and thread count it runs with.

        Typical flow:
          gpt2-dist prepare --text corpus.txt --out data/corpus
          mpirun -np 2 gpt2-dist train --config Configs/gpt2-small-cpu.json --data data/corpus --out runs/demo
          gpt2-dist generate --checkpoint runs/demo/latest --prompt "To be, or not"
        """,
        subcommands: [Train.self, Eval.self, Generate.self, Info.self, Bench.self, Plot.self, PrepareCommand.self, SweepCommand.self,
                      ImportHF.self, ExportHF.self, Plan.self, Metrics.self, Status.self, BenchComm.self, BenchTokenizer.self]
    )
}

/// Options shared by every command that computes.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Threads for BLAS and kernels per rank (default: cores / ranks on this node).")
    var threads: Int?
}

extension ComputeOptions {
    /// Sets the thread count; a bad --threads is a one-line error.
    @discardableResult
    func applyOrExit() throws -> Int {
        do { return try Runtime.applyThreads(threads) } catch { throw fail("\(error)") }
    }
}

/// One-line errors on stderr and a non-zero exit, the same for every command.
func fail(_ message: String) -> ExitCode {
    Console.error("gpt2-dist: error: \(message)")
    return ExitCode(1)
}

func runOrFail(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch { throw fail("\(error)") }
}
