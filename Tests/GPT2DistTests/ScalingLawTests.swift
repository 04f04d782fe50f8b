import Foundation
import Planning
import Testing

/// `sweep report`'s fitting (Chinchilla's approach 2) on losses drawn from a known law plus noise:
/// L(N, D) = E + A/N^α + B/D^β with D = C/(6N), whose compute-optimal sizes follow N_opt ∝ C^(β/(α+β)) and
/// D_opt ∝ C^(α/(α+β)) (Hoffmann et al. 2022, eq. 4, with their fitted constants E = 1.69, A = 406.4, B = 410.7,
/// α = 0.34, β = 0.28).
struct ScalingLawTests {
    static let (E, A, B, alpha, beta) = (1.69, 406.4, 410.7, 0.34, 0.28)

    static func loss(_ n: Double, budget c: Double) -> Double { E + A / pow(n, alpha) + B / pow(c / (6 * n), beta) }
    static func trueOptimum(_ c: Double) -> Double {
        pow(alpha * A / (beta * B), 1 / (alpha + beta)) * pow(c / 6, beta / (alpha + beta))
    }

    @Test(arguments: [UInt64(1), 2, 3]) func recoversTheExponentsOfAKnownLaw(seed: UInt64) throws {
        var r = TestRandom(seed)
        var points: [ScalingLaw.Point] = []
        let budgets = [1e18, 1e19, 1e20, 1e21]
        for c in budgets {
            for k in -3...3 {  // sizes spaced by e^0.4 around the optimum, not centred on it exactly
                let n = Self.trueOptimum(c) * exp(0.4 * Double(k) + 0.1)
                let noise = (0..<12).reduce(0.0) { s, _ in s + Double(r.uniform(0, 1)) } - 6  // ~N(0, 1)
                points.append(.init(budget: c, parameters: n, loss: Self.loss(n, budget: c) + 0.002 * noise))
            }
        }
        let fit = try #require(ScalingLaw.fit(points, bootstrapSamples: 400, seed: seed))
        let a = Self.beta / (Self.alpha + Self.beta), b = Self.alpha / (Self.alpha + Self.beta)
        #expect(fit.aInterval.contains(a) && fit.bInterval.contains(b), "a \(fit.a) in \(fit.aInterval) (true \(a)); b \(fit.b) in \(fit.bInterval) (true \(b))")
        #expect(abs(fit.a - a) < 0.03 && abs(fit.b - b) < 0.03 && abs(fit.a + fit.b - 1) < 1e-9)
        #expect(fit.aInterval.upperBound - fit.aInterval.lowerBound < 0.2, "an interval too wide to say anything: \(fit.aInterval)")
        for p in fit.profiles {
            let nOpt = try #require(p.optimalParameters)
            #expect(abs(log(nOpt / Self.trueOptimum(p.budget))) < 0.15, "budget \(p.budget): N_opt \(nOpt) vs \(Self.trueOptimum(p.budget))")
        }
    }

    /// Sizes that do not bracket a minimum (loss still falling at the largest), or a single budget: no law.
    @Test func noLawWithoutMinimaOrWithOneBudget() {
        let c = 1e19, sizes = [1e6, 2e6, 4e6]
        let falling = sizes.map { ScalingLaw.Point(budget: c, parameters: $0, loss: 5 - log($0) * 0.1 - 0.01 * log($0) * log($0)) }
        #expect(ScalingLaw.profile(budget: c, points: falling)?.optimalParameters == nil)
        let one = sizes.map { ScalingLaw.Point(budget: c, parameters: $0, loss: Self.loss($0, budget: c)) }
        #expect(ScalingLaw.fit(one) == nil)
        #expect(ScalingLaw.fit(Array(one.prefix(2)) + falling.map { .init(budget: 1e20, parameters: $0.parameters, loss: $0.loss) }) == nil)
    }

    /// Chinchilla's own runs (Epoch AI's extraction from the paper's Figure 4; Tests/Fixtures/chinchilla/README.md),
    /// grouped by the nearest of its nine IsoFLOP budgets: the fit lands inside the interval the paper gives for
    /// approach 2 (Table 2: a = 0.49, 0.462 to 0.534; b = 0.51, 0.483 to 0.529).
    @Test func chinchillasOwnRunsGiveItsApproach2Exponent() throws {
        let text = try String(contentsOfFile: fixtures + "/chinchilla/isoflop-runs.csv", encoding: .utf8)
        let budgets = [6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21]
        var points: [ScalingLaw.Point] = []
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: ",").compactMap { Double($0) }
            try #require(f.count == 3, "\(line)")
            let nearest = budgets.min { abs(log(f[1] / $0)) < abs(log(f[1] / $1)) }!
            if abs(log(f[1] / nearest)) < 0.1 { points.append(.init(budget: nearest, parameters: f[0], loss: f[2])) }
        }
        #expect(points.count > 120 && Set(points.map(\.budget)).count == 9)
        let fit = try #require(ScalingLaw.fit(points, bootstrapSamples: 400))
        #expect(fit.profiles.filter { $0.optimalParameters != nil }.count == 9)
        #expect((0.462...0.534).contains(fit.a) && (0.483...0.529).contains(fit.b), "a \(fit.a), b \(fit.b)")
        #expect(fit.aInterval.contains(0.49), "the paper's a = 0.49 outside our interval \(fit.aInterval)")
    }
}
