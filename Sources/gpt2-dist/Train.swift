import ArgumentParser
import Distributed
import Foundation
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train GPT-2 data-parallel (run under mpirun -np N, or alone as one rank).",
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
              --data data/shakespeare --val data/shakespeare --out runs/shakespeare --steps 300
        """
    )

    /// Declares (for --help and the parser's checks) every option; the run itself re-reads the raw arguments
    /// so that a run config and a checkpoint's stored settings can sit beneath them.
    @OptionGroup var options: TrainOptions

    /// The arguments after `train`, as given (set by main before parsing).
    nonisolated(unsafe) static var commandLine: [String] = []

    func run() throws {
        let comm = Communicator.initialize()
        do {
            let o = try TrainOptions.resolve(commandLine: Train.commandLine, storedSettings: TrainCheckpoint.storedRunConfig)
            try o.compute.apply()  // the trainer checks every other value itself (agreed across ranks)
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
