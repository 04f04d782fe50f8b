import ArgumentParser
import Checkpoint
import Distributed
import Foundation
import Machine
import Training

struct Train: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(
        abstract: "Train GPT-2 data-parallel (run under mpirun -np N, or alone as one rank).",
        usage: "gpt2-dist train --data TOKENS --out RUN_DIR [--config MODEL.json | --init CKPT | --resume [CKPT]] [options]",
        discussion: """
        The global batch (--batch-size sequences of --seq-len tokens) is split into contiguous row blocks, \
        one per rank, each run as micro-batches (gradient accumulation fills the rest): \
        batch-size = micro-batch-size x ranks x accumulation steps. \
        Step s reads the span starting at token (s mod M)*B*T of the data, M = floor((tokens-1)/(B*T)), \
        so results do not depend on the number of ranks beyond float summation order.

        Settings come from the defaults below, then (with --resume) the run's own settings stored in its \
        checkpoint, then --run-config FILE (a JSON object with these option names as keys), then flags. \
        Rank 0 writes OUT/metrics.h5, OUT/loss.svg and OUT/ckpt-STEP.h5 (+ OUT/latest).

        SIGTERM, SIGINT, SIGUSR1 or SIGUSR2: all ranks stop after the current step, a checkpoint is written, \
        exit 0. Resume with --resume (the newest complete checkpoint in --out) or --resume FILE, at any rank count.

        Example:
          mpirun -np 2 gpt2-dist train --config Configs/gpt2-small-cpu.json \\
              --data data/shakespeare --val data/shakespeare \\
              --out runs/shakespeare --steps 300
        """
    ) }

    /// Everything after `train`: parsed by `TrainOptions`' own table (layered under a run config and a resumed
    /// checkpoint's settings), so the parser and `--help` above come from the same declarations.
    @Argument(parsing: .captureForPassthrough, help: .hidden) var arguments: [String] = []

    func run() throws {
        // The arguments are ours to parse (see `arguments`), --help among them.
        if arguments.contains(where: { $0 == "--help" || $0 == "-h" }) {
            let columns = terminalColumns()
            var general = GPT2Dist.helpMessage(for: Train.self, columns: columns)
            if let options = general.range(of: "\nOPTIONS:") { general.removeSubrange(options.lowerBound...) }
            print(general.trimmingCharacters(in: .newlines) + "\n\nOPTIONS:\n" + TrainOptions.helpMessage(columns: columns)
                  + "\n  -h, --help              Show help information.")
            return
        }
        let comm = Communicator.initialize()
        do {
            let o = try TrainOptions.resolve(commandLine: arguments, storedSettings: TrainCheckpoint.storedRunConfig)
            try Runtime.applyThreads(o.threads)  // the trainer checks every other value itself (agreed across ranks)
            try Trainer(options: o, comm: comm).run()
        } catch {
            // Every rank reaches here with the agreed (or identical) error; rank 0 reports it once.
            let exit = comm.isRoot ? fail("\(error)") : ExitCode(1)
            comm.finalize()
            throw exit
        }
        comm.finalize()
    }
}

/// The terminal's width for help text (80 when output is not a terminal).
func terminalColumns() -> Int {
    var size = winsize()
    if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col >= 40 { return Int(size.ws_col) }
    return 80
}
