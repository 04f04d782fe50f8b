import Foundation

/// SIGTERM/SIGINT (cluster preemption, Ctrl-C) only set a flag; the training loop agrees across ranks to
/// stop after the current step, writes a checkpoint and exits 0.
public enum StopSignal {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0
    nonisolated(unsafe) static var signalNumber: sig_atomic_t = 0

    public static func install() {
        let handler: @convention(c) (Int32) -> Void = { sig in
            StopSignal.flag = 1
            StopSignal.signalNumber = sig
        }
        signal(SIGTERM, handler)
        signal(SIGINT, handler)
    }

    public static var requested: Bool { flag != 0 }
    public static var name: String { signalNumber == SIGINT ? "SIGINT" : "SIGTERM" }
}
