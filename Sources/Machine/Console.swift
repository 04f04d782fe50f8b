import Foundation

/// Progress and error lines that never block the caller. Once mpirun has been signalled it stops reading its
/// ranks' output; a rank that writes into the full pipe would block in write() and never reach its checkpoint.
/// So lines go to a bounded queue that a writer thread drains; when the reader is gone and the queue is full,
/// new lines are dropped instead of stalling training.
public enum Console {
    static let out = LineWriter(fd: STDOUT_FILENO)
    static let err = LineWriter(fd: STDERR_FILENO)

    /// A progress line on stdout.
    public static func line(_ text: String) { out.write(text + "\n") }

    /// An error or warning line on stderr.
    public static func error(_ text: String) { err.write(text + "\n") }

    /// Waits up to `timeout` seconds for queued lines to be written (at exit; a gone reader must not hold it up).
    public static func flush(timeout: Double = 0.5) {
        let deadline = Date().addingTimeInterval(timeout)
        for w in [out, err] { w.waitUntilWritten(deadline: deadline) }
    }

    /// Called once at startup: a closed pipe must give EPIPE, not kill the process; flush at exit.
    public static func install() {
        signal(SIGPIPE, SIG_IGN)
        atexit { Console.flush() }
    }
}

final class LineWriter: @unchecked Sendable {
    let fd: Int32
    static let capacity = 1 << 20  // bytes queued before lines are dropped
    private let lock = NSCondition()
    private var queue: [UInt8] = []
    private var writing = false
    private var started = false

    init(fd: Int32) { self.fd = fd }

    func write(_ text: String) {
        let bytes = Array(text.utf8)
        lock.lock()
        defer { lock.unlock() }
        if !started {
            started = true
            let t = Thread { [unowned self] in self.serve() }
            t.name = "gpt2-dist-console"
            t.start()
        }
        guard queue.count + bytes.count <= Self.capacity else { return }  // nobody is reading: drop the line
        queue += bytes
        lock.broadcast()
    }

    private func serve() {
        while true {
            lock.lock()
            while queue.isEmpty { lock.wait() }
            let chunk = queue
            queue.removeAll(keepingCapacity: true)
            writing = true
            lock.unlock()
            chunk.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n > 0 { offset += n } else if n < 0 && errno == EINTR { continue } else { break }  // EPIPE: reader gone
                }
            }
            lock.lock()
            writing = false
            lock.broadcast()
            lock.unlock()
        }
    }

    func waitUntilWritten(deadline: Date) {
        lock.lock()
        defer { lock.unlock() }
        while started && (!queue.isEmpty || writing) {
            if !lock.wait(until: deadline) { return }
        }
    }
}
