import Checkpoint
import Common
import Data
import Distributed
import Foundation
import Machine
import Planning
import Tasks
import Tokenizer

/// `gpt2-dist sweep report DIR`: each finished point's final validation loss on the whole validation split (and its
/// benchmark accuracy when the sweep has a task), Chinchilla approach 2 over them (`ScalingLaw`), and the files:
/// DIR/sweep.csv, DIR/isoflop.svg, DIR/law.svg.
public struct SweepReport {
    /// One point of the grid, finished or not.
    public struct Row {
        public let point: Sweep.Point
        /// Final validation loss and the task's acc and acc_norm (nil: unfinished, or no task).
        public var valLoss: Double?, acc: Double?, accNorm: Double?
        /// Seconds of its training steps (the sum of metrics.h5's ms_per_step), and sweep plan's prediction of them
        /// (DIR/plan.csv, when `sweep plan --csv` wrote one there).
        public var trainSeconds: Double?, predictedSeconds: Double?
        /// Why it is left out of the fit: "not started", "running at step 40 of 120", ...
        public var unfinished: String?
    }

    public let directory: String
    public let sweep: Sweep
    public var rows: [Row]
    public let fit: ScalingLaw.Fit?

    /// A point's final evaluation, kept in its run directory so a second report does not evaluate again.
    struct FinalEvaluation: Codable, Equatable {
        var checkpoint: String, valLoss: Double, valTokens: Int
        var task: String?, taskLimit: Int?, acc: Double?, accNorm: Double?, taskItems: Int?
        static let fileName = "final_eval.json"
    }

    /// The benchmark scored at each point: the sweep's, or one the report was asked for.
    public let task: String?, taskLimit: Int?

