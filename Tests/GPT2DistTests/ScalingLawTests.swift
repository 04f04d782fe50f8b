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
}
