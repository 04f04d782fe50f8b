import Checkpoint
import Common
import Foundation

/// Draws train and validation loss against step as an SVG line chart with labelled axes.
public enum LossPlot {
    public static func svg(steps: [Double], train: [Double], valSteps: [Double], val: [Double], title: String) -> String {
        let w = 800.0, h = 480.0, left = 70.0, right = 20.0, top = 40.0, bottom = 55.0
        let pw = w - left - right, ph = h - top - bottom
        let allX = steps + valSteps, allY = (train + val).filter { $0.isFinite }
        let x0 = allX.min() ?? 0, x1 = max(allX.max() ?? 1, x0 + 1)
        var y0 = allY.min() ?? 0, y1 = allY.max() ?? 1
        if y1 - y0 < 1e-6 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * pw }
        func py(_ y: Double) -> Double { top + (1 - (y - y0) / (y1 - y0)) * ph }
        func path(_ xs: [Double], _ ys: [Double]) -> String {
            zip(xs, ys).filter { $0.1.isFinite }.enumerated().map { i, p in
                String(format: "%@%.1f,%.1f", i == 0 ? "M" : "L", px(p.0), py(p.1))
            }.joined(separator: " ")
        }
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(w / 2)" y="22" text-anchor="middle" font-size="15">\(esc(title))</text>

        """
        let yTicks = niceTicks(y0, y1), yDecimals = max(0, -Int(floor(log10(yTicks.step) + 1e-9)))
        for yv in yTicks.values {
            let yy = py(yv)
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, yy, left + pw, yy)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n", left - 6, yy + 4, Int32(yDecimals), yv)
        }
        let xTicks = niceTicks(x0, x1, integral: true)
        for xv in xTicks.values {
            let xx = px(xv)
            s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", xx, top, xx, top + ph)
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", xx, top + ph + 18, xv)
        }
        s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", left, top, pw, ph)
        s += "<text x=\"\(left + pw / 2)\" y=\"\(h - 12)\" text-anchor=\"middle\">step</text>\n"
        s += "<text x=\"18\" y=\"\(top + ph / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 18 \(top + ph / 2))\">loss (cross-entropy, nats)</text>\n"
        if !train.isEmpty { s += "<path d=\"\(path(steps, train))\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n" }
        if !val.isEmpty {
            s += "<path d=\"\(path(valSteps, val))\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n"
            for (x, y) in zip(valSteps, val) where y.isFinite {
                s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", px(x), py(y))
            }
        }
        let lx = left + pw - 150
        s += "<line x1=\"\(lx)\" y1=\"\(top + 15)\" x2=\"\(lx + 25)\" y2=\"\(top + 15)\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"\(lx + 32)\" y=\"\(top + 19)\">train loss</text>\n"
        s += "<line x1=\"\(lx)\" y1=\"\(top + 33)\" x2=\"\(lx + 25)\" y2=\"\(top + 33)\" stroke=\"#d62728\" stroke-width=\"2\"/><text x=\"\(lx + 32)\" y=\"\(top + 37)\">validation loss</text>\n"
        return s + "</svg>\n"
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

    /// Reads runDir/metrics.h5 and writes runDir/loss.svg (atomically).
    public static func render(runDirectory dir: String) throws -> String {
        let m = try MetricsLog.read(path: dir + "/metrics.h5")
        let name = URL(fileURLWithPath: dir).lastPathComponent
        let (steps, train) = MetricsLog.lastPerStep(m["step"] ?? [], m["train_loss"] ?? [])
        let (valSteps, val) = MetricsLog.lastPerStep(m["val_step"] ?? [], m["val_loss"] ?? [])
        let text = svg(steps: steps, train: train, valSteps: valSteps, val: val, title: "gpt2-dist: \(name)")
        let out = dir + "/loss.svg"
        try AtomicFile.write(text: text, to: out)
        return out
    }
}