    /// Evaluates what needs evaluating (ranks of `comm` split each evaluation) and fits. `task` and `taskLimit`:
    /// a benchmark to score instead of the sweep's own (nil: the sweep's); `taskFile` and `vocab`: where the task and
    /// the GPT-2 vocabulary are.
    public init(directory: String, task: String? = nil, taskLimit: Int? = nil, taskFile: String?, vocab: String, comm: Communicator,
                say: (String) -> Void) throws {
        self.directory = directory
        let record = directory + "/" + Sweep.recordName
        guard FileManager.default.fileExists(atPath: record) else {
            throw GPT2DistError(.usage, "\(directory) has no \(Sweep.recordName): not a directory of `gpt2-dist sweep run`")
        }
        sweep = try Sweep.load(path: record)
        self.task = task ?? sweep.task
        self.taskLimit = task == nil ? sweep.taskLimit : taskLimit
        if let n = self.taskLimit, n <= 0 { throw GPT2DistError(.usage, "--task-limit must be a positive integer, got \(n)") }
        let taskName = self.task, limit = self.taskLimit
        let benchmark = try taskName.map(ChoiceTask.named)
        try benchmark?.requireGPT2Vocabulary(sweep.base.vocabSize, model: "the sweep's models")
        guard let valSpec = sweep.val else {
            throw GPT2DistError(.config, "\(record): the sweep has no \"val\": report fits validation losses")
        }
        let predicted = FileManager.default.fileExists(atPath: directory + "/plan.csv")
            ? try SweepPrediction.readSeconds(csv: directory + "/plan.csv") : [:]
        var val: TokenDataset?
        var items: [ChoiceItem]?
        rows = []
        for p in try sweep.points() {
            let dir = directory + "/" + p.name
            var row = Row(point: p, predictedSeconds: predicted[p.name])
            let status = try? RunStatus.read(runDirectory: dir)
            guard let status, status.state == .finished, status.step >= p.steps, let checkpoint = status.checkpoint else {
                row.unfinished = status.map { "\($0.state.rawValue) at step \($0.step) of \(p.steps)" } ?? "not started"
                rows.append(row)
                continue
            }
            if let metrics = try? MetricsLog.read(path: dir + "/metrics.h5") {
                row.trainSeconds = MetricsLog.lastPerStep(metrics["step"] ?? [], metrics["ms_per_step"] ?? []).values
                    .filter(\.isFinite).reduce(0, +) / 1000
            }
            let cachePath = dir + "/" + FinalEvaluation.fileName
            var result = (try? Data(contentsOf: URL(fileURLWithPath: cachePath))).flatMap { try? Self.decoder.decode(FinalEvaluation.self, from: $0) }
            if result?.checkpoint != checkpoint || result?.task != taskName || (taskName != nil && result?.taskLimit != limit) { result = nil }
            if result == nil {
                let evaluation = try Evaluation(checkpoint: dir + "/" + checkpoint)
                if val == nil { val = try TokenDataset(spec: valSpec, vocabSize: sweep.base.vocabSize, preferring: "val") }
                let started = Runtime.now()
                let loss = try evaluation.run(tokens: val!, batchSize: sweep.batchSize, seqLen: sweep.seqLen, batches: 0, baselines: nil, comm: comm)
                var r = FinalEvaluation(checkpoint: checkpoint, valLoss: loss.loss, valTokens: loss.batches * sweep.batchSize * sweep.seqLen)
                if let benchmark {
                    if items == nil {
                        items = try benchmark.load(file: taskFile, vocabulary: vocab, limit: limit)
                    }
                    let scored = ChoiceScorer(model: evaluation.model, rows: sweep.batchSize).score(items!, comm: comm)
                    r.task = benchmark.rawValue; r.taskLimit = limit; r.acc = scored.acc; r.accNorm = scored.accNorm; r.taskItems = scored.items
                }
                if comm.isRoot { try AtomicFile.write(text: String(decoding: try Self.encoder.encode(r), as: UTF8.self) + "\n", to: cachePath) }
                say(String(format: "sweep report: %@ evaluated: val loss %.4f over %d tokens%@ (%.1f s)", p.name, r.valLoss, r.valTokens,
                           r.accNorm.map { String(format: ", %@ acc_norm %.4f", r.task!, $0) } ?? "", Runtime.now() - started))
                result = r
            }
            row.valLoss = result!.valLoss; row.acc = result!.acc; row.accNorm = result!.accNorm
            rows.append(row)
        }
        let results = rows
        fit = ScalingLaw.fit(results.compactMap { r in
            r.valLoss.map { ScalingLaw.Point(budget: r.point.budget, parameters: Double(r.point.parameters), loss: $0) }
        })
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return e
    }()
    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }()

    public var finished: [Row] { rows.filter { $0.unfinished == nil } }

    /// One line per point, unfinished ones with empty results.
    public var csv: String {
        func f(_ v: Double?, _ format: String = "%.6g") -> String { v.map { String(format: format, $0) } ?? "" }
        let header = "name,budget_flops,depth,width,heads,parameters,tokens,steps,lr,val_loss,\(task ?? "task")_acc,"
            + "\(task ?? "task")_acc_norm,train_seconds,predicted_seconds,state"
        return ([header] + rows.map { r in
            let p = r.point
            return [p.name, String(format: "%.6g", p.budget), String(p.depth), String(p.config.embDim), String(p.config.nHeads),
                    String(p.parameters), String(p.tokens), String(p.steps), String(format: "%.6g", p.lr), f(r.valLoss), f(r.acc),
                    f(r.accNorm), f(r.trainSeconds, "%.1f"), f(r.predictedSeconds, "%.1f"), r.unfinished ?? "finished"].joined(separator: ",")
        }).joined(separator: "\n") + "\n"
    }

    /// The table and the fit, as printed.
    public var text: String {
        var s = "sweep \(directory): \(finished.count) of \(rows.count) points finished; validation loss over the whole split\n"
        let taskColumn = task.map { " \($0)_acc_norm" } ?? ""
        s += "  run            params      tokens   steps   val loss\(taskColumn)   trained  predicted\n"
        for r in rows {
            let p = r.point
            let measured = r.trainSeconds.map(Format.duration) ?? "", predicted = r.predictedSeconds.map(Format.duration) ?? ""
            let result = r.valLoss.map { String(format: "%9.4f", $0) } ?? "        -"
            let acc = task == nil ? "" : Format.column(r.accNorm.map { String(format: "%.4f", $0) } ?? "-", taskColumn.count)
            s += "  " + Format.column(p.name, 13, left: true) + " " + Format.column(Format.si(Double(p.parameters)), 7)
                + String(format: "  %10d  %6d  ", p.tokens, p.steps) + result + acc + "  " + Format.column(measured, 8) + "  "
                + Format.column(predicted, 9) + (r.unfinished.map { "  (\($0))" } ?? "") + "\n"
        }
        guard let fit else {
            return s + "no fit: it needs at least two budgets with three finished sizes each and a minimum between them\n"
        }
        s += "IsoFLOP profiles (parabola of loss in ln N):\n"
        var extrapolated = 0
        for pr in fit.profiles {
            if let n = pr.optimalParameters, let l = pr.optimalLoss {
                let sizes = finished.filter { $0.point.budget == pr.budget }.map { Double($0.point.parameters) }
                let outside = n < sizes.min()! || n > sizes.max()!
                if outside { extrapolated += 1 }
                s += String(format: "  C = %@ FLOPs: N_opt %@, D_opt %@ tokens, L(N_opt) %.4f%@\n", Format.si(pr.budget, spacing: pr.budget), Format.si(n),
                            Format.si(pr.budget / (6 * n)), l, outside ? "  (outside the sizes run: extrapolated)" : "")
            } else {
                s += String(format: "  C = %@ FLOPs: no minimum (the parabola opens downwards: the depths do not bracket the optimum)\n",
                            Format.si(pr.budget, spacing: pr.budget))
            }
        }
        s += String(format: "N_opt ∝ C^%.3f  (95%% bootstrap interval %.3f to %.3f)\n", fit.a, fit.aInterval.lowerBound, fit.aInterval.upperBound)
        s += String(format: "D_opt ∝ C^%.3f  (95%% bootstrap interval %.3f to %.3f)\n", fit.b, fit.bInterval.lowerBound, fit.bInterval.upperBound)
        if extrapolated > 0 {
            s += "warning: \(extrapolated) of \(fit.profiles.count) minima lie outside the sizes run; the sweep does not bracket the optimum "
                + "there, and the exponents rest on extrapolation (add depths on that side, or move the budgets)\n"
        }
        s += "(Chinchilla's approach 2 found a = 0.49 and b = 0.51 at 1e18 to 1e21 FLOPs)\n"
        return s
    }

    /// Loss against parameters (log axis), one colour per budget: the points, the fitted parabola, its minimum
    /// (hollow ring).
    public var isoflopSVG: String {
        var lines: [LossPlot.Line] = []
        let budgets = Array(Set(finished.map(\.point.budget))).sorted()
        for (i, c) in budgets.enumerated() {
            let color = LossPlot.palette[i % LossPlot.palette.count]
            let rs = finished.filter { $0.point.budget == c }.sorted { $0.point.parameters < $1.point.parameters }
            lines.append(.init(label: "C = \(Format.si(c, spacing: c)) FLOPs", xs: rs.map { Double($0.point.parameters) }, ys: rs.map { $0.valLoss! },
                               color: color, width: 0, markers: true, markerRadius: 4))
            guard let profile = fit?.profiles.first(where: { $0.budget == c }) ?? ScalingLaw.profile(
                budget: c, points: rs.map { ScalingLaw.Point(budget: c, parameters: Double($0.point.parameters), loss: $0.valLoss!) }) else { continue }
            let lo = log(Double(rs.first!.point.parameters)), hi = log(Double(rs.last!.point.parameters))
            let xs = (0...60).map { exp(lo + (hi - lo) * Double($0) / 60) }
            lines.append(.init(label: nil, xs: xs, ys: xs.map(profile.loss), color: color, width: 1.5))
            if let n = profile.optimalParameters, let l = profile.optimalLoss, (lo - 0.5)...(hi + 0.5) ~= log(n) {
                lines.append(.init(label: "  minimum: N " + Format.si(n), xs: [n], ys: [l], color: color, width: 0, markers: true,
                                   markerRadius: 7, hollowMarkers: true))
            }
        }
        return LossPlot.svg(lines: lines, title: "IsoFLOP profiles: final validation loss by model size, one curve per compute budget",
                            xLabel: "parameters N (log scale)", yLabel: "validation loss (nats)", xLog: true)
    }

    /// N_opt and D_opt against C, log-log: each budget's optimum and the fitted power laws.
    public var lawSVG: String {
        guard let fit else {
            return LossPlot.svg(lines: [], title: "no fit (too few budgets with a minimum)", xLabel: "compute C (FLOPs)", yLabel: "", xLog: true, yLog: true)
        }
        let usable = fit.profiles.filter { $0.optimalParameters != nil }
        let cs = usable.map(\.budget), ns = usable.map { $0.optimalParameters! }
        let ds = zip(cs, ns).map { $0 / (6 * $1) }
        let lo = log(cs.min()!) - 0.3, hi = log(cs.max()!) + 0.3
        let fitXs = (0...20).map { exp(lo + (hi - lo) * Double($0) / 20) }
        return LossPlot.svg(lines: [
            .init(label: "N_opt (parabola minima)", xs: cs, ys: ns, color: LossPlot.palette[0], width: 0, markers: true, markerRadius: 5),
            .init(label: String(format: "N_opt ∝ C^%.2f [%.2f, %.2f]", fit.a, fit.aInterval.lowerBound, fit.aInterval.upperBound),
                  xs: fitXs, ys: fitXs.map { exp(fit.lnNIntercept + fit.a * log($0)) }, color: LossPlot.palette[0], width: 1.5),
            .init(label: "D_opt = C / 6 N_opt", xs: cs, ys: ds, color: LossPlot.palette[1], width: 0, markers: true, markerRadius: 5),
            .init(label: String(format: "D_opt ∝ C^%.2f [%.2f, %.2f]", fit.b, fit.bInterval.lowerBound, fit.bInterval.upperBound),
                  xs: fitXs, ys: fitXs.map { exp(fit.lnDIntercept + fit.b * log($0)) }, color: LossPlot.palette[1], width: 1.5, dashed: true),
        ], title: "Compute-optimal size and tokens against compute", xLabel: "compute C (FLOPs, log scale)",
                            yLabel: "parameters N_opt, tokens D_opt (log scale)", notes: ["[ ]: 95% bootstrap interval"], xLog: true, yLog: true)
    }

    /// Writes sweep.csv, isoflop.svg and law.svg into the sweep's directory; returns their paths.
    public func write() throws -> [String] {
        let files = [("sweep.csv", csv), ("isoflop.svg", isoflopSVG), ("law.svg", lawSVG)]
        for (name, text) in files { try AtomicFile.write(text: text, to: directory + "/" + name) }
        return files.map { directory + "/" + $0.0 }
    }
}
