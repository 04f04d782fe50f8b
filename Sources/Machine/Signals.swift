import Foundation

/// SIGTERM/SIGINT (cluster preemption, Ctrl-C) and SIGUSR1/SIGUSR2 (which mpirun forwards to the ranks at
/// once, unlike SIGTERM) only set a flag; the training loop agrees across ranks to stop after the current step,
/// writes a checkpoint and exits 0.
public enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    nonisolated(unsafe) public static var signalNumber: sig_atomic_t = 0

    public static func install() {
        let handler: @convention(c) (Int32) -> Void = { sig in
            StopSignal.flag = 1
            StopSignal.signalNumber = sig
        }
        for sig in [SIGTERM, SIGINT, SIGUSR1, SIGUSR2] { signal(sig, handler) }
    }

    public static var requested: Bool { flag != 0 }
    public static var name: String { describe(signalNumber) }

    public static func describe(_ sig: Int32) -> String {
        switch sig {
        case SIGINT: return "SIGINT"
        case SIGUSR1: return "SIGUSR1"
        case SIGUSR2: return "SIGUSR2"
        default: return "SIGTERM"
        }
    }
}
