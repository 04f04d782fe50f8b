import ArgumentParser
import Foundation
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
        subcommands: [Train.self, Eval.self, Generate.self, Info.self, Bench.self, Plot.self, Prepare.self,
                      ImportHF.self, ExportHF.self, Plan.self, BenchComm.self, BenchTokenizer.self]
    )

    /// `--resume` may stand alone (newest checkpoint in --out): give it that value for the parser.
    /// `--steps -1` reaches our range checks as `--steps=-1` (the parser would take -1 for an option name).
    static func normalize(_ args: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i], next = i + 1 < args.count ? args[i + 1] : nil
            if a.hasPrefix("--"), !a.contains("="), let n = next, n.hasPrefix("-"), Double(n) != nil {
                out.append(a + "=" + n)
                i += 2
                continue
            }
            out.append(a)
            if a == "--resume" && (next == nil || next!.hasPrefix("-")) { out.append(TrainCheckpoint.newestInOut) }
            i += 1
        }
        return out
    }
}

extension ComputeOptions {
    /// Sets the thread count; a bad --threads is a one-line error.
    @discardableResult
    func applyOrExit() throws -> Int {
        do { return try apply() } catch { throw fail("\(error)") }
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
