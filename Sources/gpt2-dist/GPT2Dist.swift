import ArgumentParser
import Foundation
import Training

struct GPT2Dist: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpt2-dist",
        abstract: "Data-parallel GPT-2 training over MPI on CPU clusters.",
        discussion: """
        Launch training with `mpirun -np N gpt2-dist train ...` (or run it alone as one rank).
        Every command prints the OpenBLAS kernel and thread count it runs with.

        Typical flow:
          gpt2-dist prepare --text corpus.txt --out data/corpus
          mpirun -np 2 gpt2-dist train --config Configs/gpt2-small-cpu.json --data data/corpus --out runs/demo
          gpt2-dist generate --checkpoint runs/demo/latest --prompt "To be, or not"
        """,
        subcommands: [Train.self, Eval.self, Generate.self, Info.self, Bench.self, Plot.self, Prepare.self,
                      ImportHF.self, ExportHF.self, Plan.self, BenchComm.self, BenchTokenizer.self]
    )

    /// `--resume` may stand alone (newest checkpoint in --out): give it the value "latest" for the parser.
    static func normalize(_ args: [String]) -> [String] {
        var out: [String] = []
        for (i, a) in args.enumerated() {
            out.append(a)
            if a == "--resume" && (i + 1 == args.count || args[i + 1].hasPrefix("-")) { out.append("latest") }
        }
        return out
    }
}

/// Options shared by commands that compute.
struct ComputeOptions: ParsableArguments {
    @Option(help: "Threads for BLAS and kernels per rank (default: cores / ranks on this node).")
    var threads: Int?

    func apply() -> Int {
        let n = threads ?? Runtime.defaultThreads(localRanks: Runtime.localRanks)
        Runtime.setThreads(max(1, n))
        return n
    }
}

/// One-line errors on stderr and a non-zero exit, the same for every command.
func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("gpt2-dist: error: \(message)\n".utf8))
    return ExitCode(1)
}

func runOrFail(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch { throw fail("\(error)") }
}
