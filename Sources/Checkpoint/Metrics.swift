import Foundation

/// runs/NAME/metrics.h5: extendable 1-D float64 series, appended every step. The file is opened, appended
/// and closed each time, so a crash or kill loses nothing already logged; a resumed run appends.
public final class MetricsLog {
    /// Per step: the loss, the schedule, the speed, and where the time went (communication thread busy, compute
    /// waiting for communication, the optimizer, reading the batch; milliseconds; mfu as a fraction).
    public static let trainSeries = ["step", "train_loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step",
                                     "comm_ms", "exposed_ms", "opt_ms", "data_ms", "mfu"]
    public static let valSeries = ["val_step", "val_loss"]
    public let path: String

    public init(path: String) { self.path = path }

    /// Opens the file for writing and makes sure every series exists.
    func openForWriting() throws -> HDF5File {
        let f = FileManager.default.fileExists(atPath: path) ? try HDF5File.open(path, writable: true) : try HDF5File.create(path)
        // A file from an earlier version lacks the newer series: start them as NaN for the rows already there, so
        // every train series keeps one row per logged step.
        let rows = f.exists("step") ? try f.length("step") : 0
        for s in Self.trainSeries + Self.valSeries where !f.exists(s) {
            try f.createSeries(s)
            if Self.trainSeries.contains(s) { for i in 0..<rows { try f.setLast(s, at: i, .nan) } }
        }
        if !f.hasAttribute("/", "format") { try f.setAttribute("/", "format", string: "gpt2-dist metrics") }
        return f
    }

    /// Opens the run's metrics for appending. A file that is busy (a reader holds HDF5's lock) is left alone and
    /// written when it is free. One that HDF5 cannot read even without the lock (a crash in the middle of a
    /// write) is kept under another name, never deleted, and a new file is started.
    public static func openOrCreate(path: String, log: (String) -> Void) throws -> MetricsLog {
        let m = MetricsLog(path: path)
        do {
            try m.openForWriting().closeChecked()
        } catch where FileManager.default.fileExists(atPath: path) {
            if let readable = try? HDF5File.open(path, locking: false) {
                readable.close()
                log("  warning: \(path) is busy (\(error)); rows are kept and written once it is free")
                return m
            }
            var aside = path + ".unreadable"
            var k = 1
            while FileManager.default.fileExists(atPath: aside) { k += 1; aside = path + ".unreadable-\(k)" }
            try FileManager.default.moveItem(atPath: path, toPath: aside)
            log("  warning: \(path) could not be opened (\(error)); kept it as \(aside) and started a new one")
            try m.openForWriting().closeChecked()
        }
        return m
    }

    private var pending: [[String: Double]] = []
    public var pendingRows: Int { pending.count }

    /// Appends a row. If the file cannot be opened right now (another program holds HDF5's lock on it), the row
    /// is kept and written with the next one: a busy metrics file never stops training. Returns a warning then.
    /// Each row goes at one index in all its series (the shortest one's length), so a row that failed halfway
    /// is rewritten whole and the series stay aligned.
    @discardableResult
    public func append(_ values: [String: Double]) -> String? {
        pending.append(values)
        do {
            let f = try openForWriting()
            defer { f.close() }
            while let row = pending.first {
                // Series of their own steps (train --task's eval_step, eval_<task>_acc, ...) start when first written.
                for k in row.keys where !f.exists(k) { try f.createSeries(k) }
                let index = try row.keys.map { try f.length($0) }.min() ?? 0
                for (k, v) in row.sorted(by: { $0.key < $1.key }) { try f.setLast(k, at: index, v) }
                pending.removeFirst()
            }
            try f.closeChecked()
            return nil
        } catch {
            return "\(error); \(pending.count) row(s) kept for the next write"
        }
    }

    /// A run resumed after a crash logs again the steps after its checkpoint: the last value logged for each step,
    /// in step order, is the run's history.
    public static func lastPerStep(_ steps: [Double], _ values: [Double]) -> (steps: [Double], values: [Double]) {
        var byStep: [Double: Double] = [:]
        for (x, y) in zip(steps, values) { byStep[x] = y }
        let keys = byStep.keys.sorted()
        return (keys, keys.map { byStep[$0]! })
    }

    /// The run's history as CSV: one row per step (the last logged for that step), a column per series of `series`
    /// (its first name is the step column); empty cells where a value is missing (NaN).
    public static func csv(path: String, series: [String]) throws -> String {
        let m = try read(path: path)
        let stepName = series[0], steps = m[stepName] ?? []
        var rowOfStep: [Double: Int] = [:]
        for (i, step) in steps.enumerated() { rowOfStep[step] = i }
        var lines = [series.joined(separator: ",")]
        for step in rowOfStep.keys.sorted() {
            let i = rowOfStep[step]!
            lines.append(series.map { name -> String in
                guard let column = m[name], i < column.count, column[i].isFinite else { return "" }
                let v = column[i]
                return v.rounded() == v && abs(v) < 1e15 ? String(Int(v)) : String(v)
            }.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func read(path: String) throws -> [String: [Double]] {
        let f = try HDF5File.open(path, locking: false)
        defer { f.close() }
        var out: [String: [Double]] = [:]
        // Every series: the train and validation ones, and those a run adds (train --task's eval_*).
        for s in try f.rootNames() { out[s] = try f.readDoubles(s) }
        return out
    }
}
