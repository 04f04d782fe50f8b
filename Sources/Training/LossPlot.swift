import Checkpoint
import Common
import Foundation
import Tasks

/// Loss curves as SVG line charts with labelled axes and a legend: one run (`render`: RUN/loss.svg, train loss raw
/// and smoothed, validation loss) or several overlaid (`overlay`: one colour per run) against step, tokens, training
/// FLOPs (6·N·tokens) or training time.
public enum LossPlot {
    /// One line of a chart.
    public struct Line {
        public var label: String?  // legend entry (nil: none)
        public var xs: [Double], ys: [Double]
        public var color: String
        public var width = 1.5, opacity = 1.0
        public var dashed = false, markers = false
        /// Markers only (`width` 0 draws no line); hollow circles stand out over filled ones.
        public var markerRadius = 3.0, hollowMarkers = false
    }

    /// What the x axis counts.
    public enum XAxis: String, CaseIterable, Sendable {
        case step, tokens, flops, time
    }

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// The chart: lines over axes fitted to their finite points, ticks at round values, a legend of the labelled
    /// lines (and `notes`, unmarked lines of text) in the upper right. `xTick` formats x tick values.
    /// `xLog`, `yLog`: logarithmic axes (points at or below zero are left out; ticks at 1, 2 and 5 times powers of
    /// ten, labelled with SI suffixes).
    public static func svg(lines: [Line], title: String, xLabel: String, yLabel: String = "loss (cross-entropy, nats)",
                           notes: [String] = [], height: Double = 480, xLog: Bool = false, yLog: Bool = false,
                           xTick: (Double, Double) -> String = { v, _ in String(format: "%.0f", v) }) -> String {
        // Log axes: everything below works on log10 of the values, and only the tick labels go back.
        func tx(_ x: Double) -> Double { xLog ? (x > 0 ? log10(x) : .nan) : x }
        func ty(_ y: Double) -> Double { yLog ? (y > 0 ? log10(y) : .nan) : y }
        let lines = lines.map { l in var l = l; l.xs = l.xs.map(tx); l.ys = l.ys.map(ty); return l }
        // The legend sits right of the plot, so no curve is ever hidden beneath it.
        let entries = lines.filter { $0.label != nil }, rows = entries.count + notes.count
        let legendWidth = rows == 0 ? 0 : 45 + Double((entries.compactMap(\.label) + notes).map(\.count).max() ?? 0) * 6.6
        let h = height, left = 70.0, top = 40.0, bottom = 55.0, pw = 710.0, ph = h - top - bottom
        let right = rows == 0 ? 20 : legendWidth + 30, w = left + pw + right
        let points = lines.flatMap { zip($0.xs, $0.ys).filter { $0.0.isFinite && $0.1.isFinite } }
        let x0 = points.map(\.0).min() ?? 0, x1 = max(points.map(\.0).max() ?? 1, x0 + 1e-9 + (points.isEmpty ? 1 : 0))
        var y0 = points.map(\.1).min() ?? 0, y1 = points.map(\.1).max() ?? 1
        if y1 - y0 < 1e-6 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * pw }
        func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * ph }
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
        func marker(_ line: Line, _ x: Double, _ y: Double) -> String {
            String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%@\"", x, y, line.markerRadius, line.color)
                + (line.hollowMarkers ? " fill-opacity=\"0\" stroke=\"\(line.color)\" stroke-width=\"2\"" : "") + "/>"
        }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(w / 2)" y="22" text-anchor="middle" font-size="15">\(esc(title))</text>

        """
        let yTicks = yLog ? logTicks(y0, y1) : niceTicks(y0, y1), yDecimals = max(0, -Int(floor(log10(yTicks.step) + 1e-9)))
        for yv in yTicks.values {
            let yy = py(yv)
            let label = yLog ? Format.si(pow(10, yv), spacing: pow(10, yv)) : String(format: "%.*f", Int32(yDecimals), yv)
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, yy, left + pw, yy)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", left - 6, yy + 4) + esc(label) + "</text>\n"
        }
        let xTicks = xLog ? logTicks(x0, x1) : niceTicks(x0, x1, integral: x1 - x0 >= 5)
        for xv in xTicks.values {
            let xx = px(xv)
            let label = xLog ? Format.si(pow(10, xv), spacing: pow(10, xv)) : xTick(xv, xTicks.step)
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", xx, top, xx, top + ph)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", xx, top + ph + 18) + esc(label) + "</text>\n"
        }
        s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", left, top, pw, ph)
        s += "<text x=\"\(left + pw / 2)\" y=\"\(h - 12)\" text-anchor=\"middle\">\(esc(xLabel))</text>\n"
        s += "<text x=\"18\" y=\"\(top + ph / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 18 \(top + ph / 2))\">\(esc(yLabel))</text>\n"
        for line in lines {
            let pts = zip(line.xs, line.ys).filter { $0.0.isFinite && $0.1.isFinite }
            guard !pts.isEmpty else { continue }
            if line.width > 0 {
                let d = pts.enumerated().map { i, p in String(format: "%@%.1f,%.1f", i == 0 ? "M" : "L", px(p.0), py(p.1)) }.joined(separator: " ")
                s += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"\(line.width)\" stroke-opacity=\"\(line.opacity)\""
                    + (line.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>\n"
            }
            if line.markers {
                for (x, y) in pts { s += marker(line, px(x), py(y)) + "\n" }
            }
        }
        // Legend: the labelled lines, then the notes.
        if rows > 0 {
            let lx = left + pw + 15
            s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"white\" stroke=\"#bbb\"/>\n",
                        lx, top, legendWidth, Double(rows) * 18 + 8)
            for (i, line) in entries.enumerated() {
                let y = top + 14 + Double(i) * 18
                if line.width > 0 {
                    s += "<line x1=\"\(lx + 8)\" y1=\"\(y)\" x2=\"\(lx + 33)\" y2=\"\(y)\" stroke=\"\(line.color)\" stroke-width=\"2\" stroke-opacity=\"\(max(line.opacity, 0.5))\""
                        + (line.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>"
                }
                if line.markers { s += marker(line, lx + 20.5, y) }
                s += "<text x=\"\(lx + 40)\" y=\"\(y + 4)\">\(esc(line.label!))</text>\n"
            }
            for (i, note) in notes.enumerated() {
                s += "<text x=\"\(lx + 8)\" y=\"\(top + 18 + Double(entries.count + i) * 18)\" fill=\"#555\">\(esc(note))</text>\n"
            }
        }
        return s + "</svg>\n"
    }

    /// Charts one above the other in one SVG (each keeps its own axes and legend).
    static func stacked(_ charts: [String]) -> String {
        func size(_ chart: String, _ key: String) -> Double {
            guard let r = chart.range(of: key + "=\"") else { return 0 }
            return Double(chart[r.upperBound...].prefix { $0 != "\"" }) ?? 0
        }
        guard charts.count > 1 else { return charts.first ?? "" }
        let width = charts.map { size($0, "width") }.max()!, height = charts.map { size($0, "height") }.reduce(0, +)
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">\n"
        var y = 0.0
        for chart in charts {
            out += chart.replacingOccurrences(of: "<svg ", with: "<svg y=\"\(Int(y))\" ", options: [], range: chart.range(of: "<svg "))
            y += size(chart, "height")
        }
        return out + "</svg>\n"
    }

    /// Axis ticks at round values: multiples of 1, 2 or 5 x 10^k, about `target` of them inside [lo, hi]
    /// (`integral`: steps of at least 1, for step numbers).
    static func niceTicks(_ lo: Double, _ hi: Double, target: Int = 5, integral: Bool = false) -> (values: [Double], step: Double) {
        guard hi > lo, lo.isFinite, hi.isFinite else { return ([lo], 1) }
        let raw = (hi - lo) / Double(max(1, target))
        let magnitude = pow(10, floor(log10(raw)))
        var step = [1.0, 2, 5, 10].map { $0 * magnitude }.min { abs((hi - lo) / $0 - Double(target)) < abs((hi - lo) / $1 - Double(target)) }!
        if integral { step = max(1, step.rounded()) }
        let first = (lo / step - 1e-9).rounded(.up)
        var values: [Double] = []
        var i = 0.0
        while (first + i) * step <= hi + step * 1e-9 {
            values.append((first + i) * step)
            i += 1
        }
        return (values, step)
    }

    /// Ticks of a log10 axis (values are log10 of the data): the powers of ten inside [lo, hi], with 2 and 5 times
    /// them while the axis spans less than three decades, and every integer multiple within one decade.
    static func logTicks(_ lo: Double, _ hi: Double) -> (values: [Double], step: Double) {
        guard hi > lo, lo.isFinite, hi.isFinite else { return ([lo], 1) }
        let multiples: [Double] = hi - lo < 1 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : hi - lo < 3 ? [1, 2, 5] : [1]
        var values: [Double] = []
        for k in Int(floor(lo))...Int(ceil(hi)) {
            for m in multiples where (lo - 1e-9)...(hi + 1e-9) ~= Double(k) + log10(m) { values.append(Double(k) + log10(m)) }
        }
        if values.count < 2 {  // less than a factor of two: fall back to linear ticks, placed on the log axis
            let linear = niceTicks(pow(10, lo), pow(10, hi))
            values = linear.values.filter { $0 > 0 }.map(log10)
        }
        return (values, 1)
    }

    /// TensorBoard's smoothing: an exponential moving average with weight `alpha` on the past, debiased at the start
    /// (so the first point is the first value, not alpha times it).
    public static func smoothed(_ ys: [Double], alpha: Double) -> [Double] {
        var average = 0.0, weight = 0.0
        return ys.map { y in
            guard y.isFinite else { return y }
            average = alpha * average + (1 - alpha) * y
            weight = alpha * weight + (1 - alpha)
            return average / weight
        }
    }

    /// One run's curves from its records: train and validation loss by step (the last logged for each step), and
    /// what the other x axes need.
    public struct RunCurves {
        public let name: String
        public let steps: [Double], train: [Double], valSteps: [Double], val: [Double]
        /// Tokens per optimizer step (B·T, from tokens_per_s × ms_per_step), and each step's wall time in seconds.
        public let tokensPerStep: Double, stepSeconds: [Double]
        /// Parameter count from status.json (runs written before it recorded one have none).
        public let parameters: Int?
        /// Benchmarks scored during training (train --task): by task, the steps and acc, acc_norm.
        public let tasks: [(task: ChoiceTask, steps: [Double], acc: [Double], accNorm: [Double])]

        public init(runDirectory dir: String) throws {
            let metricsPath = dir + "/metrics.h5"
            guard FileManager.default.fileExists(atPath: metricsPath) else {
                throw GPT2DistError(.usage, "\(dir) has no metrics.h5 (plot takes run directories of gpt2-dist train)")
            }
            let m = try MetricsLog.read(path: metricsPath)
            name = URL(fileURLWithPath: dir).standardized.lastPathComponent
            (steps, train) = MetricsLog.lastPerStep(m["step"] ?? [], m["train_loss"] ?? [])
            (valSteps, val) = MetricsLog.lastPerStep(m["val_step"] ?? [], m["val_loss"] ?? [])
            let tps = MetricsLog.lastPerStep(m["step"] ?? [], m["tokens_per_s"] ?? []).values
            let ms = MetricsLog.lastPerStep(m["step"] ?? [], m["ms_per_step"] ?? []).values
            let perStep = zip(tps, ms).map { ($0 * $1 / 1000).rounded() }.filter { $0.isFinite && $0 > 0 }.sorted()
            tokensPerStep = perStep.isEmpty ? .nan : perStep[perStep.count / 2]
            stepSeconds = ms.map { $0 / 1000 }
            parameters = (try? RunStatus.read(runDirectory: dir))??.parameters
            tasks = ChoiceTask.allCases.compactMap { task in
                guard let acc = m[task.metricNames.acc], let norm = m[task.metricNames.accNorm], !acc.isEmpty else { return nil }
                let (steps, a) = MetricsLog.lastPerStep(m["eval_step"] ?? [], acc)
                return (task, steps, a, MetricsLog.lastPerStep(m["eval_step"] ?? [], norm).values)
            }
        }

        /// The x coordinates of `steps` on `axis` (time: the training time at the end of each logged step).
        public func x(_ steps: [Double], _ axis: XAxis) throws -> [Double] {
            switch axis {
            case .step: return steps
            case .tokens: return steps.map { $0 * tokensPerStep }
            case .flops:
                guard let n = parameters else {
                    throw GPT2DistError(.usage, "\(name): its status.json records no parameter count (a run of an older gpt2-dist); use --x step, tokens or time")
                }
                return steps.map { 6 * Double(n) * $0 * tokensPerStep }
            case .time:
                var elapsed: [Double: Double] = [:], total = 0.0
                for (s, t) in zip(self.steps, stepSeconds) { total += t.isFinite ? t : 0; elapsed[s] = total }
                return steps.map { s in elapsed[s] ?? elapsed.filter { $0.key <= s }.max { $0.key < $1.key }?.value ?? 0 }
            }
        }
    }

    /// Reads runDir/metrics.h5 and writes runDir/loss.svg (atomically): train loss raw (faint) and smoothed
    /// (EMA 0.9 unless `smooth`), validation loss; below it, a panel of each benchmark scored in training (acc and
    /// acc_norm against step, with chance level for HellaSwag's four endings dotted). The unigram and bigram baselines
    /// that `eval --baselines` stored in the run (baselines.json) are dashed lines.
    public static func render(runDirectory dir: String, smooth: Double? = nil) throws -> String {
        let run = try RunCurves(runDirectory: dir)
        let alpha = smooth ?? 0.9
        var lines = [Line(label: "train loss", xs: run.steps, ys: run.train, color: palette[0], width: 1, opacity: 0.35)]
        if alpha > 0 && run.train.count > 1 {
            lines.append(Line(label: String(format: "train loss, smoothed (EMA %.2g)", alpha), xs: run.steps,
                              ys: smoothed(run.train, alpha: alpha), color: palette[0], width: 2))
        }
        if !run.val.isEmpty { lines.append(Line(label: "validation loss", xs: run.valSteps, ys: run.val, color: palette[1], width: 2, markers: true)) }
        if let b = RunBaselines.read(runDirectory: dir), let first = run.steps.first, let last = run.steps.last {
            lines.append(Line(label: String(format: "unigram baseline %.3f", b.unigram), xs: [first, last], ys: [b.unigram, b.unigram],
                              color: palette[7], width: 1.5, dashed: true))
            lines.append(Line(label: String(format: "bigram baseline %.3f", b.bigram), xs: [first, last], ys: [b.bigram, b.bigram],
                              color: palette[5], width: 1.5, dashed: true))
        }
        var charts = [svg(lines: lines, title: "gpt2-dist: \(run.name)", xLabel: "step")]
        for t in run.tasks {
            let chance = Line(label: "chance (25%)", xs: [run.steps.first ?? 0, run.steps.last ?? 1], ys: [0.25, 0.25], color: "#7f7f7f", width: 1, dashed: true)
            charts.append(svg(lines: [Line(label: "acc", xs: t.steps, ys: t.acc, color: palette[2], width: 2, markers: true),
                                      Line(label: "acc_norm", xs: t.steps, ys: t.accNorm, color: palette[4], width: 2, markers: true), chance],
                              title: "\(t.task.rawValue) (train --task)", xLabel: "step", yLabel: "accuracy", height: 320))
        }
        let out = dir + "/loss.svg"
        try AtomicFile.write(text: stacked(charts), to: out)
        return out
    }

    /// Several runs in one chart, one colour each: train loss (smoothed with EMA `smooth` when given, the raw curve
    /// faint beneath) and validation loss dashed, against `axis`. Writes `out` (atomically) and returns it.
    public static func overlay(runDirectories: [String], axis: XAxis, smooth: Double?, out: String) throws -> String {
        let runs = try runDirectories.map { try RunCurves(runDirectory: $0) }
        var lines: [Line] = []
        for (i, run) in runs.enumerated() {
            let color = palette[i % palette.count]
            let xs = try run.x(run.steps, axis)
            if let alpha = smooth, alpha > 0 {
                lines.append(Line(label: nil, xs: xs, ys: run.train, color: color, width: 1, opacity: 0.25))
                lines.append(Line(label: run.name, xs: xs, ys: smoothed(run.train, alpha: alpha), color: color, width: 2))
            } else {
                lines.append(Line(label: run.name, xs: xs, ys: run.train, color: color, width: 1.5))
            }
            if !run.val.isEmpty { lines.append(Line(label: nil, xs: try run.x(run.valSteps, axis), ys: run.val, color: color, width: 2, dashed: true)) }
        }
        let hasVal = runs.contains { !$0.val.isEmpty }
        let notes = ["solid: train" + (smooth.map { String(format: " (EMA %.2g)", $0) } ?? "") + (hasVal ? ", dashed: validation" : "")]
        let (label, tick): (String, (Double, Double) -> String) = {
            switch axis {
            case .step: return ("step", { v, _ in String(format: "%.0f", v) })
            case .tokens: return ("tokens", { v, step in Format.si(v, spacing: step) })
            case .flops: return ("training FLOPs (6·N·tokens)", { v, step in Format.si(v, spacing: step) })
            case .time:
                let longest = lines.flatMap(\.xs).max() ?? 0
                let (unit, scale) = longest >= 7200 ? ("h", 3600.0) : longest >= 120 ? ("min", 60.0) : ("s", 1.0)
                return ("training time (\(unit))", { v, step in
                    let decimals = max(0, -Int(floor(log10(step / scale) + 1e-9)))
                    return String(format: "%.*f", Int32(decimals), v / scale)
                })
            }
        }()
        let title = "gpt2-dist: " + (runs.count == 1 ? runs[0].name : "\(runs.count) runs")
        try AtomicFile.write(text: svg(lines: lines, title: title, xLabel: label, notes: notes, xTick: tick), to: out)
        return out
    }
}
