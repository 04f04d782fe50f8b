import Common
import Foundation

/// Chinchilla's approach 2 (IsoFLOP profiles, Hoffmann et al. 2022, section 3.2) on a sweep's final losses: for each
/// compute budget C, a parabola of loss against ln N; its vertex is N_opt(C) and L(N_opt); then ln N_opt and
/// ln D_opt against ln C are straight lines, N_opt ∝ C^a and D_opt ∝ C^b, with D_opt = C / (6 N_opt) (the 6ND
/// convention of the paper). Intervals on a and b come from a bootstrap: the points of every budget resampled with
/// replacement, everything refitted.
public enum ScalingLaw {
    /// One finished run of a sweep.
    public struct Point: Sendable, Equatable {
        public var budget: Double, parameters: Double, loss: Double
        public init(budget: Double, parameters: Double, loss: Double) { self.budget = budget; self.parameters = parameters; self.loss = loss }
    }

    /// One budget's IsoFLOP parabola: loss = c2·x² + c1·x + c0 with x = ln N.
    public struct Profile: Sendable {
        public var budget: Double
        public var c2: Double, c1: Double, c0: Double
        /// The vertex: the loss-minimising parameter count and its loss (nil when the parabola opens downwards: no
        /// minimum inside, the budget's sizes do not bracket the optimum).
        public var optimalParameters: Double? {
            guard c2 > 0 else { return nil }
            let n = exp(-c1 / (2 * c2))
            return n.isFinite && n > 0 ? n : nil  // (a nearly flat parabola's vertex can lie beyond any float)
        }
        public var optimalLoss: Double? { c2 > 0 ? c0 - c1 * c1 / (4 * c2) : nil }
        public func loss(atParameters n: Double) -> Double { let x = log(n); return c2 * x * x + c1 * x + c0 }
    }

    public struct Fit: Sendable {
        public var profiles: [Profile]
        /// N_opt ∝ C^a and D_opt ∝ C^b (ln-ln slopes), their 95% bootstrap intervals, and the lines' intercepts
        /// (ln N_opt = a ln C + lnNIntercept, likewise for D).
        public var a: Double, b: Double
        public var aInterval: ClosedRange<Double>, bInterval: ClosedRange<Double>
        public var lnNIntercept: Double, lnDIntercept: Double
    }

    /// Least squares of y on the columns of `x` (rows: observations), by the normal equations (small, well scaled).
    static func leastSquares(_ x: [[Double]], _ y: [Double]) -> [Double]? {
        let k = x.first?.count ?? 0
        guard k > 0, x.count >= k else { return nil }
        var m = [[Double]](repeating: [Double](repeating: 0, count: k + 1), count: k)
        for (row, target) in zip(x, y) {
            for i in 0..<k {
                for j in 0..<k { m[i][j] += row[i] * row[j] }
                m[i][k] += row[i] * target
            }
        }
        // Gaussian elimination with partial pivoting.
        for col in 0..<k {
            guard let pivot = (col..<k).max(by: { abs(m[$0][col]) < abs(m[$1][col]) }), abs(m[pivot][col]) > 1e-12 else { return nil }
            m.swapAt(col, pivot)
            for r in 0..<k where r != col {
                let f = m[r][col] / m[col][col]
                for c in col...k { m[r][c] -= f * m[col][c] }
            }
        }
        return (0..<k).map { m[$0][k] / m[$0][$0] }
    }

    /// The parabola of one budget's points (at least three distinct sizes).
    public static func profile(budget: Double, points: [Point]) -> Profile? {
        guard Set(points.map(\.parameters)).count >= 3 else { return nil }
        // Centred on the mean ln N, so the normal equations stay well conditioned.
        let mean = points.map { log($0.parameters) }.reduce(0, +) / Double(points.count)
        guard let c = leastSquares(points.map { p in let x = log(p.parameters) - mean; return [x * x, x, 1] }, points.map(\.loss)) else { return nil }
        // Back to x = ln N: c2 (x - m)² + c1 (x - m) + c0.
        return Profile(budget: budget, c2: c[0], c1: c[1] - 2 * c[0] * mean, c0: c[0] * mean * mean - c[1] * mean + c[2])
    }

    /// Slope and intercept of y against x.
    static func line(_ x: [Double], _ y: [Double]) -> (slope: Double, intercept: Double)? {
        guard let c = leastSquares(x.map { [$0, 1] }, y) else { return nil }
        return (c[0], c[1])
    }

    /// The exponents from profiles with a minimum; nil with fewer than two such budgets.
    static func exponents(_ profiles: [Profile]) -> (a: Double, b: Double, lnN: Double, lnD: Double)? {
        let usable = profiles.filter { $0.optimalParameters != nil }
        guard Set(usable.map(\.budget)).count >= 2 else { return nil }
        let lnC = usable.map { log($0.budget) }
        let lnN = usable.map { log($0.optimalParameters!) }
        let lnD = zip(usable, lnN).map { log($0.budget / 6) - $1 }
        guard let n = line(lnC, lnN), let d = line(lnC, lnD) else { return nil }
        return (n.slope, d.slope, n.intercept, d.intercept)
    }

    /// The fit of a sweep's points; nil when fewer than two budgets have three sizes each with a minimum between them.
    public static func fit(_ points: [Point], bootstrapSamples: Int = 1000, seed: UInt64 = 1) -> Fit? {
        let budgets = Array(Set(points.map(\.budget))).sorted()
        let byBudget = budgets.map { c in points.filter { $0.budget == c } }
        let profiles = zip(budgets, byBudget).compactMap { profile(budget: $0, points: $1) }
        guard let point = exponents(profiles) else { return nil }
        var aSamples: [Double] = [], bSamples: [Double] = []
        for s in 0..<bootstrapSamples {
            var k: UInt64 = 0
            let resampled = zip(budgets, byBudget).compactMap { budget, group -> Profile? in
                let draw = group.indices.map { _ -> Point in
                    k += 1
                    return group[Int(CounterRandom.mix(seed &+ UInt64(s) &* 0x9E37_79B9 &+ k) % UInt64(group.count))]
                }
                return profile(budget: budget, points: draw)
            }
            if let e = exponents(resampled), e.a.isFinite, e.b.isFinite { aSamples.append(e.a); bSamples.append(e.b) }
        }
        func interval(_ x: [Double], _ fallback: Double) -> ClosedRange<Double> {
            guard x.count >= 20 else { return fallback...fallback }
            let s = x.sorted()
            return s[Int(0.025 * Double(s.count - 1))]...s[Int(0.975 * Double(s.count - 1))]
        }
        return Fit(profiles: profiles, a: point.a, b: point.b, aInterval: interval(aSamples, point.a), bInterval: interval(bSamples, point.b),
                   lnNIntercept: point.lnN, lnDIntercept: point.lnD)
    }
}
